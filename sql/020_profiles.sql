-- Capability profiles: how well each model does on the calibration queries of each cluster.

-- Every clustering version, computed on read (analysts comparing versions; not on the hot path).
CREATE VIEW avengers.cluster_profile_stats AS
SELECT a.clustering_id,
       a.cluster,
       o.model_id,
       count(*)::integer   AS n,
       avg(o.score)        AS mean_score,
       sum(o.score)        AS score_sum
FROM avengers.assignments a
JOIN avengers.outcomes o ON o.query_id = a.query_id
GROUP BY a.clustering_id, a.cluster, o.model_id;
COMMENT ON VIEW avengers.cluster_profile_stats IS
  'Per clustering version, cluster and model: number of scored calibration queries and mean score. Computed on read; the served copy is cluster_profiles.';

-- Wilson score interval at 95% for a mean of n outcomes in [0,1].
CREATE FUNCTION avengers.wilson_bound(mean double precision, n integer, upper boolean)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN n IS NULL OR n <= 0 THEN NULL ELSE
  greatest(0.0, least(1.0,
    (mean + 1.96^2 / (2 * n)
       + (CASE WHEN upper THEN 1 ELSE -1 END)
         * 1.96 * sqrt(greatest(mean * (1 - mean), 0) / n + 1.96^2 / (4.0 * n * n)))
    / (1 + 1.96^2 / n)))
END;
COMMENT ON FUNCTION avengers.wilson_bound(double precision, integer, boolean) IS
  'Wilson 95% score interval bound (upper => true) for a mean of n outcomes in [0,1].';

-- The served profiles: the active clustering only, with ranks precomputed so routing is a lookup.
-- rank: among all models (model selection); active_rank: among active models (routing).
-- tie_rank is the store's one tie-break order (overall calibration score, then name): every
-- ranking here and in the routing functions orders by its own score, then by tie_rank.
CREATE MATERIALIZED VIEW avengers.cluster_profiles AS
WITH stats AS (
  SELECT s.*
  FROM avengers.cluster_profile_stats s
  JOIN avengers.routed_clusterings k ON k.id = s.clustering_id
),
overall AS (
  SELECT o.clustering_id, o.model_id, o.overall_score, o.overall_n,
         row_number() OVER (PARTITION BY o.clustering_id
                            ORDER BY o.overall_score DESC, m.name)::integer AS tie_rank
  FROM (SELECT clustering_id, model_id, sum(score_sum) / sum(n) AS overall_score,
               sum(n)::integer AS overall_n
        FROM stats GROUP BY clustering_id, model_id) AS o
  JOIN avengers.models m ON m.id = o.model_id
)
SELECT s.clustering_id,
       s.cluster,
       c.size                                         AS cluster_size,
       s.model_id,
       m.name                                         AS model,
       m.active,
       s.n,
       s.mean_score,
       s.score_sum,
       avengers.wilson_bound(s.mean_score, s.n, false) AS wilson_low,
       avengers.wilson_bound(s.mean_score, s.n, true)  AS wilson_high,
       o.overall_score,
       o.overall_n,
       o.tie_rank,
       row_number() OVER (PARTITION BY s.clustering_id, s.cluster
                          ORDER BY s.mean_score DESC, o.tie_rank)::integer
                                                      AS rank,
       CASE WHEN m.active THEN
         row_number() OVER (PARTITION BY s.clustering_id, s.cluster, m.active
                            ORDER BY s.mean_score DESC, o.tie_rank)::integer
       END                                            AS active_rank
FROM stats s
JOIN avengers.models m    ON m.id = s.model_id
JOIN overall o            ON o.clustering_id = s.clustering_id AND o.model_id = s.model_id
JOIN avengers.centroids c ON c.clustering_id = s.clustering_id AND c.cluster = s.cluster
WITH DATA;

CREATE UNIQUE INDEX cluster_profiles_key ON avengers.cluster_profiles (clustering_id, cluster, model_id);
CREATE INDEX cluster_profiles_route_idx ON avengers.cluster_profiles (clustering_id, cluster, active_rank)
  WHERE active_rank IS NOT NULL;

COMMENT ON MATERIALIZED VIEW avengers.cluster_profiles IS
  'Capability profiles served for routing: routed clustering (the active one, and those stored policies name) x cluster x model. Refreshed (CONCURRENTLY) after outcome imports, model changes and clustering switches: CALL avengers.refresh_profiles().';
