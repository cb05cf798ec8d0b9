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

-- What avengers.route reads per neighbour, in one row per cluster: over a fixed model order
-- (model_priors' models by id), the outcome sums and counts of cluster_profiles (0 where a model
-- has no outcome in the cluster, which adds nothing to a pooled sum): one probe per neighbour
-- instead of one per (neighbour, model) row. The centroid stays in avengers.centroids (route
-- scans it there): copied here, a 384-d row would sit near Postgres' 2 kB TOAST threshold.
-- Built from cluster_profiles and model_priors, so refreshed after them.
CREATE MATERIALIZED VIEW avengers.cluster_scores AS
SELECT c.clustering_id, c.cluster, s.model_ids, s.score_sums, s.ns
FROM avengers.centroids c
JOIN avengers.clusterings k ON k.id = c.clustering_id AND k.status = 'active'
CROSS JOIN LATERAL (
  SELECT array_agg(mp.model_id ORDER BY mp.model_id) AS model_ids,
         array_agg(coalesce(cp.score_sum, 0)::double precision ORDER BY mp.model_id) AS score_sums,
         array_agg(coalesce(cp.n, 0)::double precision ORDER BY mp.model_id) AS ns
  FROM avengers.model_priors mp
  LEFT JOIN avengers.cluster_profiles cp
    ON cp.clustering_id = mp.clustering_id AND cp.cluster = c.cluster
       AND cp.model_id = mp.model_id
  WHERE mp.clustering_id = c.clustering_id
) AS s
WITH DATA;
CREATE UNIQUE INDEX cluster_scores_key ON avengers.cluster_scores (cluster);
COMMENT ON MATERIALIZED VIEW avengers.cluster_scores IS
  'Per cluster of the active clustering, over model_priors'' models in id order: the outcome sums and counts of cluster_profiles (0 without outcomes), the rows avengers.route pools.';
COMMENT ON COLUMN avengers.cluster_scores.clustering_id IS 'The active clustering version.';
COMMENT ON COLUMN avengers.cluster_scores.cluster IS 'Cluster index.';
COMMENT ON COLUMN avengers.cluster_scores.model_ids IS 'Models of model_priors, ascending id: the order of the two arrays below (the same in every row).';
COMMENT ON COLUMN avengers.cluster_scores.score_sums IS 'cluster_profiles.score_sum of each model in the cluster (0 without outcomes).';
COMMENT ON COLUMN avengers.cluster_scores.ns IS 'cluster_profiles.n of each model in the cluster (0 without outcomes).';
