-- Drift, for analysts: has production traffic moved away from what the store was calibrated on?
-- Each question is a function of the window start and a view of the last 7 days under the same
-- name: SELECT * FROM avengers.traffic_drift (7 days) or avengers.traffic_drift(now() - '1 day').

CREATE FUNCTION avengers.traffic_drift(since timestamptz)
RETURNS TABLE (
  clustering_id integer, cluster integer, calibration_queries integer,
  calibration_share double precision, routed bigint, routed_share double precision,
  share_ratio double precision, ood bigint, mean_distance double precision)
LANGUAGE sql STABLE
BEGIN ATOMIC
  WITH k AS (SELECT a.id FROM avengers.active_clustering a),
  cal AS (
    SELECT c.cluster, c.size FROM avengers.centroids c JOIN k ON k.id = c.clustering_id
  ),
  traffic AS (
    SELECT r.cluster, count(*) AS routed, count(*) FILTER (WHERE r.ood) AS ood,
           avg(r.distance) AS mean_distance
    FROM avengers.route_log r JOIN k ON k.id = r.clustering_id
    WHERE r.at >= since AND r.cluster IS NOT NULL
    GROUP BY r.cluster
  ),
  shares AS (
    SELECT cal.cluster, cal.size,
           cal.size::double precision / nullif(sum(cal.size) OVER (), 0) AS calibration_share,
           coalesce(t.routed, 0) AS routed,
           coalesce(t.routed, 0)::double precision / nullif(sum(t.routed) OVER (), 0)
             AS routed_share,
           coalesce(t.ood, 0) AS ood, t.mean_distance
    FROM cal LEFT JOIN traffic t ON t.cluster = cal.cluster
  )
  SELECT k.id, s.cluster, s.size, s.calibration_share, s.routed, s.routed_share,
         s.routed_share / nullif(s.calibration_share, 0), s.ood, s.mean_distance
  FROM shares s CROSS JOIN k
  ORDER BY s.cluster;
END;
COMMENT ON FUNCTION avengers.traffic_drift(timestamptz) IS
  'Per cluster of the active clustering: its share of the calibration queries against its share of the requests routed since `since` (share_ratio > 1: more traffic than calibration), with the out-of-distribution requests among them and their mean distance.';

CREATE VIEW avengers.traffic_drift AS
SELECT * FROM avengers.traffic_drift(now() - interval '7 days');
COMMENT ON VIEW avengers.traffic_drift IS
  'avengers.traffic_drift(since) over the last 7 days: each cluster''s calibration share against its share of routed requests.';
CALL avengers.comment_columns('avengers.traffic_drift', $$
clustering_id: The active clustering version.
cluster: Cluster index.
calibration_queries: Calibration queries in the cluster (centroids.size).
calibration_share: Their share of all calibration queries clustered.
routed: Requests routed to the cluster in the window (route_log).
routed_share: Their share of all requests routed in the window.
share_ratio: routed_share / calibration_share: above 1, production asks more of this kind than calibration had.
ood: Requests of the cluster flagged out of distribution.
mean_distance: Mean distance of the cluster's requests to its centroid (compare cluster_distances.median).
$$);

CREATE VIEW avengers.ood_daily AS
SELECT date_trunc('day', r.at)                                     AS day,
       r.clustering_id,
       count(*)                                                    AS routed,
       count(*) FILTER (WHERE r.ood)                               AS ood,
       (count(*) FILTER (WHERE r.ood))::double precision
         / nullif(count(r.ood), 0)                                 AS ood_rate,
       avg(r.distance)                                             AS mean_distance,
       avg(r.novelty)                                              AS mean_novelty
FROM avengers.route_log r
WHERE r.clustering_id IS NOT NULL
GROUP BY 1, 2;
COMMENT ON VIEW avengers.ood_daily IS
  'Per day and clustering version: requests routed, how many were out of distribution, and their mean distance and novelty. A rising ood_rate or mean_distance is traffic the calibration did not cover.';
CALL avengers.comment_columns('avengers.ood_daily', $$
day: The day (start, in the session's time zone).
clustering_id: Clustering version that routed the requests.
routed: Requests routed.
ood: Requests flagged out of distribution.
ood_rate: ood / requests with a novelty score.
mean_distance: Mean distance to the nearest centroid.
mean_novelty: Mean novelty (route_log.novelty: above 1 is out of distribution).
$$);

CREATE FUNCTION avengers.outcome_drift(since timestamptz)
RETURNS TABLE (
  clustering_id integer, cluster integer, model text, calibration_n integer,
  calibration_mean double precision, wilson_low double precision, wilson_high double precision,
  production_n bigint, production_mean double precision, production_low double precision,
  production_high double precision, outside boolean)
LANGUAGE sql STABLE
BEGIN ATOMIC
  WITH k AS (SELECT a.id FROM avengers.active_clustering a),
  recent AS (
    SELECT f.route_id, f.model_id, f.score FROM avengers.feedback f WHERE f.at >= since
  ),
  cells AS (
    SELECT c.route_id, c.cluster
    FROM k
    CROSS JOIN LATERAL avengers.production_cells(
      ARRAY(SELECT DISTINCT x.route_id FROM recent x), k.id) AS c
  ),
  production AS (
    SELECT c.cluster, r.model_id, count(*) AS n, avg(r.score) AS mean
    FROM recent r JOIN cells c ON c.route_id = r.route_id
    GROUP BY c.cluster, r.model_id
  )
  SELECT k.id, p.cluster, m.name, cp.n, cp.mean_score, cp.wilson_low, cp.wilson_high,
         p.n, p.mean,
         avengers.wilson_bound(p.mean, p.n::integer, false),
         avengers.wilson_bound(p.mean, p.n::integer, true),
         coalesce(p.mean < cp.wilson_low OR p.mean > cp.wilson_high, false)
  FROM production p
  CROSS JOIN k
  JOIN avengers.models m ON m.id = p.model_id
  LEFT JOIN avengers.cluster_profiles cp
    ON cp.clustering_id = k.id AND cp.cluster = p.cluster AND cp.model_id = p.model_id
  ORDER BY p.cluster, m.name;
END;
COMMENT ON FUNCTION avengers.outcome_drift(timestamptz) IS
  'Per cluster of the active clustering and model: the mean of the feedback observed since `since` against the calibration mean and its Wilson 95% interval; outside marks a production mean that left the interval.';

CREATE VIEW avengers.outcome_drift AS
SELECT * FROM avengers.outcome_drift(now() - interval '7 days');
COMMENT ON VIEW avengers.outcome_drift IS
  'avengers.outcome_drift(since) over the last 7 days: production mean per cluster and model against its calibration interval.';
CALL avengers.comment_columns('avengers.outcome_drift', $$
clustering_id: The active clustering version.
cluster: Cluster index.
model: Model.
calibration_n: Calibration outcomes of the model in the cluster (NULL: none).
calibration_mean: Their mean.
wilson_low: Lower Wilson 95% bound of the calibration mean.
wilson_high: Upper Wilson 95% bound of the calibration mean.
production_n: Feedback rows observed in the window.
production_mean: Their mean score.
production_low: Lower Wilson 95% bound of the production mean.
production_high: Upper Wilson 95% bound of the production mean.
outside: The production mean is outside the calibration interval.
$$);
