-- Views analysts read: per-cluster rankings and the paper's model-selection score.

-- Calibration and production side by side: mean_score and n are the calibration outcomes (the
-- ranks order them), production_* the served feedback (production_profiles), pooled_mean what
-- the two make in this cluster at the clustering's production_weight (production_evidence).
CREATE VIEW avengers.cluster_ranks AS
SELECT p.clustering_id, p.cluster, p.rank, p.active_rank, p.model, p.active, p.mean_score, p.n,
       p.wilson_low, p.wilson_high, p.overall_score,
       coalesce(pp.n, 0)                        AS production_n,
       pp.mean_score                            AS production_mean,
       coalesce(pp.decayed_n, 0)                AS production_decayed_n,
       pp.decayed_mean                          AS production_decayed_mean,
       (p.score_sum + k.production_weight * coalesce(e.delta_sum, 0))
         / nullif(p.n + k.production_weight * coalesce(e.delta_n, 0), 0) AS pooled_mean
FROM avengers.cluster_profiles p
JOIN avengers.active_clustering k ON k.id = p.clustering_id
LEFT JOIN avengers.production_profiles pp ON pp.cluster = p.cluster AND pp.model_id = p.model_id
LEFT JOIN avengers.production_evidence e ON e.cluster = p.cluster AND e.model_id = p.model_id;
COMMENT ON VIEW avengers.cluster_ranks IS
  'Models ranked per cluster of the active clustering (rank among all models, active_rank among active ones, both by calibration mean), with the production outcomes beside them and the two pooled.';
CALL avengers.comment_columns('avengers.cluster_ranks', $$
mean_score: Calibration: mean outcome on the cluster's calibration queries.
n: Calibration: outcomes behind mean_score.
production_n: Production: feedback rows counted in the cluster (served at the last refresh).
production_mean: Production: their mean score, undecayed (NULL: none).
production_decayed_n: Production: their effective count after decay.
production_decayed_mean: Production: their decayed mean (recent rows weigh more).
pooled_mean: (calibration sum + production_weight x production_evidence.delta_sum) / (calibration n + production_weight x production_evidence.delta_n): the cluster's evidence as routing pools it.
$$);

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
LEFT JOIN avengers.cluster_profiles p
  ON p.model_id = m.id AND p.clustering_id = (SELECT a.id FROM avengers.active_clustering a)
GROUP BY m.id, m.name, m.active;
COMMENT ON VIEW avengers.model_selection_scores IS
  'Model-set selection score s(m) = sum over clusters of 1/rank (paper); keep the top N by selection_rank.';

-- The paper's s(m) with prices: among the models whose prices (in and out, per 1M tokens) are
-- both at most max_price, ranks recomputed as if the others were not there. A model without
-- any price is left out (its cost is unknown); a missing one of the two counts as 0.
CREATE FUNCTION avengers.priced_selection_scores(max_price double precision)
RETURNS TABLE (
  model_id integer, model text, active boolean, price_in double precision,
  price_out double precision, selection_score double precision, clusters_won integer,
  clusters_ranked integer, overall_score double precision, selection_rank integer)
LANGUAGE sql STABLE
BEGIN ATOMIC
  WITH affordable AS (
    SELECT m.id, m.name, m.active, m.cost_in_per_m, m.cost_out_per_m
    FROM avengers.models m
    WHERE greatest(m.cost_in_per_m, m.cost_out_per_m) <= max_price
  ),
  ranks AS (
    SELECT p.model_id, p.overall_score, p.tie_rank,
           row_number() OVER (PARTITION BY p.cluster ORDER BY p.mean_score DESC, p.tie_rank)
             AS rank
    FROM avengers.cluster_profiles p
    JOIN affordable a ON a.id = p.model_id
    WHERE p.clustering_id = (SELECT k.id FROM avengers.active_clustering k)
  )
  SELECT a.id, a.name, a.active, a.cost_in_per_m, a.cost_out_per_m,
         coalesce(sum(1.0 / r.rank), 0)::double precision,
         (count(r.rank) FILTER (WHERE r.rank = 1))::integer,
         count(r.rank)::integer,
         max(r.overall_score),
         (row_number() OVER (ORDER BY coalesce(sum(1.0 / r.rank), 0) DESC, min(r.tie_rank),
                                      a.name))::integer
  FROM affordable a
  LEFT JOIN ranks r ON r.model_id = a.id
  GROUP BY a.id, a.name, a.active, a.cost_in_per_m, a.cost_out_per_m
  ORDER BY 10;
END;
COMMENT ON FUNCTION avengers.priced_selection_scores(double precision) IS
  'model_selection_scores among the models priced at most max_price per 1M tokens (input and output): s(m) = sum over clusters of 1/rank, ranks among those models only. SELECT * FROM avengers.priced_selection_scores(0.2).';
