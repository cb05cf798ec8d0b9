-- Views analysts read: per-cluster rankings and the paper's model-selection score.

CREATE VIEW avengers.cluster_ranks AS
SELECT clustering_id, cluster, rank, active_rank, model, active, mean_score, n,
       wilson_low, wilson_high, overall_score
FROM avengers.cluster_profiles;
COMMENT ON VIEW avengers.cluster_ranks IS
  'Models ranked per cluster of the active clustering (rank among all models, active_rank among active ones).';

-- s(m) = sum over clusters of 1 / rank_m(c). Ties: tie_rank; models without profiles last, by name.
CREATE VIEW avengers.model_selection_scores AS
SELECT m.id                                         AS model_id,
       m.name                                       AS model,
       m.active,
       coalesce(sum(1.0 / p.rank), 0)::double precision AS selection_score,
       count(p.rank) FILTER (WHERE p.rank = 1)::integer AS clusters_won,
       count(p.rank)::integer                       AS clusters_ranked,
       max(p.overall_score)                         AS overall_score,
       row_number() OVER (ORDER BY coalesce(sum(1.0 / p.rank), 0) DESC,
                                   min(p.tie_rank), m.name)::integer AS selection_rank
FROM avengers.models m
LEFT JOIN avengers.cluster_profiles p ON p.model_id = m.id
GROUP BY m.id, m.name, m.active;
COMMENT ON VIEW avengers.model_selection_scores IS
  'Model-set selection score s(m) = sum over clusters of 1/rank (paper); keep the top N by selection_rank.';
