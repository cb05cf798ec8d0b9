-- What the routing functions (sql/040_routing_functions.sql) read besides cluster_profiles,
-- for the active clustering only; refreshed with the profiles in one transaction.

CREATE MATERIALIZED VIEW avengers.clustering_scale AS
SELECT a.clustering_id,
       (percentile_cont(0.5) WITHIN GROUP (ORDER BY a.distance::double precision ^ 2))
         ::double precision AS rho,
       count(*)::integer AS n
FROM avengers.assignments a
JOIN avengers.active_clustering k ON k.id = a.clustering_id
WHERE a.distance IS NOT NULL
GROUP BY a.clustering_id
WITH DATA;
CREATE UNIQUE INDEX clustering_scale_key ON avengers.clustering_scale (clustering_id);
COMMENT ON MATERIALIZED VIEW avengers.clustering_scale IS
  'Scale of the active clustering: rho = median squared Euclidean distance of its calibration queries to their own centroid. Routing weighs the nearest centroids by exp(-(d_j^2 - d_1^2) / (temperature * rho)), so the temperature does not depend on the embedder.';
COMMENT ON COLUMN avengers.clustering_scale.clustering_id IS 'The active clustering version.';
COMMENT ON COLUMN avengers.clustering_scale.rho IS 'Median of assignments.distance^2 (0 when every query sits on its centroid: routing then weighs only the nearest centroids).';
COMMENT ON COLUMN avengers.clustering_scale.n IS 'Assignments behind the median.';

-- What avengers.route and avengers.route_many read on every call, shaped so that a route is one
-- scan of k centroids plus one pass over the models, with no per-(cluster, model) rows: the pooled
-- sums over a query's neighbours are inner products, computed by pgvector in C, of a per-query
-- weight vector over clusters with each model's per-cluster outcome sums and counts stored as
-- sparse vectors (index = cluster + 1). pgvector works in float32, so pooled
-- scores carry ~1e-7 relative rounding; the counts and sums of 0/1 outcomes are exact integers.
-- A sparsevec holds at most 16,000 non-zero entries, so routing_models is built only for
-- clusterings of at most 16,000 clusters; larger ones (and the HNSW-indexed ones, built from
-- k = 16,384) are routed by avengers.route_many_general.

-- One row, the active clustering: what a route checks and scales by.
CREATE MATERIALIZED VIEW avengers.routing_state AS
SELECT k.id AS clustering_id,
       k.dimension,
       x.clusters,
       sc.rho,
       x.indexed,
       coalesce(x.clusters <= 16000, false) AND NOT x.indexed AS pooled,
       x.mean_chars
FROM avengers.active_clustering k
LEFT JOIN avengers.clustering_scale sc ON sc.clustering_id = k.id
CROSS JOIN LATERAL (
  SELECT (SELECT max(c.cluster) + 1 FROM avengers.centroids c WHERE c.clustering_id = k.id)
           AS clusters,
         to_regclass('avengers.centroids_hnsw_' || k.id) IS NOT NULL AS indexed,
         (SELECT avg(char_length(q.text))::double precision
          FROM avengers.assignments a JOIN avengers.queries q ON q.id = a.query_id
          WHERE a.clustering_id = k.id) AS mean_chars
) AS x
WITH DATA;
CREATE UNIQUE INDEX routing_state_key ON avengers.routing_state (clustering_id);
COMMENT ON MATERIALIZED VIEW avengers.routing_state IS
  'The served clustering as routing sees it: dimension, number of clusters, scale, whether it has an HNSW centroid index, and whether route / route_many serve it from routing_centroids and routing_models (pooled) or through route_many_general. Refreshed with the profiles; an HNSW index is built before a clustering is activated.';
COMMENT ON COLUMN avengers.routing_state.clustering_id IS 'The active clustering version.';
COMMENT ON COLUMN avengers.routing_state.dimension IS 'Dimension of its embedding space (query vectors must match).';
COMMENT ON COLUMN avengers.routing_state.clusters IS 'Highest cluster index + 1: the dimension of the sparse vectors in routing_models.';
COMMENT ON COLUMN avengers.routing_state.rho IS 'clustering_scale.rho (NULL without assignments).';
COMMENT ON COLUMN avengers.routing_state.indexed IS 'Whether avengers.centroids_hnsw_<id> exists (very large k).';
COMMENT ON COLUMN avengers.routing_state.pooled IS 'At most 16,000 clusters and no HNSW index: routing_models is built and route / route_many use it.';
COMMENT ON COLUMN avengers.routing_state.mean_chars IS 'Mean length in characters of the clustered calibration texts: the prompt length a cost-aware route assumes for a vector routed without its text.';

