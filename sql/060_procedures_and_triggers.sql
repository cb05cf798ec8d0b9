-- Operating procedures: refresh profiles, switch the served clustering (and roll back from psql),
-- and what storing or changing a clustering version brings along (distance statistics, production
-- outcomes).

-- What carries production evidence to decisions, in the order each reads the one before:
-- production_evidence (from cluster_profiles and production_profiles), routing_entries,
-- routing_models. Every refresh that changes one of its inputs ends with it.
CREATE PROCEDURE avengers.refresh_evidence()
LANGUAGE plpgsql
AS $$
BEGIN
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.production_evidence;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_entries;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_models;
END
$$;
COMMENT ON PROCEDURE avengers.refresh_evidence() IS
  'Refresh production_evidence, routing_entries and routing_models (in that order): what the other refreshes and the models trigger end with.';

CREATE PROCEDURE avengers.refresh_production()
LANGUAGE plpgsql
AS $$
BEGIN
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.production_profiles;
  CALL avengers.refresh_evidence();
  -- After the evidence: the rule splits only at refreshes before this one.
  CALL avengers.record_production_history();
END
$$;
COMMENT ON PROCEDURE avengers.refresh_production() IS
  'Serve the feedback recorded since the last refresh: recompute what routing reads of production outcomes (production_profiles, production_evidence, routing_entries, routing_models: clusters x models rows each) without re-reading calibration outcomes, and keep production_profiles as of this refresh in production_history.';

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
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.production_profiles;
  -- model_costs reads cluster_costs.
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.cluster_costs;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.model_costs;
  -- The routing tables read the views above (routing_models reads routing_state and
  -- routing_entries).
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_state;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_centroids;
  CALL avengers.refresh_evidence();
  -- Fresh statistics for what routing reads: a refresh leaves none, and the prepared decision
  -- statements' plans are built from them (and replanned when ANALYZE changes them).
  ANALYZE avengers.cluster_profiles, avengers.routing_state, avengers.routing_centroids,
          avengers.routing_entries, avengers.routing_models;
END
$$;
COMMENT ON PROCEDURE avengers.refresh_profiles() IS
  'Recompute the served routing data (cluster_profiles, clustering_scale, dataset_profiles, cluster_datasets, model_priors, production_profiles, production_evidence, cluster_costs, model_costs, routing_state, routing_centroids, routing_entries, routing_models) from outcomes, feedback and the active clustering; readers keep the old rows until commit.';

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
  -- Versions stored by hand (or before distance statistics existed) get them now.
  IF NOT EXISTS (SELECT 1 FROM avengers.cluster_distances d WHERE d.clustering_id = clustering) THEN
    CALL avengers.store_distance_profile(clustering);
  END IF;
  -- Feedback recorded while another version was served counts here through logged vectors.
  CALL avengers.rebuild_production(clustering);
  CALL avengers.refresh_profiles();
END
$$;
COMMENT ON PROCEDURE avengers.activate_clustering(integer) IS
  'Make a clustering version the served one, recount its production outcomes and refresh profiles, atomically: CALL avengers.activate_clustering(7).';

-- The rule of novelty (what routing compares a query's distance with): a query's distance to its
-- nearest centroid in units of that cluster's median calibration distance (the clustering's
-- median for a cluster of fewer than 5 queries or a median of 0), against the ood_quantile of the
-- same ratio over every calibration query of the clustering. One threshold per clustering, fitted
-- on all its queries, and a scale per cluster: small clusters get a usable threshold, tight and
-- loose clusters each their own distance.
CREATE PROCEDURE avengers.store_distance_profile(clustering integer)
LANGUAGE plpgsql
AS $$
DECLARE
  q double precision;
BEGIN
  SELECT k.ood_quantile INTO q FROM avengers.clusterings k WHERE k.id = clustering;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'clustering % does not exist', clustering USING ERRCODE = 'VA404';
  END IF;
  DELETE FROM avengers.cluster_distances WHERE clustering_id = clustering;
  -- A version just written is not in the statistics yet: planned on estimates of one row, the
  -- statement below rescanned the per-cluster aggregate once per cluster (over 5 minutes for
  -- k = 1,024 over 16k queries; 0.03 s with statistics). The profile refresh that follows an
  -- activation reads the same rows.
  ANALYZE avengers.centroids, avengers.assignments;
  INSERT INTO avengers.cluster_distances
    (clustering_id, cluster, n, mean, median, p95, max, scale, ood_distance)
  WITH d AS (
    SELECT a.cluster, a.distance::double precision AS d
    FROM avengers.assignments a
    WHERE a.clustering_id = clustering AND a.distance IS NOT NULL
  ),
  per AS (
    SELECT d.cluster, count(*)::integer AS n, avg(d.d) AS mean,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY d.d) AS median,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY d.d) AS p95, max(d.d) AS max
    FROM d GROUP BY d.cluster
  ),
  overall AS (
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d.d) AS median FROM d
  ),
  scaled AS (
    SELECT c.cluster, coalesce(p.n, 0) AS n, p.mean, p.median, p.p95, p.max,
           CASE WHEN p.n >= 5 AND p.median > 0 THEN p.median ELSE o.median END AS scale
    FROM avengers.centroids c
    CROSS JOIN overall o
    LEFT JOIN per p ON p.cluster = c.cluster
    WHERE c.clustering_id = clustering
  ),
  threshold AS (
    SELECT percentile_cont(q) WITHIN GROUP (ORDER BY d.d / s.scale) AS ratio
    FROM d JOIN scaled s ON s.cluster = d.cluster
    WHERE s.scale > 0
  )
  SELECT clustering, s.cluster, s.n, s.mean, s.median, s.p95, s.max, s.scale, s.scale * t.ratio
  FROM scaled s CROSS JOIN threshold t;
  -- The novelty model's threshold (routing.novelty), at the same quantile of its held-out
  -- distances.
  UPDATE avengers.novelty_profiles p
  SET threshold = (SELECT percentile_cont(q) WITHIN GROUP (ORDER BY h) FROM unnest(p.held_out) h)
  WHERE p.clustering_id = clustering;
