-- What the soft routing rule (sql/030_routing.sql) needs besides cluster_profiles, for the active
-- clustering only: the scale of the clustering, each model's dataset-balanced calibration mean
-- (the prior scores are shrunk toward), and the dataset make-up of every cluster with each
-- model's mean per dataset (the dataset-mixture prior). All are small (clusters x datasets,
-- datasets x models, models) and refreshed with cluster_profiles by avengers.refresh_profiles()
-- and avengers.activate_clustering(), in one transaction, so routing reads one consistent set.
-- "Calibration" here always means the clustered queries: the active clustering's assignments.

CREATE MATERIALIZED VIEW avengers.clustering_scale AS
SELECT a.clustering_id,
       (percentile_cont(0.5) WITHIN GROUP (ORDER BY a.distance::double precision ^ 2))
         ::double precision AS rho,
       count(*)::integer AS n
FROM avengers.assignments a
JOIN avengers.clusterings k ON k.id = a.clustering_id AND k.status = 'active'
WHERE a.distance IS NOT NULL
GROUP BY a.clustering_id
WITH DATA;
CREATE UNIQUE INDEX clustering_scale_key ON avengers.clustering_scale (clustering_id);
COMMENT ON MATERIALIZED VIEW avengers.clustering_scale IS
  'Scale of the active clustering: rho = median squared Euclidean distance of its calibration queries to their own centroid. Routing weighs the nearest centroids by exp(-(d_j^2 - d_1^2) / (temperature * rho)), so the temperature does not depend on the embedder.';
COMMENT ON COLUMN avengers.clustering_scale.clustering_id IS 'The active clustering version.';
COMMENT ON COLUMN avengers.clustering_scale.rho IS 'Median of assignments.distance^2 (0 when every query sits on its centroid: routing then weighs only the nearest centroids).';
COMMENT ON COLUMN avengers.clustering_scale.n IS 'Assignments behind the median.';

CREATE MATERIALIZED VIEW avengers.dataset_profiles AS
SELECT a.clustering_id,
       q.dataset_id,
       o.model_id,
       count(*)::integer AS n,
       avg(o.score)      AS mean_score
FROM avengers.assignments a
JOIN avengers.clusterings k ON k.id = a.clustering_id AND k.status = 'active'
JOIN avengers.queries q     ON q.id = a.query_id
JOIN avengers.outcomes o    ON o.query_id = a.query_id
GROUP BY a.clustering_id, q.dataset_id, o.model_id
WITH DATA;
CREATE UNIQUE INDEX dataset_profiles_key ON avengers.dataset_profiles (dataset_id, model_id);
COMMENT ON MATERIALIZED VIEW avengers.dataset_profiles IS
  'Mean outcome of each model on the clustered calibration queries of each dataset (active clustering).';
COMMENT ON COLUMN avengers.dataset_profiles.clustering_id IS 'The active clustering version.';
COMMENT ON COLUMN avengers.dataset_profiles.dataset_id IS 'Dataset.';
COMMENT ON COLUMN avengers.dataset_profiles.model_id IS 'Model.';
COMMENT ON COLUMN avengers.dataset_profiles.n IS 'Clustered calibration queries of the dataset with an outcome for the model.';
COMMENT ON COLUMN avengers.dataset_profiles.mean_score IS 'Mean outcome of the model on them.';

CREATE MATERIALIZED VIEW avengers.cluster_datasets AS
SELECT a.clustering_id, a.cluster, q.dataset_id, count(*)::integer AS n
FROM avengers.assignments a
JOIN avengers.clusterings k ON k.id = a.clustering_id AND k.status = 'active'
JOIN avengers.queries q     ON q.id = a.query_id
GROUP BY a.clustering_id, a.cluster, q.dataset_id
WITH DATA;
CREATE UNIQUE INDEX cluster_datasets_key ON avengers.cluster_datasets (cluster, dataset_id);
COMMENT ON MATERIALIZED VIEW avengers.cluster_datasets IS
  'Dataset make-up of each cluster of the active clustering: calibration queries of each dataset in it.';