CALL avengers.comment_columns('avengers.cluster_profiles', $$
clustering_id: The clustering version (avengers.routed_clusterings: the active one unless a stored policy names another).
cluster: Cluster index.
cluster_size: Calibration queries in the cluster.
model_id: Model id.
model: Model name.
active: Whether the model was active at the last refresh.
n: Calibration queries of the cluster with an outcome for the model.
mean_score: Mean outcome of the model on them: the capability profile entry.
score_sum: Sum of those outcomes (routing pools the sums of the nearest clusters; score_sum / n = mean_score exactly).
wilson_low: Lower Wilson 95% bound of mean_score.
wilson_high: Upper Wilson 95% bound of mean_score.
overall_score: Mean outcome of the model over all clustered calibration queries (tie-breaker).
overall_n: Number of outcomes behind overall_score.
tie_rank: Place of the model in the tie-break order (overall_score descending, then name); rankings order by their score, then tie_rank.
rank: Rank of the model in the cluster among all models (1 = best).
active_rank: Rank among active models; NULL for inactive ones. Routing takes active_rank <= top_n.
$$);

-- The profile aggregates the soft routing rule needs besides cluster_profiles, for the active
-- clustering only: each model's dataset-balanced calibration mean (the prior scores are shrunk
-- toward), and the dataset make-up of every cluster with each model's mean per dataset (the
-- dataset-mixture prior). All are small (clusters x datasets, datasets x models, models) and
-- refreshed with cluster_profiles by avengers.refresh_profiles() and
-- avengers.activate_clustering(), in one transaction, so routing reads one consistent set.
-- "Calibration" here always means the clustered queries: the active clustering's assignments.
CREATE MATERIALIZED VIEW avengers.dataset_profiles AS
SELECT a.clustering_id,
       q.dataset_id,
       o.model_id,
       count(*)::integer AS n,
       avg(o.score)      AS mean_score
FROM avengers.assignments a
JOIN avengers.routed_clusterings k ON k.id = a.clustering_id
JOIN avengers.queries q     ON q.id = a.query_id
JOIN avengers.outcomes o    ON o.query_id = a.query_id
GROUP BY a.clustering_id, q.dataset_id, o.model_id
WITH DATA;
CREATE UNIQUE INDEX dataset_profiles_key ON avengers.dataset_profiles (clustering_id, dataset_id, model_id);
COMMENT ON MATERIALIZED VIEW avengers.dataset_profiles IS
  'Mean outcome of each model on the clustered calibration queries of each dataset (active clustering).';
CALL avengers.comment_columns('avengers.dataset_profiles', $$
clustering_id: The active clustering version.
dataset_id: Dataset.
model_id: Model.
n: Clustered calibration queries of the dataset with an outcome for the model.
mean_score: Mean outcome of the model on them.
$$);

CREATE MATERIALIZED VIEW avengers.cluster_datasets AS
SELECT a.clustering_id, a.cluster, q.dataset_id, count(*)::integer AS n
FROM avengers.assignments a
JOIN avengers.routed_clusterings k ON k.id = a.clustering_id
JOIN avengers.queries q     ON q.id = a.query_id
GROUP BY a.clustering_id, a.cluster, q.dataset_id
WITH DATA;
CREATE UNIQUE INDEX cluster_datasets_key ON avengers.cluster_datasets (clustering_id, cluster, dataset_id);
COMMENT ON MATERIALIZED VIEW avengers.cluster_datasets IS
  'Dataset make-up of each cluster of the active clustering: calibration queries of each dataset in it.';
CALL avengers.comment_columns('avengers.cluster_datasets', $$
clustering_id: The active clustering version.
cluster: Cluster index.
dataset_id: Dataset.
n: Calibration queries of the dataset assigned to the cluster.
$$);

-- Built from the two views above, so avengers.refresh_profiles() refreshes it after them.
CREATE MATERIALIZED VIEW avengers.model_priors AS
WITH overall AS (
  SELECT DISTINCT p.clustering_id, p.model_id, p.overall_score, p.overall_n, p.tie_rank
  FROM avengers.cluster_profiles p
)
SELECT o.clustering_id,
       o.model_id,
       avg(d.mean_score)        AS prior_score,
       count(d.dataset_id)::integer AS datasets,
       o.overall_score,
       o.overall_n,
       o.tie_rank
FROM overall o
JOIN avengers.dataset_profiles d ON d.model_id = o.model_id AND d.clustering_id = o.clustering_id
GROUP BY o.clustering_id, o.model_id, o.overall_score, o.overall_n, o.tie_rank
WITH DATA;
CREATE UNIQUE INDEX model_priors_key ON avengers.model_priors (clustering_id, model_id);
COMMENT ON MATERIALIZED VIEW avengers.model_priors IS
  'Per model, over the clustered calibration queries of the active clustering: the dataset-balanced mean outcome (the prior routing shrinks cluster scores toward) and the query-weighted overall score (the tie-breaker).';
CALL avengers.comment_columns('avengers.model_priors', $$
clustering_id: The active clustering version.
model_id: Model.
prior_score: Mean over calibration datasets of the model's mean outcome on the dataset (each dataset counts once, whatever its size).
datasets: Calibration datasets with an outcome for the model.
overall_score: Mean outcome over all clustered calibration queries (= cluster_profiles.overall_score).
overall_n: Number of outcomes behind overall_score.
tie_rank: cluster_profiles.tie_rank (the tie-break order).
$$);
