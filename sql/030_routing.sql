-- Routing: nearest centroid of the active clustering (Euclidean, the rule K-means assigned with),
-- then the top-n active models of that cluster. One statement, one round trip.
-- Bodies are BEGIN ATOMIC so names and operators bind when the file is applied.

CREATE FUNCTION avengers.route(query vector, top_n integer DEFAULT 1)
RETURNS TABLE (
  clustering_id integer, cluster integer, distance double precision, rank integer,
  model_id integer, model text, mean_score double precision, n integer,
  wilson_low double precision, wilson_high double precision, overall_score double precision)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
  WITH nearest AS (
    SELECT c.clustering_id, c.cluster, c.centroid <-> query AS distance
    FROM avengers.centroids c
    WHERE c.clustering_id = (SELECT k.id FROM avengers.clusterings k WHERE k.status = 'active')
    ORDER BY c.centroid <-> query
    LIMIT 1
  )
  SELECT nr.clustering_id, nr.cluster, nr.distance, p.active_rank, p.model_id, p.model,
         p.mean_score, p.n, p.wilson_low, p.wilson_high, p.overall_score
  FROM nearest nr
  LEFT JOIN avengers.cluster_profiles p
    ON p.cluster = nr.cluster AND p.active_rank <= top_n
  ORDER BY p.active_rank;
END;
COMMENT ON FUNCTION avengers.route(vector, integer) IS
  'Nearest centroid of the active clustering and its top_n active models by profile score. One row per model (model NULL when the cluster has no active model).';