COMMENT ON COLUMN avengers.cluster_datasets.clustering_id IS 'The active clustering version.';
COMMENT ON COLUMN avengers.cluster_datasets.cluster IS 'Cluster index.';
COMMENT ON COLUMN avengers.cluster_datasets.dataset_id IS 'Dataset.';
COMMENT ON COLUMN avengers.cluster_datasets.n IS 'Calibration queries of the dataset assigned to the cluster.';

-- Built from the two views above, so avengers.refresh_profiles() refreshes it after them.
CREATE MATERIALIZED VIEW avengers.model_priors AS
WITH overall AS (
  SELECT DISTINCT p.clustering_id, p.model_id, p.overall_score, p.overall_n
  FROM avengers.cluster_profiles p
)
SELECT o.clustering_id,
       o.model_id,
       avg(d.mean_score)        AS prior_score,
       count(d.dataset_id)::integer AS datasets,
       o.overall_score,
       o.overall_n
FROM overall o
JOIN avengers.dataset_profiles d ON d.model_id = o.model_id AND d.clustering_id = o.clustering_id
GROUP BY o.clustering_id, o.model_id, o.overall_score, o.overall_n
WITH DATA;
CREATE UNIQUE INDEX model_priors_key ON avengers.model_priors (model_id);
COMMENT ON MATERIALIZED VIEW avengers.model_priors IS
  'Per model, over the clustered calibration queries of the active clustering: the dataset-balanced mean outcome (the prior routing shrinks cluster scores toward) and the query-weighted overall score (the tie-breaker).';
COMMENT ON COLUMN avengers.model_priors.clustering_id IS 'The active clustering version.';
COMMENT ON COLUMN avengers.model_priors.model_id IS 'Model.';
COMMENT ON COLUMN avengers.model_priors.prior_score IS 'Mean over calibration datasets of the model''s mean outcome on the dataset (each dataset counts once, whatever its size).';
COMMENT ON COLUMN avengers.model_priors.datasets IS 'Calibration datasets with an outcome for the model.';
COMMENT ON COLUMN avengers.model_priors.overall_score IS 'Mean outcome over all clustered calibration queries (= cluster_profiles.overall_score).';
COMMENT ON COLUMN avengers.model_priors.overall_n IS 'Number of outcomes behind overall_score.';

-- What avengers.route and avengers.route_many read on every call (sql/030_routing.sql), shaped
-- so that a route is one scan of k centroids plus one pass over the models, with no per-(cluster,
-- model) rows: the pooled sums over a query's neighbours are inner products, computed by pgvector
-- in C, of a per-query weight vector over clusters with each model's per-cluster outcome sums and
-- counts stored as sparse vectors (index = cluster + 1). pgvector works in float32, so pooled
-- scores carry ~1e-7 relative rounding; the counts and sums of 0/1 outcomes are exact integers.
-- A sparsevec holds at most 16,000 non-zero entries, so routing_models is built only for
-- clusterings of at most 16,000 clusters; larger ones (and the HNSW-indexed ones, built from
-- k = 16,384) are routed by avengers.route_many_general.

-- One row, the active clustering: what a route checks and scales by.
CREATE MATERIALIZED VIEW avengers.routing_state AS
SELECT k.id AS clustering_id,
       s.dimension,
       x.clusters,
       sc.rho,
       x.indexed,
       coalesce(x.clusters <= 16000, false) AND NOT x.indexed AS pooled
FROM avengers.clusterings k
JOIN avengers.embedding_spaces s ON s.id = k.space_id
LEFT JOIN avengers.clustering_scale sc ON sc.clustering_id = k.id
CROSS JOIN LATERAL (
  SELECT (SELECT max(c.cluster) + 1 FROM avengers.centroids c WHERE c.clustering_id = k.id)
           AS clusters,
         to_regclass('avengers.centroids_hnsw_' || k.id) IS NOT NULL AS indexed
) AS x
WHERE k.status = 'active'
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

