-- name: calibration_vectors
SELECT q.id, e.embedding, d.name
FROM avengers.queries q
JOIN avengers.datasets d ON d.id = q.dataset_id AND NOT d.is_ood
JOIN avengers.query_embeddings e ON e.query_id = q.id AND e.space_id = %s
WHERE q.split = 'calibration'
ORDER BY q.id

-- name: stratify_counts
SELECT count(*) AS n,
       count(*) FILTER (WHERE NOT EXISTS (
           SELECT 1 FROM avengers.query_embeddings e
           WHERE e.query_id = q.id AND e.space_id = %(s)s)) AS missing,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM avengers.outcomes o WHERE o.query_id = q.id)) AS scored
FROM avengers.queries q
JOIN avengers.datasets d ON d.id = q.dataset_id AND NOT d.is_ood
WHERE q.split = 'calibration'

-- name: selection_scores
SELECT s.model, s.active, s.selection_score, s.clusters_won,
       s.clusters_ranked, s.overall_score, s.selection_rank,
       m.cost_in_per_m, m.cost_out_per_m
FROM avengers.model_selection_scores s
JOIN avengers.models m ON m.id = s.model_id
ORDER BY s.selection_rank

-- name: unembedded_queries
SELECT q.id, q.text FROM avengers.queries q
WHERE q.id > %s AND NOT EXISTS (
    SELECT 1 FROM avengers.query_embeddings e
    WHERE e.space_id = %s AND e.query_id = q.id)
ORDER BY q.id LIMIT %s

-- name: file_queries
SELECT q.id, (q.metadata->>'source_row')::bigint
FROM avengers.queries q
WHERE q.metadata->>'source_file' = %s
  AND NOT EXISTS (SELECT 1 FROM avengers.query_embeddings e
                  WHERE e.space_id = %s AND e.query_id = q.id)
ORDER BY q.id

-- name: prune_versions
DELETE FROM avengers.clusterings
WHERE id IN (SELECT id FROM avengers.clusterings
             WHERE status <> 'active' AND id <> ALL(%s)
             ORDER BY id DESC OFFSET %s)
RETURNING id

-- name: copy_loop_settings
UPDATE avengers.clusterings k
SET production_weight = a.production_weight, half_life = a.half_life,
    exploration = a.exploration, exploration_share = a.exploration_share,
    ood_quantile = a.ood_quantile, change_threshold = a.change_threshold,
    exploration_overlap = a.exploration_overlap
FROM avengers.active_clustering a
WHERE k.id = %s

-- name: serving_space
-- The space of the active clustering, as embedding_spaces' Space rows (id, embedder, dimension,
-- active, params, created_at).
SELECT s.id, s.embedder, s.dimension, s.active, s.params, s.created_at
FROM avengers.active_clustering k JOIN avengers.embedding_spaces s ON s.id = k.space_id

-- name: profile_entries
-- ProfileEntry rows: the profile of each cluster and model with its production columns, for one
-- cluster or model or all.
SELECT p.clustering_id, p.cluster, p.cluster_size, p.model, p.active, p.n, p.mean_score,
       p.wilson_low, p.wilson_high, p.rank, p.active_rank, p.overall_score, r.production_n,
       r.production_mean, r.production_decayed_n, r.pooled_mean
FROM avengers.cluster_profiles p
JOIN avengers.cluster_ranks r ON r.cluster = p.cluster AND r.model = p.model
WHERE p.clustering_id = r.clustering_id
  AND (%(cluster)s::integer IS NULL OR p.cluster = %(cluster)s)
  AND (%(model)s::text IS NULL OR p.model = %(model)s)
ORDER BY p.cluster, p.rank
