-- What the routing functions (sql/040_routing_functions.sql) read besides cluster_profiles,
-- for the active clustering only; refreshed with the profiles in one transaction.

CREATE MATERIALIZED VIEW avengers.clustering_scale AS
SELECT a.clustering_id,
       (percentile_cont(0.5) WITHIN GROUP (ORDER BY a.distance::double precision ^ 2))
         ::double precision AS rho,
       count(*)::integer AS n
FROM avengers.assignments a
JOIN avengers.routed_clusterings k ON k.id = a.clustering_id
WHERE a.distance IS NOT NULL
GROUP BY a.clustering_id
WITH DATA;
CREATE UNIQUE INDEX clustering_scale_key ON avengers.clustering_scale (clustering_id);
COMMENT ON MATERIALIZED VIEW avengers.clustering_scale IS
  'Scale of the active clustering: rho = median squared Euclidean distance of its calibration queries to their own centroid. Routing weighs the nearest centroids by exp(-(d_j^2 - d_1^2) / (temperature * rho)), so the temperature does not depend on the embedder.';
CALL avengers.comment_columns('avengers.clustering_scale', $$
clustering_id: The active clustering version.
rho: Median of assignments.distance^2 (0 when every query sits on its centroid: routing then weighs only the nearest centroids).
n: Assignments behind the median.
$$);

-- What avengers.decide (sql/040_decide.sql) reads on every call, shaped so that a decision is one
-- scan of k centroids plus one pass over the models, with no per-(cluster, model) rows: the pooled
-- sums over a query's neighbours are inner products, computed by pgvector in C, of a per-query
-- weight vector over clusters with each model's per-cluster sums stored as sparse vectors
-- (index = cluster + 1). pgvector works in float32, so pooled scores carry ~1e-7 relative
-- rounding; the counts and sums of 0/1 outcomes are exact integers. A sparsevec holds at most
-- 16,000 non-zero entries, so the vectors are built only for clusterings of at most 16,000
-- clusters ("pooled"); larger ones are scored from routing_entries, one row per neighbour.

-- A sparse vector over clusters from parallel arrays of clusters and values (entry cluster + 1):
-- how routing_models stores per-cluster sums. Entries whose value is NULL or below 1e-30 in
-- magnitude are left out (float32 cannot hold them and they add nothing to a pooled sum), so the
-- callers aggregate every cluster's value and say which entries exist once, here. No entries:
-- the zero vector of that dimension.
CREATE FUNCTION avengers.sparse_sums(clusters integer[], vals double precision[], dims integer)
RETURNS sparsevec
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN format('{%s}/%s',
              (SELECT string_agg((x.c + 1)::text || ':' || x.v::text, ',' ORDER BY x.c)
               FROM unnest(clusters, vals) AS x(c, v)
               WHERE abs(x.v) >= 1e-30),
              dims)::sparsevec;
COMMENT ON FUNCTION avengers.sparse_sums(integer[], double precision[], integer) IS
  'Sparse vector of dimension dims with vals[i] at entry clusters[i] + 1 (routing_models'' per-cluster sums); NULL values and values below 1e-30 in magnitude are left out.';

-- One row per routed clustering (the active one): what a decision checks, scales by and
-- defaults to.
CREATE MATERIALIZED VIEW avengers.routing_state AS
SELECT k.id AS clustering_id,
       k.status = 'active' AS active,
       es.dimension,
       x.clusters,
       sc.rho,
       coalesce(x.clusters <= 16000, false) AS pooled,
       x.mean_chars,
       k.production_weight,
       k.exploration,
       k.exploration_share,
       k.exploration_overlap,
       nv.threshold AS novelty_threshold