-- The active clustering's centroids with the sparse-vector key of each cluster, scanned once per
-- routed query (a copy, so the scan reads no other version's rows and formats no integers).
CREATE MATERIALIZED VIEW avengers.routing_centroids AS
SELECT c.clustering_id, c.cluster, c.centroid, (c.cluster + 1)::text || ':' AS weight_key
FROM avengers.centroids c
JOIN avengers.active_clustering k ON k.id = c.clustering_id
WITH DATA;
CREATE UNIQUE INDEX routing_centroids_key ON avengers.routing_centroids (cluster);
COMMENT ON MATERIALIZED VIEW avengers.routing_centroids IS
  'Centroids of the active clustering, as routing scans them.';
COMMENT ON COLUMN avengers.routing_centroids.clustering_id IS 'The active clustering version.';
COMMENT ON COLUMN avengers.routing_centroids.cluster IS 'Cluster index.';
COMMENT ON COLUMN avengers.routing_centroids.centroid IS 'The centroid (avengers.centroids.centroid).';
COMMENT ON COLUMN avengers.routing_centroids.weight_key IS '''<cluster + 1>:'', the cluster''s entry key in a sparsevec literal.';

-- Per model of model_priors: its outcome sums and counts in every cluster as sparse vectors
-- (zero entries, clusters without outcomes, are not stored and add nothing to a pooled sum):
-- score_sums and ns hold calibration plus production evidence (production_evidence) at the
-- clustering's production_weight, so the served score learns from feedback through the same
-- inner products; production_sums and production_ns hold the production evidence alone, for a
-- routing function that applies its own production weight.
-- Sums below 1e-30 in magnitude are left out too: float32 cannot hold them and they add nothing
-- visible.
-- A model with no calibration outcome in the clustering (added to the pool since) is routed on
-- production evidence alone, so it has a row only while production counts (production_weight
-- > 0): its prior is the average calibrated model's, and it comes after every calibrated model
-- in the tie-break order.
-- The model's row of avengers.models is copied in, so a route reads one relation for its
-- candidates instead of joining models; a statement trigger on avengers.models
-- (sql/060_procedures_and_triggers.sql) refreshes this view in the same transaction as any
-- change there, so routing never sees an outdated flag or endpoint.
-- Built from cluster_profiles, production_evidence, model_priors and routing_state, so
-- refreshed after them; avengers.refresh_production refreshes it too (clusters x models rows).
CREATE MATERIALIZED VIEW avengers.routing_models AS
WITH candidates AS (
  SELECT mp.clustering_id, mp.model_id, mp.prior_score, mp.overall_score, mp.tie_rank,
         true AS calibrated
  FROM avengers.model_priors mp
  UNION ALL
  SELECT k.id, m.id, (SELECT avg(p.prior_score) FROM avengers.model_priors p), NULL,
         ((SELECT count(*) FROM avengers.model_priors) + row_number() OVER (ORDER BY m.name))
           ::integer,
         false
  FROM avengers.models m
  CROSS JOIN avengers.active_clustering k
  WHERE k.production_weight > 0
    AND NOT EXISTS (SELECT 1 FROM avengers.model_priors p WHERE p.model_id = m.id)
)
SELECT mp.clustering_id, mp.model_id, mp.prior_score, mp.overall_score, mp.tie_rank,
       v.score_sums, v.ns,
       m.name, m.active, m.endpoint, coalesce(m.served_name, m.name) AS served_name,
       m.api_key_env, mp.calibrated, v.production_sums, v.production_ns
FROM candidates mp
JOIN avengers.routing_state st ON st.clustering_id = mp.clustering_id AND st.pooled
JOIN avengers.models m ON m.id = mp.model_id
CROSS JOIN avengers.active_clustering k
CROSS JOIN LATERAL (
  SELECT format('{%s}/%s',
                string_agg((cp.cluster + 1)::text || ':' || cp.score_sum::text, ',')
                  FILTER (WHERE abs(cp.score_sum) >= 1e-30),
                st.clusters)::sparsevec AS score_sums,
         format('{%s}/%s',
                string_agg((cp.cluster + 1)::text || ':' || cp.n::text, ',')
                  FILTER (WHERE abs(cp.n) >= 1e-30),
                st.clusters)::sparsevec AS ns,
         format('{%s}/%s',
                string_agg((cp.cluster + 1)::text || ':' || cp.delta_sum::text, ',')
                  FILTER (WHERE abs(cp.delta_sum) >= 1e-30),
                st.clusters)::sparsevec AS production_sums,
         format('{%s}/%s',
                string_agg((cp.cluster + 1)::text || ':' || cp.delta_n::text, ',')
                  FILTER (WHERE abs(cp.delta_n) >= 1e-30),
                st.clusters)::sparsevec AS production_ns
  FROM (
    -- Calibration outcomes, and production evidence at the clustering's weight. With weight 0
    -- the production rows are left out of score_sums and ns, so they are the calibration sums
    -- exactly.
    SELECT s.cluster, sum(s.score_sum) AS score_sum, sum(s.n) AS n, sum(s.delta_sum) AS delta_sum,
           sum(s.delta_n) AS delta_n
    FROM (
      SELECT c.cluster, c.score_sum::double precision AS score_sum, c.n::double precision AS n,
             0::double precision AS delta_sum, 0::double precision AS delta_n
      FROM avengers.cluster_profiles c
      WHERE c.clustering_id = mp.clustering_id AND c.model_id = mp.model_id
      UNION ALL
      SELECT e.cluster,
             CASE WHEN k.production_weight > 0 THEN k.production_weight * e.delta_sum ELSE 0 END,
             CASE WHEN k.production_weight > 0 THEN k.production_weight * e.delta_n ELSE 0 END,
             e.delta_sum, e.delta_n
      FROM avengers.production_evidence e
      WHERE e.clustering_id = mp.clustering_id AND e.model_id = mp.model_id
    ) AS s
    GROUP BY s.cluster
  ) AS cp
) AS v
WITH DATA;
CREATE UNIQUE INDEX routing_models_key ON avengers.routing_models (model_id);
COMMENT ON MATERIALIZED VIEW avengers.routing_models IS
  'Per model of the active clustering (when routing_state.pooled): the prior score and tie-break order of model_priors, as sparse vectors over clusters (entry cluster + 1) the outcome sums and counts of cluster_profiles plus production_evidence at the clustering''s production_weight (what route / route_many pool with one inner product each) and the production evidence alone, and the model''s row of avengers.models, kept current by a trigger on that table. Models without calibration outcomes have a row while production_weight > 0.';
COMMENT ON COLUMN avengers.routing_models.clustering_id IS 'The active clustering version.';
COMMENT ON COLUMN avengers.routing_models.model_id IS 'Model.';
COMMENT ON COLUMN avengers.routing_models.prior_score IS 'model_priors.prior_score (a model without calibration outcomes: the average calibrated model''s).';
COMMENT ON COLUMN avengers.routing_models.overall_score IS 'model_priors.overall_score (NULL without calibration outcomes).';
COMMENT ON COLUMN avengers.routing_models.tie_rank IS 'model_priors.tie_rank (the tie-break order; models without calibration outcomes after all others, by name).';
COMMENT ON COLUMN avengers.routing_models.score_sums IS 'cluster_profiles.score_sum + production_weight x production_evidence.delta_sum per cluster (float32; entry cluster + 1).';
COMMENT ON COLUMN avengers.routing_models.ns IS 'cluster_profiles.n + production_weight x production_evidence.delta_n per cluster (entry cluster + 1).';
COMMENT ON COLUMN avengers.routing_models.name IS 'models.name.';
COMMENT ON COLUMN avengers.routing_models.active IS 'models.active (routing skips inactive models).';
COMMENT ON COLUMN avengers.routing_models.endpoint IS 'models.endpoint.';
COMMENT ON COLUMN avengers.routing_models.served_name IS 'models.served_name, else the name.';
COMMENT ON COLUMN avengers.routing_models.api_key_env IS 'models.api_key_env.';
COMMENT ON COLUMN avengers.routing_models.calibrated IS 'Whether the model has calibration outcomes in the clustering (false: it is scored on production evidence alone, so never at production weight 0).';
COMMENT ON COLUMN avengers.routing_models.production_sums IS 'production_evidence.delta_sum per cluster, unweighted (float32, may be negative; entry cluster + 1).';
COMMENT ON COLUMN avengers.routing_models.production_ns IS 'production_evidence.delta_n per cluster, unweighted (entry cluster + 1).';

-- What a cost-aware route reads besides routing_models, per model of it: the prices, the
-- measured means of model_costs and cluster_costs' sums as sparse vectors over clusters (entry
-- cluster + 1; empty for a model without measurements). A relation of its own, so that the plain
-- route's rows stay as narrow as before. Refreshed with routing_models, also by the trigger on
-- avengers.models (prices live there).
CREATE MATERIALIZED VIEW avengers.routing_costs AS
SELECT rm.clustering_id, rm.model_id,
       m.cost_in_per_m AS price_in, m.cost_out_per_m AS price_out,
       mc.tokens_per_char, mc.tokens_out AS mean_tokens_out, mc.cost AS mean_cost,
       c.tokens_out_sums, c.answer_ns, c.cost_sums, c.cost_ns
FROM avengers.routing_models rm
JOIN avengers.routing_state st ON st.clustering_id = rm.clustering_id
JOIN avengers.models m ON m.id = rm.model_id
LEFT JOIN avengers.model_costs mc ON mc.model_id = rm.model_id
CROSS JOIN LATERAL (
  SELECT format('{%s}/%s',
                string_agg((cc.cluster + 1)::text || ':' || cc.tokens_out_sum::text, ',')
                  FILTER (WHERE cc.answers > 0 AND cc.tokens_out_sum >= 1e-30),
                st.clusters)::sparsevec AS tokens_out_sums,
         format('{%s}/%s',
                string_agg((cc.cluster + 1)::text || ':' || cc.answers::text, ',')
                  FILTER (WHERE cc.answers > 0),
                st.clusters)::sparsevec AS answer_ns,
         format('{%s}/%s',
                string_agg((cc.cluster + 1)::text || ':' || cc.cost_sum::text, ',')
                  FILTER (WHERE cc.cost_answers > 0 AND cc.cost_sum >= 1e-30),
                st.clusters)::sparsevec AS cost_sums,
         format('{%s}/%s',
                string_agg((cc.cluster + 1)::text || ':' || cc.cost_answers::text, ',')
                  FILTER (WHERE cc.cost_answers > 0),
                st.clusters)::sparsevec AS cost_ns
  FROM avengers.cluster_costs cc
  WHERE cc.clustering_id = rm.clustering_id AND cc.model_id = rm.model_id
) AS c
WITH DATA;
CREATE UNIQUE INDEX routing_costs_key ON avengers.routing_costs (model_id);
COMMENT ON MATERIALIZED VIEW avengers.routing_costs IS
  'Per model of routing_models: its prices and measured token and cost statistics (model_costs; cluster_costs as sparse vectors over clusters), what a cost-aware route pools; kept current with routing_models.';
COMMENT ON COLUMN avengers.routing_costs.clustering_id IS 'The active clustering version.';
COMMENT ON COLUMN avengers.routing_costs.model_id IS 'Model.';
COMMENT ON COLUMN avengers.routing_costs.price_in IS 'models.cost_in_per_m (price per 1M prompt tokens).';
COMMENT ON COLUMN avengers.routing_costs.price_out IS 'models.cost_out_per_m (price per 1M completion tokens).';
COMMENT ON COLUMN avengers.routing_costs.tokens_per_char IS 'model_costs.tokens_per_char (NULL: not measured).';
COMMENT ON COLUMN avengers.routing_costs.mean_tokens_out IS 'model_costs.tokens_out (NULL: not measured).';
COMMENT ON COLUMN avengers.routing_costs.mean_cost IS 'model_costs.cost (NULL: not measured).';
COMMENT ON COLUMN avengers.routing_costs.tokens_out_sums IS 'cluster_costs.tokens_out_sum per cluster (float32; entry cluster + 1).';
COMMENT ON COLUMN avengers.routing_costs.answer_ns IS 'cluster_costs.answers per cluster (entry cluster + 1).';
COMMENT ON COLUMN avengers.routing_costs.cost_sums IS 'cluster_costs.cost_sum per cluster (float32; entry cluster + 1).';
COMMENT ON COLUMN avengers.routing_costs.cost_ns IS 'cluster_costs.cost_answers per cluster (entry cluster + 1).';
