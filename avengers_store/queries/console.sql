-- name: traffic
-- Requests, answers, errors, fallbacks, OOD share and spend per bucket.
SELECT * FROM avengers.traffic_series(now() - %(window)s::interval, %(bucket)s::interval)

-- name: active_clustering
-- The active clustering and its production loop settings.
SELECT id, algorithm, k, n_queries, activated_at, production_weight, half_life, exploration,
       exploration_share, ood_quantile, change_threshold
FROM avengers.active_clustering

-- name: pool
-- The pool: endpoints, prices and health over the last 24 hours.
SELECT * FROM avengers.pool_health ORDER BY active DESC, model

-- name: profiles
-- Cluster x model profiles of the active clustering.
SELECT cluster, model, active, mean_score, n, wilson_low, wilson_high, production_n,
       production_decayed_mean, pooled_mean
FROM avengers.cluster_ranks
ORDER BY cluster, model

-- name: cluster_sizes
-- Calibration queries per cluster.
SELECT c.cluster, c.size
FROM avengers.centroids c JOIN avengers.active_clustering k ON k.id = c.clustering_id
ORDER BY c.cluster

-- name: cluster_ranks
-- The cluster's models, best first.
SELECT rank, model, active, mean_score, n, wilson_low, wilson_high, production_n,
       production_decayed_mean, pooled_mean
FROM avengers.cluster_ranks
WHERE cluster = %(cluster)s
ORDER BY rank

-- name: cluster_examples
-- Calibration queries nearest the centroid.
SELECT * FROM avengers.cluster_examples(%(cluster)s, 8)

-- name: cluster_neighbours
-- Nearest clusters.
SELECT * FROM avengers.cluster_neighbours(%(cluster)s, 5)

-- name: cluster_traffic_drift
-- Its traffic against its calibration share, last 7 days.
SELECT * FROM avengers.traffic_drift WHERE cluster = %(cluster)s

-- name: cluster_outcome_drift
-- Its feedback against the calibration interval, last 7 days.
SELECT * FROM avengers.outcome_drift WHERE cluster = %(cluster)s ORDER BY model

-- name: requests
-- Recent requests.
SELECT route_id, at, key_name, cluster, ood, novelty, strategy, answer_model, candidates,
       vote_share, samples, latency_ms, cost, error, fallbacks, feedback_n, feedback_mean
FROM avengers.request_log
WHERE (%(cluster)s::integer IS NULL OR cluster = %(cluster)s)
  AND (%(model)s::text IS NULL OR answer_model = %(model)s OR %(model)s = ANY (models))
  AND (%(key)s::text IS NULL OR key_name = %(key)s)
  AND (%(ood)s::boolean IS NULL OR ood = %(ood)s)
  AND (%(strategy)s::text IS NULL OR strategy = %(strategy)s)
ORDER BY at DESC
LIMIT %(limit)s

-- name: filter_choices
-- What the request list can be filtered by.
SELECT (SELECT array_agg(cluster ORDER BY cluster) FROM avengers.centroids c
          JOIN avengers.active_clustering k ON k.id = c.clustering_id) AS clusters,
       (SELECT array_agg(name ORDER BY name) FROM avengers.models) AS models,
       (SELECT array_agg(DISTINCT name) FROM avengers.api_keys) AS keys,
       (SELECT array_agg(DISTINCT strategy) FROM avengers.route_log
          WHERE at >= now() - interval '30 days') AS strategies

-- name: request
-- The request as the route log holds it.
SELECT * FROM avengers.request_log WHERE route_id = %(route_id)s

-- name: request_candidates
-- Its candidates' profiles in its cluster (as they stand now).
SELECT r.model, r.mean_score, r.n, r.wilson_low, r.wilson_high, r.production_n,
       r.production_decayed_mean, r.pooled_mean, m.endpoint, m.served_name
FROM avengers.cluster_ranks r JOIN avengers.models m ON m.name = r.model
WHERE r.clustering_id = %(clustering_id)s AND r.cluster = %(cluster)s
  AND r.model = ANY (%(models)s)

-- name: clustering
-- The clustering that routed it.
SELECT id, status, production_weight FROM avengers.clusterings WHERE id = %(clustering_id)s

-- name: request_feedback
-- Feedback on it.
SELECT * FROM avengers.request_feedback(%(route_id)s)

-- name: key_spend
-- Spend per key and UTC day.
SELECT period_start AS day, key_name, requests, tokens_in, tokens_out, cost, spend_limit
FROM avengers.key_spend
WHERE period = 'day' AND period_start >= current_date - %(days)s
ORDER BY day, key_name

-- name: model_spend
-- Spend per model and UTC day (current prices).
SELECT day, model, requests, samples, tokens_in, tokens_out, cost
FROM avengers.model_spend_daily
WHERE day >= current_date - %(days)s
ORDER BY day, model

-- name: traffic_drift
-- Traffic per cluster against calibration, last 7 days.
SELECT * FROM avengers.traffic_drift ORDER BY cluster

-- name: ood_daily
-- Out-of-distribution requests per day.
SELECT day, clustering_id, routed, ood, ood_rate, mean_distance, mean_novelty
FROM avengers.ood_daily
WHERE day >= now() - interval '30 days'
ORDER BY day, clustering_id

-- name: outcome_drift
-- Feedback against the calibration interval, last 7 days.
SELECT * FROM avengers.outcome_drift ORDER BY outside DESC, cluster, model

-- name: shadow_views
-- Shadow routing's views in the store.
SELECT c.relname AS name, obj_description(c.oid, 'pg_class') AS comment
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'avengers' AND left(c.relname, 6) = 'shadow' AND c.relkind IN ('v', 'm')
ORDER BY c.relname
