-- Operating procedures: refresh profiles, switch the served clustering (and roll back from psql).

CREATE PROCEDURE avengers.refresh_profiles()
LANGUAGE plpgsql
AS $$
BEGIN
  -- model_priors reads cluster_profiles and dataset_profiles: refreshed last.
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.cluster_profiles;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.clustering_scale;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.dataset_profiles;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.cluster_datasets;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.model_priors;
  -- model_costs reads cluster_costs.
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.cluster_costs;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.model_costs;
  -- The routing tables read the views above (routing_models reads routing_state).
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_state;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_centroids;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_models;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_costs;
  -- Fresh statistics for what routing reads: a refresh leaves none, and the routing functions'
  -- cached plans are built from them (and replanned when ANALYZE changes them).
  ANALYZE avengers.cluster_profiles, avengers.routing_state, avengers.routing_centroids,
          avengers.routing_models, avengers.routing_costs;
END
$$;
COMMENT ON PROCEDURE avengers.refresh_profiles() IS
  'Recompute the served routing data (cluster_profiles, clustering_scale, dataset_profiles, cluster_datasets, model_priors, cluster_costs, model_costs, routing_state, routing_centroids, routing_models, routing_costs) from outcomes and the active clustering; readers keep the old rows until commit.';

CREATE PROCEDURE avengers.activate_clustering(clustering integer)
LANGUAGE plpgsql
AS $$
DECLARE
  found_status text;
BEGIN
  -- Serialises concurrent switches; routers keep reading the committed version meanwhile.
  LOCK TABLE avengers.clusterings IN SHARE ROW EXCLUSIVE MODE;
  SELECT status INTO found_status FROM avengers.clusterings WHERE id = clustering;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'clustering % does not exist', clustering
      USING ERRCODE = 'VA404',
            HINT = 'List the stored versions: SELECT id, status FROM avengers.clusterings ORDER BY id.';
  END IF;
  IF found_status NOT IN ('ready', 'active') THEN
    RAISE EXCEPTION 'clustering % is %, only a ready clustering can be activated', clustering, found_status
      USING ERRCODE = 'VA409';
  END IF;
  UPDATE avengers.clusterings SET status = 'ready' WHERE status = 'active' AND id <> clustering;
  UPDATE avengers.clusterings SET status = 'active', activated_at = now() WHERE id = clustering;
  CALL avengers.refresh_profiles();
END
$$;
COMMENT ON PROCEDURE avengers.activate_clustering(integer) IS
  'Make a clustering version the served one and refresh profiles, atomically: CALL avengers.activate_clustering(7).';

-- routing_models carries each model's row of avengers.models (name, active, endpoint, ...): any
-- change to the table refreshes it in the same transaction. CONCURRENTLY: routers keep reading
-- the previous rows until the change commits.
CREATE FUNCTION avengers.refresh_routing_models() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_models;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_costs;
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION avengers.refresh_routing_models() IS
  'Trigger function: refresh avengers.routing_models and routing_costs after a change to avengers.models.';
CREATE TRIGGER models_refresh_routing
  AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON avengers.models
  FOR EACH STATEMENT EXECUTE FUNCTION avengers.refresh_routing_models();
COMMENT ON TRIGGER models_refresh_routing ON avengers.models IS
  'Keeps the model columns of avengers.routing_models (and the prices in routing_costs) current.';
