-- Production outcomes: feedback on routed requests (avengers.feedback), counted per clustering
-- version, cluster and model beside the calibration profiles, never mixed into them.
--
-- Decay: a feedback row observed at time t weighs 0.5 ^ ((T - t) / half_life) at time T
-- (half_life per clustering). avengers.production_stats keeps, per cell, the raw count and sum
-- and the decayed sums as of the cell's latest row (as_of); adding rows rescales the cell's sums
-- to the new as_of and adds theirs, removing rows subtracts theirs, so each feedback row costs
-- O(1) cell updates and calibration outcomes are never re-read. What routing serves
-- (production_profiles) decays every cell of the active clustering to one time: the later of
-- now() and its newest feedback (so rows stamped ahead of the clock, as a replay's are, never
-- weigh more than 1).
--
-- Where a feedback row counts (production_cells): in the clustering and cluster that routed the
-- request, and, when the query's vector was logged (route_vectors), in the nearest cluster of
-- the active clustering if that is another version of the same embedding space. Triggers keep
-- those cells current; any other version is rebuilt from the feedback table when it is
-- activated (avengers.rebuild_production), or when its half_life changes.

CREATE FUNCTION avengers.decay(since timestamptz, until timestamptz, half_life interval)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN exp(least(700.0, greatest(-700.0,
         -ln(2.0) * extract(epoch FROM (until - since))::double precision
         / extract(epoch FROM half_life)::double precision)));
COMMENT ON FUNCTION avengers.decay(timestamptz, timestamptz, interval) IS
  'Weight at `until` of an outcome observed at `since`: 0.5 ^ ((until - since) / half_life).';

CREATE FUNCTION avengers.production_cells(routes uuid[], target integer DEFAULT NULL)
RETURNS TABLE (route_id uuid, clustering_id integer, cluster integer)
LANGUAGE sql STABLE
BEGIN ATOMIC
  WITH r AS (
    SELECT l.route_id, l.clustering_id, l.cluster
    FROM avengers.route_log l
    WHERE l.route_id = ANY (routes)
  ),
  other AS (
    SELECT k.id, k.space_id
    FROM avengers.clusterings k
    WHERE k.id = coalesce(target, (SELECT a.id FROM avengers.active_clustering a))
  )
  SELECT r.route_id, r.clustering_id, r.cluster
  FROM r
  WHERE r.cluster IS NOT NULL AND (target IS NULL OR r.clustering_id = target)
  UNION ALL
  SELECT r.route_id, o.id, n.cluster
  FROM r
  JOIN avengers.route_vectors v ON v.route_id = r.route_id
  JOIN other o ON o.space_id = v.space_id AND o.id IS DISTINCT FROM r.clustering_id
  CROSS JOIN LATERAL (
    SELECT c.cluster FROM avengers.centroids c
    WHERE c.clustering_id = o.id
    ORDER BY c.centroid <-> l2_normalize(v.embedding), c.cluster
    LIMIT 1) AS n;
END;
COMMENT ON FUNCTION avengers.production_cells(uuid[], integer) IS
  'The (clustering, cluster) cells feedback on these routes counts in: the route''s own, and the nearest cluster of `target` (default: the active clustering) when the route''s vector was logged in its space. With `target`, only cells of that clustering.';