-- The active clustering's centroids with the sparse-vector key of each cluster, scanned once per
-- routed query (a copy, so the scan reads no other version's rows and formats no integers).
CREATE MATERIALIZED VIEW avengers.routing_centroids AS
SELECT c.clustering_id, c.cluster, c.centroid, (c.cluster + 1)::text || ':' AS weight_key
FROM avengers.centroids c
JOIN avengers.clusterings k ON k.id = c.clustering_id AND k.status = 'active'
WITH DATA;
CREATE UNIQUE INDEX routing_centroids_key ON avengers.routing_centroids (cluster);
COMMENT ON MATERIALIZED VIEW avengers.routing_centroids IS
  'Centroids of the active clustering, as routing scans them.';
COMMENT ON COLUMN avengers.routing_centroids.clustering_id IS 'The active clustering version.';
COMMENT ON COLUMN avengers.routing_centroids.cluster IS 'Cluster index.';
COMMENT ON COLUMN avengers.routing_centroids.centroid IS 'The centroid (avengers.centroids.centroid).';
COMMENT ON COLUMN avengers.routing_centroids.weight_key IS '''<cluster + 1>:'', the cluster''s entry key in a sparsevec literal.';

-- Per model of model_priors: its outcome sums and counts in every cluster as sparse vectors
-- (zero entries, clusters without outcomes, are not stored and add nothing to a pooled sum).
-- Sums below 1e-30 are left out too: float32 cannot hold them and they add nothing visible.
-- The model's row of avengers.models is copied in, so a route reads one relation for its
-- candidates (a join to models cost ≈ 13 µs of a ≈ 250 µs route); a statement trigger on
-- avengers.models (sql/040_clusterings.sql) refreshes this view in the same transaction as any
-- change there, so routing never sees an outdated flag or endpoint.
-- Built from cluster_profiles, model_priors and routing_state, so refreshed after them.
CREATE MATERIALIZED VIEW avengers.routing_models AS
SELECT mp.clustering_id, mp.model_id, mp.prior_score, mp.overall_score, v.score_sums, v.ns,
       m.name, m.active, m.endpoint, coalesce(m.served_name, m.name) AS served_name,
       m.api_key_env
FROM avengers.model_priors mp
JOIN avengers.routing_state st ON st.clustering_id = mp.clustering_id AND st.pooled
JOIN avengers.models m ON m.id = mp.model_id
CROSS JOIN LATERAL (
  SELECT format('{%s}/%s',
                string_agg((cp.cluster + 1)::text || ':' || cp.score_sum::text, ',')
                  FILTER (WHERE cp.score_sum >= 1e-30),
                st.clusters)::sparsevec AS score_sums,
         format('{%s}/%s',
                string_agg((cp.cluster + 1)::text || ':' || cp.n::text, ',') FILTER (WHERE cp.n > 0),
                st.clusters)::sparsevec AS ns
  FROM avengers.cluster_profiles cp
  WHERE cp.clustering_id = mp.clustering_id AND cp.model_id = mp.model_id
) AS v
WITH DATA;
CREATE UNIQUE INDEX routing_models_key ON avengers.routing_models (model_id);
COMMENT ON MATERIALIZED VIEW avengers.routing_models IS
  'Per model of the active clustering (when routing_state.pooled): the prior and tie-break scores of model_priors, as sparse vectors over clusters (entry cluster + 1) the outcome sums and counts of cluster_profiles (what route / route_many pool with one inner product each), and the model''s row of avengers.models, kept current by a trigger on that table.';
COMMENT ON COLUMN avengers.routing_models.clustering_id IS 'The active clustering version.';
COMMENT ON COLUMN avengers.routing_models.model_id IS 'Model.';
COMMENT ON COLUMN avengers.routing_models.prior_score IS 'model_priors.prior_score.';
COMMENT ON COLUMN avengers.routing_models.overall_score IS 'model_priors.overall_score (the tie-breaker).';
COMMENT ON COLUMN avengers.routing_models.score_sums IS 'cluster_profiles.score_sum per cluster (float32; entry cluster + 1).';
COMMENT ON COLUMN avengers.routing_models.ns IS 'cluster_profiles.n per cluster (entry cluster + 1).';
COMMENT ON COLUMN avengers.routing_models.name IS 'models.name.';
COMMENT ON COLUMN avengers.routing_models.active IS 'models.active (routing skips inactive models).';
COMMENT ON COLUMN avengers.routing_models.endpoint IS 'models.endpoint.';
COMMENT ON COLUMN avengers.routing_models.served_name IS 'models.served_name, else the name.';
COMMENT ON COLUMN avengers.routing_models.api_key_env IS 'models.api_key_env.';