END
$$;
COMMENT ON PROCEDURE avengers.store_distance_profile(integer) IS
  'Write avengers.cluster_distances of a clustering version from its assignments and ood_quantile, and its novelty threshold (avengers.novelty_profiles) from the held-out distances: run when it is stored, first activated, or its ood_quantile changes.';

-- Settings of the loop live on the clustering row; what they change is kept in step here, in the
-- same transaction as the UPDATE.
CREATE FUNCTION avengers.clustering_settings_changed() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  IF NEW.half_life IS DISTINCT FROM OLD.half_life THEN
    CALL avengers.rebuild_production(NEW.id);
  END IF;
  IF NEW.ood_quantile IS DISTINCT FROM OLD.ood_quantile THEN
    CALL avengers.store_distance_profile(NEW.id);
  END IF;
  IF NEW.status = 'active' THEN
    -- routing_state and routing_centroids carry the settings decisions default to.
    REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_state;
    REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_centroids;
    CALL avengers.refresh_production();
  END IF;
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION avengers.clustering_settings_changed() IS
  'Trigger function: after a clustering''s loop settings change, recount its production outcomes (half_life), rewrite its distance statistics (ood_quantile) and, for the active one, refresh what routing reads.';
CREATE TRIGGER clusterings_settings_changed
  AFTER UPDATE OF production_weight, half_life, change_threshold, exploration, exploration_share,
                  ood_quantile
  ON avengers.clusterings
  FOR EACH ROW
  WHEN (OLD.production_weight IS DISTINCT FROM NEW.production_weight
        OR OLD.half_life IS DISTINCT FROM NEW.half_life
        OR OLD.change_threshold IS DISTINCT FROM NEW.change_threshold
        OR OLD.exploration IS DISTINCT FROM NEW.exploration
        OR OLD.exploration_share IS DISTINCT FROM NEW.exploration_share
        OR OLD.ood_quantile IS DISTINCT FROM NEW.ood_quantile)
  EXECUTE FUNCTION avengers.clustering_settings_changed();
COMMENT ON TRIGGER clusterings_settings_changed ON avengers.clusterings IS
  'Keeps production_stats, cluster_distances and the served views in step with a clustering''s loop settings.';

-- routing_models carries each model's row of avengers.models (name, active, endpoint, ...): any
-- change to the table refreshes it in the same transaction. CONCURRENTLY: routers keep reading
-- the previous rows until the change commits.
CREATE FUNCTION avengers.refresh_routing_models() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  -- A model added without calibration outcomes gets its starting evidence there.
  CALL avengers.refresh_evidence();
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION avengers.refresh_routing_models() IS
  'Trigger function: refresh avengers.production_evidence, routing_entries and routing_models after a change to avengers.models.';
CREATE TRIGGER models_refresh_routing
  AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON avengers.models
  FOR EACH STATEMENT EXECUTE FUNCTION avengers.refresh_routing_models();
COMMENT ON TRIGGER models_refresh_routing ON avengers.models IS
  'Keeps the model columns and prices of avengers.routing_models current.';

-- routing_centroids carries each cluster's OOD distance and routing_state the novelty
-- threshold: a change to either table refreshes them in the same transaction.
CREATE FUNCTION avengers.refresh_routing_novelty() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_state;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_centroids;
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION avengers.refresh_routing_novelty() IS
  'Trigger function: refresh avengers.routing_state and routing_centroids after a change to the novelty thresholds or the clusters'' distance statistics.';
CREATE TRIGGER cluster_distances_refresh_routing
  AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON avengers.cluster_distances
  FOR EACH STATEMENT EXECUTE FUNCTION avengers.refresh_routing_novelty();
COMMENT ON TRIGGER cluster_distances_refresh_routing ON avengers.cluster_distances IS
  'Keeps the OOD distances of avengers.routing_centroids current.';
CREATE TRIGGER novelty_profiles_refresh_routing
  AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON avengers.novelty_profiles
  FOR EACH STATEMENT EXECUTE FUNCTION avengers.refresh_routing_novelty();
COMMENT ON TRIGGER novelty_profiles_refresh_routing ON avengers.novelty_profiles IS
  'Keeps the novelty thresholds of avengers.routing_state current.';