CREATE FUNCTION avengers.production_apply(
  sign integer, routes uuid[], models integer[], scores double precision[], ats timestamptz[],
  target integer DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
  IF routes IS NULL OR cardinality(routes) = 0 THEN
    RETURN;
  END IF;
  IF sign > 0 THEN
    -- Each cell's new rows, decayed to their latest time, merged into what the cell holds:
    -- both sides rescaled to the later of the two times, then added.
    INSERT INTO avengers.production_stats AS p
      (clustering_id, cluster, model_id, n, score_sum, decayed_n, decayed_sum, as_of)
    SELECT x.clustering_id, x.cluster, x.model_id, count(*), sum(x.score),
           sum(avengers.decay(x.at, x.as_of, k.half_life)),
           sum(x.score * avengers.decay(x.at, x.as_of, k.half_life)),
           max(x.as_of)
    FROM (
      SELECT c.clustering_id, c.cluster, f.model_id, f.score, f.at,
             max(f.at) OVER (PARTITION BY c.clustering_id, c.cluster, f.model_id) AS as_of
      FROM unnest(routes, models, scores, ats) AS f(route_id, model_id, score, at)
      JOIN avengers.production_cells(routes, target) AS c ON c.route_id = f.route_id
    ) AS x
    JOIN avengers.clusterings k ON k.id = x.clustering_id
    GROUP BY x.clustering_id, x.cluster, x.model_id
    ON CONFLICT (clustering_id, cluster, model_id) DO UPDATE SET
      n = p.n + excluded.n,
      score_sum = p.score_sum + excluded.score_sum,
      decayed_n = p.decayed_n * avengers.production_rescale(p.clustering_id, p.as_of, excluded.as_of)
                  + excluded.decayed_n
                    * avengers.production_rescale(p.clustering_id, excluded.as_of, p.as_of),
      decayed_sum = p.decayed_sum
                      * avengers.production_rescale(p.clustering_id, p.as_of, excluded.as_of)
                    + excluded.decayed_sum
                      * avengers.production_rescale(p.clustering_id, excluded.as_of, p.as_of),
      as_of = greatest(p.as_of, excluded.as_of);
  ELSE
    -- Removed rows, each decayed to its cell's as_of, subtracted; an emptied cell goes.
    WITH gone AS (
      SELECT c.clustering_id, c.cluster, f.model_id, count(*) AS n, sum(f.score) AS score_sum,
             sum(avengers.decay(f.at, p.as_of, k.half_life)) AS decayed_n,
             sum(f.score * avengers.decay(f.at, p.as_of, k.half_life)) AS decayed_sum
      FROM unnest(routes, models, scores, ats) AS f(route_id, model_id, score, at)
      JOIN avengers.production_cells(routes, target) AS c ON c.route_id = f.route_id
      JOIN avengers.production_stats p
        ON p.clustering_id = c.clustering_id AND p.cluster = c.cluster AND p.model_id = f.model_id
      JOIN avengers.clusterings k ON k.id = c.clustering_id
      GROUP BY c.clustering_id, c.cluster, f.model_id
    )
    UPDATE avengers.production_stats p SET
      n = greatest(0, p.n - g.n),
      score_sum = CASE WHEN p.n > g.n THEN p.score_sum - g.score_sum ELSE 0 END,
      -- Rounding may leave a hair below zero: the sums are clamped.
      decayed_n = CASE WHEN p.n > g.n THEN greatest(0, p.decayed_n - g.decayed_n) ELSE 0 END,
      decayed_sum = CASE WHEN p.n > g.n THEN greatest(0, p.decayed_sum - g.decayed_sum) ELSE 0 END
    FROM gone g
    WHERE p.clustering_id = g.clustering_id AND p.cluster = g.cluster AND p.model_id = g.model_id;
    DELETE FROM avengers.production_stats p WHERE p.n = 0;
  END IF;
END
$$;
COMMENT ON FUNCTION avengers.production_apply(integer, uuid[], integer[], double precision[], timestamptz[], integer) IS
  'Add (sign > 0) or remove (sign < 0) feedback rows, given column by column, to or from avengers.production_stats: their cells (production_cells) rescaled and updated in place. Called by the triggers on avengers.feedback and by rebuild_production.';

CREATE FUNCTION avengers.production_rescale(
  clustering integer, as_of timestamptz, other timestamptz)
RETURNS double precision
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT avengers.decay(as_of, greatest(as_of, other), k.half_life)
  FROM avengers.clusterings k WHERE k.id = clustering;
END;
COMMENT ON FUNCTION avengers.production_rescale(integer, timestamptz, timestamptz) IS
  'Factor that moves decayed sums of a clustering''s cell from as_of to the later of as_of and other (1 when as_of is the later).';

CREATE FUNCTION avengers.feedback_counted() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  IF TG_OP IN ('DELETE', 'UPDATE') THEN
    PERFORM avengers.production_apply(-1, array_agg(o.route_id), array_agg(o.model_id),
                                      array_agg(o.score), array_agg(o.at))
    FROM old_rows o;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    PERFORM avengers.production_apply(1, array_agg(n.route_id), array_agg(n.model_id),
                                      array_agg(n.score), array_agg(n.at))
    FROM new_rows n;
  END IF;
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION avengers.feedback_counted() IS
  'Trigger function: count inserted feedback rows in avengers.production_stats, uncount deleted ones, and both for a replaced one (one call per statement).';

-- One trigger per event: a trigger with transition tables fires on one event only.
CREATE TRIGGER feedback_counted_insert
  AFTER INSERT ON avengers.feedback REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION avengers.feedback_counted();
COMMENT ON TRIGGER feedback_counted_insert ON avengers.feedback IS
  'Counts new feedback in avengers.production_stats.';
CREATE TRIGGER feedback_counted_update
  AFTER UPDATE ON avengers.feedback REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION avengers.feedback_counted();
COMMENT ON TRIGGER feedback_counted_update ON avengers.feedback IS
  'Replaces a replaced feedback row''s count in avengers.production_stats.';
CREATE TRIGGER feedback_counted_delete
  AFTER DELETE ON avengers.feedback REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION avengers.feedback_counted();
COMMENT ON TRIGGER feedback_counted_delete ON avengers.feedback IS
  'Removes deleted feedback from avengers.production_stats.';

CREATE PROCEDURE avengers.rebuild_production(clustering integer)
LANGUAGE plpgsql
AS $$
DECLARE
  routes uuid[];
  models integer[];
  scores double precision[];
  ats timestamptz[];
BEGIN
  DELETE FROM avengers.production_stats WHERE clustering_id = clustering;
  -- Only feedback that can count here: routes of this version, and routes with a logged vector.
  SELECT array_agg(f.route_id), array_agg(f.model_id), array_agg(f.score), array_agg(f.at)
  INTO routes, models, scores, ats
  FROM avengers.feedback f
  WHERE EXISTS (SELECT 1 FROM avengers.route_log r
                WHERE r.route_id = f.route_id AND r.clustering_id = clustering)
     OR EXISTS (SELECT 1 FROM avengers.route_vectors v WHERE v.route_id = f.route_id);
  PERFORM avengers.production_apply(1, routes, models, scores, ats, clustering);
END
$$;
COMMENT ON PROCEDURE avengers.rebuild_production(integer) IS
  'Recount every feedback row that counts in a clustering version (its own routes, and routes whose vector was logged) into avengers.production_stats: run when the version is activated or its half_life changes.';

-- What routing and the profile views read: the active clustering's cells, decayed to one time.
CREATE MATERIALIZED VIEW avengers.production_profiles AS
WITH k AS (
  SELECT a.id, a.half_life FROM avengers.active_clustering a
),
ref AS (
  SELECT greatest(now(), max(p.as_of)) AS at
  FROM avengers.production_stats p JOIN k ON k.id = p.clustering_id
)
SELECT p.clustering_id,
       p.cluster,
       p.model_id,
       m.name                                                         AS model,
       p.n,
       p.score_sum / p.n                                              AS mean_score,
       p.decayed_n * avengers.decay(p.as_of, ref.at, k.half_life)     AS decayed_n,
       p.decayed_sum * avengers.decay(p.as_of, ref.at, k.half_life)   AS decayed_sum,
       p.decayed_sum / nullif(p.decayed_n, 0)                         AS decayed_mean,
       ref.at                                                         AS as_of
FROM avengers.production_stats p
JOIN k ON k.id = p.clustering_id
CROSS JOIN ref
JOIN avengers.models m ON m.id = p.model_id
WITH DATA;
CREATE UNIQUE INDEX production_profiles_key ON avengers.production_profiles (cluster, model_id);
COMMENT ON MATERIALIZED VIEW avengers.production_profiles IS
  'Production outcomes of the active clustering per cluster and model (avengers.production_stats decayed to as_of). Refreshed by CALL avengers.refresh_production() (cheap: clusters x models rows) and with the profiles.';
COMMENT ON COLUMN avengers.production_profiles.clustering_id IS 'The active clustering version.';
COMMENT ON COLUMN avengers.production_profiles.cluster IS 'Cluster index.';
COMMENT ON COLUMN avengers.production_profiles.model_id IS 'Model.';
COMMENT ON COLUMN avengers.production_profiles.model IS 'Model name.';
COMMENT ON COLUMN avengers.production_profiles.n IS 'Feedback rows counted in the cell.';
COMMENT ON COLUMN avengers.production_profiles.mean_score IS 'Their mean score (undecayed).';
COMMENT ON COLUMN avengers.production_profiles.decayed_n IS 'Effective count at as_of: each row weighs 0.5 ^ (age / half_life).';
COMMENT ON COLUMN avengers.production_profiles.decayed_sum IS 'Decayed sum of the scores at as_of.';
COMMENT ON COLUMN avengers.production_profiles.decayed_mean IS 'decayed_sum / decayed_n: the mean that weighs recent feedback more.';
COMMENT ON COLUMN avengers.production_profiles.as_of IS 'The time everything is decayed to: the refresh time, or the newest feedback if later.';

CREATE PROCEDURE avengers.refresh_production()
LANGUAGE plpgsql
AS $$
BEGIN
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.production_profiles;
  -- routing_entries and routing_models carry them to decisions.
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_entries;
  REFRESH MATERIALIZED VIEW CONCURRENTLY avengers.routing_models;
END
$$;
COMMENT ON PROCEDURE avengers.refresh_production() IS
  'Serve the feedback recorded since the last refresh: recompute what routing reads of production outcomes (production_profiles, routing_entries, routing_models: clusters x models rows each) without re-reading calibration outcomes.';