FROM avengers.clusterings k
JOIN avengers.routed_clusterings r ON r.id = k.id
JOIN avengers.embedding_spaces es ON es.id = k.space_id
LEFT JOIN avengers.clustering_scale sc ON sc.clustering_id = k.id
LEFT JOIN avengers.novelty_profiles nv ON nv.clustering_id = k.id
CROSS JOIN LATERAL (
  SELECT (SELECT max(c.cluster) + 1 FROM avengers.centroids c WHERE c.clustering_id = k.id)
           AS clusters,
         (SELECT avg(char_length(q.text))::double precision
          FROM avengers.assignments a JOIN avengers.queries q ON q.id = a.query_id
          WHERE a.clustering_id = k.id) AS mean_chars
) AS x
WITH DATA;
CREATE UNIQUE INDEX routing_state_key ON avengers.routing_state (clustering_id);
COMMENT ON MATERIALIZED VIEW avengers.routing_state IS
  'The served clustering as avengers.decide sees it: dimension, number of clusters, scale, whether it is scored from sparse vectors (pooled), and the defaults a routing policy falls back to (production weight, exploration, novelty threshold). Refreshed with the profiles and when the clustering''s settings change.';
CALL avengers.comment_columns('avengers.routing_state', $$
clustering_id: The clustering version.
active: Whether it is the active clustering (what a policy without a clustering routes with).
dimension: Dimension of its embedding space (query vectors must match).
clusters: Highest cluster index + 1: the dimension of the sparse vectors in routing_models.
rho: clustering_scale.rho (NULL without assignments).
pooled: At most 16,000 clusters: decide pools from routing_models' sparse vectors; otherwise it reads routing_entries per neighbour.
mean_chars: Mean length in characters of the clustered calibration texts: the prompt length a cost-aware decision assumes for a vector routed without its text.
production_weight: clusterings.production_weight: what a policy without a production weight uses.
exploration: clusterings.exploration: what a policy without an exploration uses.
exploration_share: clusterings.exploration_share.
exploration_overlap: clusterings.exploration_overlap.
novelty_threshold: novelty_profiles.threshold: the Mahalanobis distance at novelty 1 (NULL: the version has no novelty model, and novelty is the nearest cluster's distance over its ood_distance).
$$);

-- The active clustering's centroids with the sparse-vector key of each cluster, scanned once per
-- routed query (a copy, so the scan reads no other version's rows and formats no integers), and
-- each cluster's OOD distance (for versions without a novelty model).
CREATE MATERIALIZED VIEW avengers.routing_centroids AS
SELECT c.clustering_id, c.cluster, c.centroid, (c.cluster + 1)::text || ':' AS weight_key,
       d.ood_distance,
       CASE WHEN st.pooled THEN format('{%s:1}/%s', c.cluster + 1, st.clusters)::sparsevec
       END AS onehot
FROM avengers.centroids c
JOIN avengers.routing_state st ON st.clustering_id = c.clustering_id
LEFT JOIN avengers.cluster_distances d ON d.clustering_id = c.clustering_id AND d.cluster = c.cluster
WITH DATA;
CREATE UNIQUE INDEX routing_centroids_key ON avengers.routing_centroids (clustering_id, cluster);
COMMENT ON MATERIALIZED VIEW avengers.routing_centroids IS
  'Centroids of the served clustering, as avengers.decide scans them.';
CALL avengers.comment_columns('avengers.routing_centroids', $$
clustering_id: The clustering version.
cluster: Cluster index.
centroid: The centroid (avengers.centroids.centroid).
weight_key: '<cluster + 1>:', the cluster's entry key in a sparsevec literal.
ood_distance: cluster_distances.ood_distance (NULL: not measured).
onehot: The sparsevec with 1 at the cluster's entry: its inner product with a model's per-cluster sums (routing_models) reads the model's entry for the cluster.
$$);

-- One row per cluster and model of the served clustering: the calibration profile entry, the
-- feedback counted there and what the production update rule adds (production_evidence, which
-- also starts a model without calibration outcomes). What routing_models' per-cluster vectors
-- are built from.
CREATE MATERIALIZED VIEW avengers.routing_entries AS
SELECT x.clustering_id, x.cluster, x.model_id,
       c.mean_score, c.n, c.score_sum, c.wilson_low, c.wilson_high,
       coalesce(p.n, 0)::integer AS production_n,
       p.decayed_mean AS production_mean,
       coalesce(e.delta_n, 0) AS production_delta_n,
       coalesce(e.delta_sum, 0) AS production_delta_sum
FROM (
  SELECT clustering_id, cluster, model_id FROM avengers.cluster_profiles
  UNION
  SELECT clustering_id, cluster, model_id FROM avengers.production_profiles
  UNION
  SELECT clustering_id, cluster, model_id FROM avengers.production_evidence
) AS x
LEFT JOIN avengers.cluster_profiles c
  ON c.clustering_id = x.clustering_id AND c.cluster = x.cluster AND c.model_id = x.model_id
LEFT JOIN avengers.production_profiles p
  ON p.clustering_id = x.clustering_id AND p.cluster = x.cluster AND p.model_id = x.model_id
LEFT JOIN avengers.production_evidence e
  ON e.clustering_id = x.clustering_id AND e.cluster = x.cluster AND e.model_id = x.model_id
WITH DATA;
CREATE UNIQUE INDEX routing_entries_key ON avengers.routing_entries (clustering_id, cluster, model_id);
COMMENT ON MATERIALIZED VIEW avengers.routing_entries IS
  'Per cluster and model of the served clustering: its calibration profile entry (cluster_profiles), the feedback counted there (production_profiles) and what the production update rule adds (production_evidence): what routing_models'' per-cluster vectors are built from.';
CALL avengers.comment_columns('avengers.routing_entries', $$
clustering_id: The clustering version.
cluster: Cluster index.
model_id: Model.
mean_score: cluster_profiles.mean_score (NULL: no calibration outcome here).
n: cluster_profiles.n.
score_sum: cluster_profiles.score_sum.
wilson_low: cluster_profiles.wilson_low.
wilson_high: cluster_profiles.wilson_high.
production_n: Feedback rows counted here (production_profiles.n; 0: none).
production_mean: Their decayed mean (NULL: none).
production_delta_n: production_evidence.delta_n: what the update rule adds to the outcome count at production weight 1 (0 for a calibrated model).
production_delta_sum: production_evidence.delta_sum: what the update rule adds to the outcome sum at production weight 1 (may be negative).
$$);

-- Per model of model_priors, and per model of the pool without calibration outcomes in the
-- clustering (added since: scored on the update rule's evidence alone, so only at a production
-- weight above 0; its prior is the calibrated models' average and it comes after all of them in
-- the tie-break order): what a decision pools for it, as sparse vectors over clusters (entry
-- cluster + 1; zero entries are not stored and add nothing to a pooled sum): its calibration
-- outcome sums and counts, what the production update rule adds to them, the feedback counted,
-- and its measured tokens and costs; with its prices and the model's row of avengers.models, so
-- a decision reads one relation for its candidates. Production is kept apart from calibration so
-- that a policy's production weight applies at decision time (weight 0 reads calibration only).
-- Sums below 1e-30 in magnitude are left out (avengers.sparse_sums). A statement trigger on
-- avengers.models (sql/060_procedures_and_triggers.sql) refreshes this view in the same
-- transaction as any change there, so routing never sees an outdated flag, endpoint or price;
-- avengers.refresh_production refreshes it too (clusters x models rows).
-- toast_tuple_target: the vectors stay in the row (a few KB at k = 64) instead of being
-- compressed or moved out of line, which every decision would pay to undo.
CREATE MATERIALIZED VIEW avengers.routing_models WITH (toast_tuple_target = 8160) AS
WITH pool AS (
  SELECT mp.clustering_id, mp.model_id, mp.prior_score, mp.overall_score, mp.tie_rank,
         true AS calibrated
  FROM avengers.model_priors mp
  UNION ALL
  SELECT k.clustering_id, m.id, k.prior_score, NULL, (k.models + row_number() OVER (
           PARTITION BY k.clustering_id ORDER BY m.name))::integer, false
  FROM avengers.models m
  CROSS JOIN (SELECT p.clustering_id, avg(p.prior_score) AS prior_score, count(*) AS models
              FROM avengers.model_priors p GROUP BY p.clustering_id) AS k
  WHERE NOT EXISTS (SELECT 1 FROM avengers.model_priors p
                    WHERE p.clustering_id = k.clustering_id AND p.model_id = m.id)
)
SELECT mp.clustering_id, mp.model_id, mp.prior_score, mp.overall_score, mp.tie_rank,
       mp.calibrated,
       m.name, m.active, m.endpoint, coalesce(m.served_name, m.name) AS served_name,
       m.api_key_env,
       -- Not pooled: too many clusters for a sparse vector; decide reads routing_entries.
       CASE WHEN st.pooled THEN v.score_sums END AS score_sums,
       CASE WHEN st.pooled THEN v.ns END AS ns,
       CASE WHEN st.pooled THEN v.production_sums END AS production_sums,
       CASE WHEN st.pooled THEN v.production_ns END AS production_ns,
       CASE WHEN st.pooled THEN v.production_counts END AS production_counts,
       CASE WHEN st.pooled THEN v.production_means END AS production_means,
       CASE WHEN st.pooled THEN v.wilson_lows END AS wilson_lows,
       CASE WHEN st.pooled THEN v.wilson_highs END AS wilson_highs,
       m.cost_in_per_m AS price_in, m.cost_out_per_m AS price_out,
       mc.tokens_per_char, mc.tokens_out AS mean_tokens_out, mc.cost AS mean_cost,
       mc.latency_ms AS mean_latency_ms,
       CASE WHEN st.pooled THEN c.tokens_out_sums END AS tokens_out_sums,
       CASE WHEN st.pooled THEN c.answer_ns END AS answer_ns,
       CASE WHEN st.pooled THEN c.cost_sums END AS cost_sums,
       CASE WHEN st.pooled THEN c.cost_ns END AS cost_ns,
       CASE WHEN st.pooled THEN c.latency_sums END AS latency_sums,
       CASE WHEN st.pooled THEN c.latency_ns END AS latency_ns
FROM pool mp
JOIN avengers.routing_state st ON st.clustering_id = mp.clustering_id
JOIN avengers.models m ON m.id = mp.model_id
LEFT JOIN avengers.model_costs mc ON mc.clustering_id = mp.clustering_id AND mc.model_id = mp.model_id
CROSS JOIN LATERAL (
  SELECT avengers.sparse_sums(array_agg(e.cluster), array_agg(e.score_sum), st.clusters)
           AS score_sums,
         avengers.sparse_sums(array_agg(e.cluster), array_agg(e.n), st.clusters) AS ns,
         avengers.sparse_sums(array_agg(e.cluster), array_agg(e.production_delta_sum), st.clusters)
           AS production_sums,
         avengers.sparse_sums(array_agg(e.cluster), array_agg(e.production_delta_n), st.clusters)
           AS production_ns,
         avengers.sparse_sums(array_agg(e.cluster), array_agg(e.production_n), st.clusters)
           AS production_counts,
         avengers.sparse_sums(array_agg(e.cluster),
                              array_agg(CASE WHEN e.production_n > 0 THEN e.production_mean END),
                              st.clusters) AS production_means,
         avengers.sparse_sums(array_agg(e.cluster), array_agg(e.wilson_low), st.clusters)
           AS wilson_lows,
         avengers.sparse_sums(array_agg(e.cluster), array_agg(e.wilson_high), st.clusters)
           AS wilson_highs
  FROM avengers.routing_entries e
  WHERE e.clustering_id = mp.clustering_id AND e.model_id = mp.model_id AND st.pooled
) AS v
CROSS JOIN LATERAL (
  -- A cost or latency sum is 0 wherever its count is, so the sums need no filter of their own.
  SELECT avengers.sparse_sums(array_agg(cc.cluster), array_agg(cc.tokens_out_sum), st.clusters)
           AS tokens_out_sums,
         avengers.sparse_sums(array_agg(cc.cluster), array_agg(cc.answers), st.clusters)
           AS answer_ns,
         avengers.sparse_sums(array_agg(cc.cluster), array_agg(cc.cost_sum), st.clusters)
           AS cost_sums,
         avengers.sparse_sums(array_agg(cc.cluster), array_agg(cc.cost_answers), st.clusters)
           AS cost_ns,
         avengers.sparse_sums(array_agg(cc.cluster), array_agg(cc.latency_sum), st.clusters)
           AS latency_sums,
         avengers.sparse_sums(array_agg(cc.cluster), array_agg(cc.latency_requests), st.clusters)
           AS latency_ns
  FROM avengers.cluster_costs cc
  WHERE cc.clustering_id = mp.clustering_id AND cc.model_id = mp.model_id AND st.pooled
) AS c
WITH DATA;
CREATE UNIQUE INDEX routing_models_key ON avengers.routing_models (clustering_id, model_id);
COMMENT ON MATERIALIZED VIEW avengers.routing_models IS
  'Per model of the served clustering (of model_priors, and of the pool without calibration outcomes there): the prior score and tie-break order; as sparse vectors over clusters (entry cluster + 1, NULL when the clustering is not pooled) the calibration outcome sums and counts of cluster_profiles, what the production update rule adds to them (production_evidence), the feedback counted and its decayed mean (production_profiles) and the measured tokens and costs of cluster_costs, what avengers.decide pools with one inner product each; the model''s row of avengers.models (kept current by a trigger on that table) and its measured means (model_costs).';
CALL avengers.comment_columns('avengers.routing_models', $$
clustering_id: The clustering version.
model_id: Model.
prior_score: model_priors.prior_score: the dataset-balanced calibration mean scores are shrunk toward (a model without calibration outcomes: the calibrated models' average).
overall_score: model_priors.overall_score (NULL without calibration outcomes).
tie_rank: model_priors.tie_rank (the tie-break order; models without calibration outcomes after all others, by name).
calibrated: Whether the model has calibration outcomes in the clustering (false: scored on the update rule's evidence alone, so never at production weight 0).
name: models.name.
active: models.active (routing skips inactive models).
endpoint: models.endpoint.
served_name: models.served_name, else the name.
api_key_env: models.api_key_env.
score_sums: cluster_profiles.score_sum per cluster (float32).
ns: cluster_profiles.n per cluster.
production_sums: production_evidence.delta_sum per cluster, unweighted (float32, may be negative).
production_ns: production_evidence.delta_n per cluster, unweighted (float32).
production_means: production_profiles.decayed_mean per cluster with feedback (float32).
wilson_lows: cluster_profiles.wilson_low per cluster (float32).
wilson_highs: cluster_profiles.wilson_high per cluster (float32).
production_counts: production_profiles.n (feedback rows, not decayed) per cluster.
price_in: models.cost_in_per_m (price per 1M prompt tokens).
price_out: models.cost_out_per_m (price per 1M completion tokens).
tokens_per_char: model_costs.tokens_per_char (NULL: not measured).
mean_tokens_out: model_costs.tokens_out (NULL: not measured).
mean_cost: model_costs.cost (NULL: not measured).
tokens_out_sums: cluster_costs.tokens_out_sum per cluster (float32).
answer_ns: cluster_costs.answers per cluster.
cost_sums: cluster_costs.cost_sum per cluster (float32).
cost_ns: cluster_costs.cost_answers per cluster.
mean_latency_ms: model_costs.latency_ms (NULL: not measured).
latency_sums: cluster_costs.latency_sum per cluster (float32; milliseconds).
latency_ns: cluster_costs.latency_requests per cluster.
$$);
