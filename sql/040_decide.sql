-- The routing decision, in one place: avengers.decide (one query vector) and avengers.decide_many
-- (many, one snapshot) take a query and one routing policy and return the whole decision —
-- ranked candidates with their scores, evidence, costs and the probability each had of going
-- first, and the query's nearest cluster, novelty and what was applied to it. Every rule is
-- applied here and composes with every other: an out-of-distribution substitution is ranked and
-- priced under the same trade-off and ceiling, exploration and a session's pinned model choose
-- only among the candidates that fit the ceiling.
--
-- The rule, for a query q (L2-normalised: u) and a model m of the policy's clustering:
--   neighbours: the L nearest centroids c_1..c_L by Euclidean distance of u (the rule K-means
--     assigned the calibration queries with; ties go to the lower cluster, as numpy's argmin),
--     distances d_1 <= ... <= d_L, weights w_j = exp(-(d_j^2 - d_1^2) / (temperature * rho))
--     (rho: avengers.clustering_scale; only d_1 counts when temperature or rho is 0);
--   score(m) = (sum_j w_j (S[c_j,m] + lambda P[c_j,m]) + shrinkage * prior[m])
--            / (sum_j w_j (n[c_j,m] + lambda N[c_j,m]) + shrinkage)
--     with S, n the calibration outcome sum and count of m in a cluster (cluster_profiles), P, N
--     its decayed production sum and count (production_profiles), lambda the production weight
--     (0: calibration only, the static router exactly) and prior[m] its dataset-balanced
--     calibration mean (model_priors). evidence(m) is the denominator. L = 1, shrinkage = 0 is
--     the paper's nearest-cluster rule.
--   out of distribution (novelty > 1) under the best-overall policy: score(m) = prior[m], the
--     nearest clusters saying little about a query far from all of them.
--   cost (only when a trade-off or a ceiling is asked): the expected cost of the request
--     (avengers.expected_cost, sql/025_costs.sql; measured tokens and costs pooled over the same
--     neighbours with the same weights and shrinkage), and with alpha = coalesce(tradeoff, 1)
--     utility(m) = alpha * normalised score + (1 - alpha) * (1 - normalised cost) over the
--     query's candidates (a candidate without a cost counts as the most expensive).
--   ranking: among the candidates that fit max_cost (all when none is asked), by utility (by
--     score when alpha = 1), then score, then tie_rank (overall calibration score, then name);
--     when none fits, the cheapest alone, flagged over_budget.
--   first place: a pinned model (a conversation's) when it is among the ranked candidates; else
--     exploration's choice among them: epsilon, with probability share, a uniformly drawn one;
--     thompson, the one with the highest draw from its posterior (a normal approximation of
--     Beta(1 + score * evidence, 1 + (1 - score) * evidence)). The others follow in the plain
--     order. Draws come from the seed (hashed with the model id), so a decision is reproducible
--     from its seed. propensity is the probability the candidate had of going first (1 and 0
--     without exploration; NULL under thompson, which has no closed form).
--
-- Scoring reads routing_models: each model's per-cluster sums as sparse vectors, pooled with one
-- inner product each against the query's neighbour weights (pgvector, float32: scores carry
-- ~1e-7 relative rounding). A clustering with more clusters than a sparse vector holds (16,000)
-- is scored from routing_entries, one row per neighbour and model. Neighbours are found by an
-- exact scan of the clustering's centroids (numpy's argmin to the last tie).
--
-- Consistency: every function here is STABLE, so the reads of one statement (the active
-- clustering, its centroids, profiles and models) use one snapshot; a clustering switch commits
-- in one transaction and a statement sees it entirely or not at all.
--
-- Speed: decide is plain SQL without SET clauses, so the planner inlines it (and what it calls)
-- into the calling statement, which a client prepares once; decide_many runs the same body once
-- per query (LATERAL), so both forms are one text.

-- A routing policy: everything a decision depends on besides the query. NULL fields take the
-- defaults of avengers.policy(); exploration, exploration_share and production_weight NULL take
-- the clustering's settings (avengers.clusterings), clustering_id NULL the active clustering.
CREATE TYPE avengers.routing_policy AS (
  clustering_id integer,
  neighbours integer,
  temperature double precision,
  shrinkage double precision,
  top_n integer,
  require_endpoint boolean,
  models text[],
  tradeoff double precision,
  max_cost double precision,
  completions integer,
  ood_policy text,
  exploration text,
  exploration_share double precision,
  production_weight double precision
);
COMMENT ON TYPE avengers.routing_policy IS
  'What avengers.decide routes by besides the query: the clustering, the scoring method, how many candidates, the candidate filter, the quality-cost trade-off and ceiling, the out-of-distribution policy, exploration and the production weight. Build one with avengers.policy(...).';
COMMENT ON COLUMN avengers.routing_policy.clustering_id IS 'Clustering version to route with (NULL: the active one).';
COMMENT ON COLUMN avengers.routing_policy.neighbours IS 'Nearest centroids pooled (L >= 1; default 16).';
COMMENT ON COLUMN avengers.routing_policy.temperature IS 'Weight decay over the neighbours, in units of the clustering''s median squared distance (>= 0; default 0.1).';
COMMENT ON COLUMN avengers.routing_policy.shrinkage IS 'Pseudo-outcomes of the model''s calibration prior added to every score (>= 0; default 1).';
COMMENT ON COLUMN avengers.routing_policy.top_n IS 'Candidates returned (>= 1; default 1).';
COMMENT ON COLUMN avengers.routing_policy.require_endpoint IS 'Only models with an endpoint (default false).';
COMMENT ON COLUMN avengers.routing_policy.models IS 'Only these models (names; NULL: every active model).';
COMMENT ON COLUMN avengers.routing_policy.tradeoff IS 'alpha in [0, 1]: 1 ranks by expected quality, 0 by expected cost (NULL: no trade-off).';
COMMENT ON COLUMN avengers.routing_policy.max_cost IS 'Highest expected cost a candidate may have (NULL: no ceiling).';
COMMENT ON COLUMN avengers.routing_policy.completions IS 'Answers the request draws from its first model: its expected cost counts them (default 1).';
COMMENT ON COLUMN avengers.routing_policy.ood_policy IS 'What an out-of-distribution query gets: flag (routed as usual, default), best-overall (ranked by the models'' dataset-balanced calibration means) or widen (routed as usual; answered with Model-Switch).';
COMMENT ON COLUMN avengers.routing_policy.exploration IS 'off, thompson or epsilon (NULL: the clustering''s).';
COMMENT ON COLUMN avengers.routing_policy.exploration_share IS 'epsilon: the share of decisions that put a drawn candidate first (NULL: the clustering''s).';
COMMENT ON COLUMN avengers.routing_policy.production_weight IS 'How much a production outcome counts against a calibration one (>= 0; 0: the static router; NULL: the clustering''s).';

CREATE FUNCTION avengers.policy(
  top_n integer DEFAULT 1, neighbours integer DEFAULT 16,
  temperature double precision DEFAULT 0.1, shrinkage double precision DEFAULT 1,
  tradeoff double precision DEFAULT NULL, max_cost double precision DEFAULT NULL,
  completions integer DEFAULT 1, ood_policy text DEFAULT 'flag',
  exploration text DEFAULT NULL, exploration_share double precision DEFAULT NULL,
  production_weight double precision DEFAULT NULL, require_endpoint boolean DEFAULT false,
  models text[] DEFAULT NULL, clustering_id integer DEFAULT NULL)
RETURNS avengers.routing_policy
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ROW(clustering_id, neighbours, temperature, shrinkage, top_n, require_endpoint, models,
           tradeoff, max_cost, completions, ood_policy, exploration, exploration_share,
           production_weight)::avengers.routing_policy;
COMMENT ON FUNCTION avengers.policy(integer, integer, double precision, double precision, double precision, double precision, integer, text, text, double precision, double precision, boolean, text[], integer) IS
  'A routing policy with the defaults of the "avengers" method: avengers.policy(3), avengers.policy(3, tradeoff => 0.5), avengers.policy(1, neighbours => 1, temperature => 0, shrinkage => 0) (the paper''s rule).';

-- One row of a decision: one candidate of one query, best first; the decision's own fields
-- repeat on each of its rows.
CREATE TYPE avengers.decision AS (
  ord integer, clustering_id integer, cluster integer, distance double precision,
  novelty double precision, ood boolean, ood_policy text, exploration text, explored boolean,
  production_weight double precision,
  rank integer, model_id integer, model text, endpoint text, served_name text,
  api_key_env text, score double precision, evidence double precision,
  propensity double precision, mean_score double precision, n integer,
  wilson_low double precision, wilson_high double precision, overall_score double precision,
  production_n integer, production_mean double precision, expected_cost double precision,
  over_budget boolean, utility double precision);
COMMENT ON TYPE avengers.decision IS
  'A row of a routing decision (avengers.decide): one candidate model of one query, best first, with the decision''s fields. model NULL: no eligible model.';
COMMENT ON COLUMN avengers.decision.ord IS 'Position of the query in the batch (1 for a single vector).';
COMMENT ON COLUMN avengers.decision.clustering_id IS 'The clustering version that routed it.';
COMMENT ON COLUMN avengers.decision.cluster IS 'The nearest cluster.';
COMMENT ON COLUMN avengers.decision.distance IS 'Euclidean distance of the normalised query to its centroid.';
COMMENT ON COLUMN avengers.decision.novelty IS 'Mahalanobis distance to the clustering''s calibration Gaussian over its threshold (avengers.novelty_profiles), else the distance over the nearest cluster''s ood_distance; NULL: neither is stored.';
COMMENT ON COLUMN avengers.decision.ood IS 'novelty > 1: out of distribution.';
COMMENT ON COLUMN avengers.decision.ood_policy IS 'The out-of-distribution policy applied (NULL when the query is in distribution).';
COMMENT ON COLUMN avengers.decision.exploration IS 'The exploration policy in force (NULL: off).';
COMMENT ON COLUMN avengers.decision.explored IS 'Exploration put another candidate first than the best-ranked one (NULL: off).';
COMMENT ON COLUMN avengers.decision.production_weight IS 'The production weight the scores pooled production outcomes at.';
COMMENT ON COLUMN avengers.decision.rank IS 'Rank of the model for this query (1: the one asked first).';
COMMENT ON COLUMN avengers.decision.model_id IS 'Model id.';
COMMENT ON COLUMN avengers.decision.model IS 'Model name.';
COMMENT ON COLUMN avengers.decision.endpoint IS 'models.endpoint.';
COMMENT ON COLUMN avengers.decision.served_name IS 'models.served_name, else the name.';
COMMENT ON COLUMN avengers.decision.api_key_env IS 'models.api_key_env.';
COMMENT ON COLUMN avengers.decision.score IS 'The routing score (expected quality) of the model.';
COMMENT ON COLUMN avengers.decision.evidence IS 'The pseudo-count behind the score: pooled outcomes (calibration, and production at its weight) plus the shrinkage.';
COMMENT ON COLUMN avengers.decision.propensity IS 'Probability the model had of being asked first under this policy (1 or 0 without exploration; NULL under thompson).';
COMMENT ON COLUMN avengers.decision.mean_score IS 'The model''s calibration mean in the nearest cluster (cluster_profiles; NULL: no outcome there).';
COMMENT ON COLUMN avengers.decision.n IS 'Outcomes behind mean_score.';
COMMENT ON COLUMN avengers.decision.wilson_low IS 'Lower Wilson 95% bound of mean_score.';
COMMENT ON COLUMN avengers.decision.wilson_high IS 'Upper Wilson 95% bound of mean_score.';
COMMENT ON COLUMN avengers.decision.overall_score IS 'The model''s mean outcome over all clustered calibration queries.';
COMMENT ON COLUMN avengers.decision.production_n IS 'Feedback rows of the model in the nearest cluster.';
COMMENT ON COLUMN avengers.decision.production_mean IS 'Their decayed mean (NULL: none).';
COMMENT ON COLUMN avengers.decision.expected_cost IS 'Expected cost of the request on the model (NULL when no trade-off or ceiling was asked, or the model has neither a price nor a measured cost).';
COMMENT ON COLUMN avengers.decision.over_budget IS 'True when max_cost was asked and no candidate fits it: the row is the cheapest candidate (NULL when no trade-off or ceiling was asked).';
COMMENT ON COLUMN avengers.decision.utility IS 'What the model was ranked by under a trade-off (NULL when no trade-off or ceiling was asked).';

-- What a decision pools for a candidate over a query's neighbours.
CREATE TYPE avengers.pooled_sums AS (
  ws double precision, wn double precision, pws double precision, pwn double precision,
  wo double precision, wa double precision, wc double precision, wca double precision);
COMMENT ON TYPE avengers.pooled_sums IS
  'A model''s sums over a query''s neighbours, weighted: calibration outcomes (ws, wn), production outcomes (pws, pwn), completion tokens (wo, wa) and costs (wc, wca).';
COMMENT ON COLUMN avengers.pooled_sums.ws IS 'Weighted sum of calibration outcome scores.';
COMMENT ON COLUMN avengers.pooled_sums.wn IS 'Weighted count of calibration outcomes.';
COMMENT ON COLUMN avengers.pooled_sums.pws IS 'Weighted decayed sum of production outcome scores.';
COMMENT ON COLUMN avengers.pooled_sums.pwn IS 'Weighted decayed count of production outcomes.';
COMMENT ON COLUMN avengers.pooled_sums.wo IS 'Weighted sum of measured completion tokens.';
COMMENT ON COLUMN avengers.pooled_sums.wa IS 'Weighted count of answers behind wo.';
COMMENT ON COLUMN avengers.pooled_sums.wc IS 'Weighted sum of measured costs.';
COMMENT ON COLUMN avengers.pooled_sums.wca IS 'Weighted count of answers behind wc.';

-- The error of the first field out of range (called only when policy_valid's check fails).
CREATE FUNCTION avengers.policy_error(p avengers.routing_policy)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
  IF p IS NULL THEN
    RAISE EXCEPTION 'the routing policy is NULL' USING ERRCODE = 'VA422', COLUMN = 'policy';
  END IF;
  IF NOT coalesce(p.top_n >= 1, true) THEN
    RAISE EXCEPTION '%', format('top_n must be >= 1, got %s', p.top_n) USING ERRCODE = 'VA422', COLUMN = 'top_n';
  END IF;
  IF NOT coalesce(p.neighbours >= 1, true) THEN
    RAISE EXCEPTION '%', format('neighbours must be >= 1, got %s', p.neighbours) USING ERRCODE = 'VA422', COLUMN = 'neighbours';
  END IF;
  IF NOT coalesce(p.temperature >= 0, true) THEN
    RAISE EXCEPTION '%', format('temperature must be >= 0, got %s', p.temperature) USING ERRCODE = 'VA422', COLUMN = 'temperature';
  END IF;
  IF NOT coalesce(p.shrinkage >= 0, true) THEN
    RAISE EXCEPTION '%', format('shrinkage must be >= 0, got %s', p.shrinkage) USING ERRCODE = 'VA422', COLUMN = 'shrinkage';
  END IF;
  IF NOT coalesce(p.tradeoff BETWEEN 0 AND 1, true) THEN
    RAISE EXCEPTION '%', format('tradeoff must be between 0 and 1, got %s', p.tradeoff) USING ERRCODE = 'VA422', COLUMN = 'tradeoff';
  END IF;
  IF NOT coalesce(p.max_cost >= 0 AND p.max_cost < 'Infinity', true) THEN
    RAISE EXCEPTION '%', format('max_cost must be a finite number >= 0, got %s', p.max_cost) USING ERRCODE = 'VA422', COLUMN = 'max_cost';
  END IF;
  IF NOT coalesce(p.completions >= 1, true) THEN
    RAISE EXCEPTION '%', format('completions must be >= 1, got %s', p.completions) USING ERRCODE = 'VA422', COLUMN = 'completions';
  END IF;
  IF NOT coalesce(p.ood_policy IN ('flag', 'best-overall', 'widen'), true) THEN
    RAISE EXCEPTION '%', format('unknown OOD policy %L; choose one of flag, best-overall, widen', p.ood_policy) USING ERRCODE = 'VA422', COLUMN = 'ood_policy';
  END IF;
  IF NOT coalesce(p.exploration IN ('off', 'thompson', 'epsilon'), true) THEN
    RAISE EXCEPTION '%', format('unknown exploration %L; choose one of off, thompson, epsilon', p.exploration) USING ERRCODE = 'VA422', COLUMN = 'exploration';
  END IF;
  IF NOT coalesce(p.exploration_share BETWEEN 0 AND 1, true) THEN
    RAISE EXCEPTION '%', format('exploration_share must be in [0, 1], got %s', p.exploration_share) USING ERRCODE = 'VA422', COLUMN = 'exploration_share';
  END IF;
  IF NOT coalesce(p.production_weight >= 0 AND p.production_weight < 'Infinity', true) THEN
    RAISE EXCEPTION '%', format('production_weight must be a finite number >= 0, got %s', p.production_weight) USING ERRCODE = 'VA422', COLUMN = 'production_weight';
  END IF;
  RETURN true;
END
$$;
COMMENT ON FUNCTION avengers.policy_error(avengers.routing_policy) IS
  'Raises the error (SQLSTATE VA422, naming the field in its column) of the first field of a routing policy that is out of range.';

-- plpgsql, so a decision compiles one call, not the checks (evaluated as one simple expression).
CREATE FUNCTION avengers.policy_valid(p avengers.routing_policy)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
  RETURN CASE WHEN p IS NOT NULL
                   AND coalesce(p.top_n >= 1, true)
                   AND coalesce(p.neighbours >= 1, true)
                   AND coalesce(p.temperature >= 0, true)
                   AND coalesce(p.shrinkage >= 0, true)
                   AND coalesce(p.tradeoff BETWEEN 0 AND 1, true)
                   AND coalesce(p.max_cost >= 0 AND p.max_cost < 'Infinity', true)
                   AND coalesce(p.completions >= 1, true)
                   AND coalesce(p.ood_policy IN ('flag', 'best-overall', 'widen'), true)
                   AND coalesce(p.exploration IN ('off', 'thompson', 'epsilon'), true)
                   AND coalesce(p.exploration_share BETWEEN 0 AND 1, true)
                   AND coalesce(p.production_weight >= 0 AND p.production_weight < 'Infinity', true)
              THEN true ELSE avengers.policy_error(p) END;
END
$$;
COMMENT ON FUNCTION avengers.policy_valid(avengers.routing_policy) IS
  'True when every field of the policy is in range; raises (VA422, naming the field) otherwise.';

CREATE FUNCTION avengers.query_dimension_error(dim integer, clustering integer, ord integer DEFAULT 1)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
  RAISE EXCEPTION 'query vector % is NULL or does not have the % dimensions of clustering %',
    ord, dim, clustering
    USING ERRCODE = 'VA422',
          HINT = 'Embed queries with the embedder of the clustering''s space: SELECT s.embedder, s.dimension FROM avengers.active_clustering k JOIN avengers.embedding_spaces s ON s.id = k.space_id.';
END
$$;
COMMENT ON FUNCTION avengers.query_dimension_error(integer, integer, integer) IS
  'Raises the routing error for a query vector that is NULL or of the wrong dimension (SQLSTATE VA422; called only when the check fails).';

CREATE FUNCTION avengers.neighbour_weight(
  distance double precision, nearest double precision, temperature double precision,
  rho double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN rho > 0 AND temperature > 0 THEN
              -- d * d, not d ^ 2: the same double (both round once) without a call to pow().
              exp(greatest(-700.0, -(distance * distance - nearest * nearest) / (temperature * rho)))
            WHEN distance = nearest THEN 1.0::double precision
            ELSE 0.0::double precision END;
COMMENT ON FUNCTION avengers.neighbour_weight(double precision, double precision, double precision, double precision) IS
  'Weight of a neighbour centroid at `distance` when the nearest is at `nearest`: exp(-(d^2 - d_1^2) / (temperature * rho)); only the nearest distance counts when temperature or rho is 0.';

CREATE FUNCTION avengers.tradeoff_utility(
  tradeoff double precision, score double precision, smin double precision,
  smax double precision, cost double precision, cmin double precision, cmax double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN tradeoff * coalesce((score - smin) / nullif(smax - smin, 0), 1)
       + (1 - tradeoff)
         * (1 - CASE WHEN cost IS NULL THEN 1
                     ELSE coalesce((cost - cmin) / nullif(cmax - cmin, 0), 0) END);
COMMENT ON FUNCTION avengers.tradeoff_utility(double precision, double precision, double precision, double precision, double precision, double precision, double precision) IS
  'tradeoff * (score - min) / (max - min) + (1 - tradeoff) * (1 - (cost - min) / (max - min)) over a query''s candidates; an unknown cost counts as the highest.';

-- A uniform draw in [0, 1) from a seed and a key: 52 bits of Postgres' 64-bit hash.
CREATE FUNCTION avengers.uniform(seed bigint, key bigint)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (hashint8extended(key, seed) & 4503599627370495)::double precision / 4503599627370496.0;
COMMENT ON FUNCTION avengers.uniform(bigint, bigint) IS
  'A uniform number in [0, 1) determined by (seed, key): exploration''s draws.';

-- Exploration's draw for a candidate: epsilon's uniform number (the largest draw among the
-- candidates that fit is the one a decision that explores puts first), thompson's sample of the
-- candidate's posterior Beta(1 + s e, 1 + (1 - s) e), approximated by a normal and sampled at the
-- uniform u through the logistic approximation of the normal quantile (sqrt(3) / pi * logit u).
-- plpgsql: a call compiles to one step in a decision, which only explores now and then.
CREATE FUNCTION avengers.exploration_draw(
  exploration text, seed bigint, model integer, score double precision,
  evidence double precision)
RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
  u double precision := avengers.uniform(seed, model);
  s double precision := least(greatest(coalesce(score, 0.5), 0), 1);
  e double precision := greatest(coalesce(evidence, 0), 0);
  a double precision := 1 + s * e;
  b double precision := 1 + (1 - s) * e;
BEGIN
  IF exploration = 'epsilon' THEN
    RETURN u;
  ELSIF exploration = 'thompson' THEN
    RETURN a / (a + b) + sqrt(a * b / ((a + b) * (a + b) * (a + b + 1)))
           * 0.5513288954217921 * ln(greatest(u, 1e-12) / greatest(1 - u, 1e-12));
  END IF;
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION avengers.exploration_draw(text, bigint, integer, double precision, double precision) IS
  'Exploration''s draw for a candidate: epsilon, a uniform number from (seed, model); thompson, a sample of the normal approximation of Beta(1 + score * evidence, 1 + (1 - score) * evidence) at that number.';

-- A candidate's expected cost from its prices, measured means and the sums pooled around the
-- query (sql/025_costs.sql). plpgsql: one step in a decision that asks no cost.
CREATE FUNCTION avengers.candidate_cost(
  price_in double precision, price_out double precision, tokens_per_char double precision,
  mean_tokens_out double precision, mean_cost double precision, chars double precision,
  sums avengers.pooled_sums, shrinkage double precision, completions integer)
RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
  RETURN avengers.expected_cost(
    price_in, price_out, avengers.prompt_tokens(chars, tokens_per_char),
    avengers.pooled_mean(sums.wo, sums.wa, mean_tokens_out, shrinkage),
    avengers.pooled_mean(sums.wc, sums.wca, mean_cost, shrinkage),
    completions);
END
$$;
COMMENT ON FUNCTION avengers.candidate_cost(double precision, double precision, double precision, double precision, double precision, double precision, avengers.pooled_sums, double precision, integer) IS
  'Expected cost of a request on a candidate (avengers.expected_cost) from its prices and measured means and its measured tokens and costs pooled around the query.';

-- Mahalanobis distance of a query to a clustering's calibration Gaussian (novelty_axes), over
-- its threshold. One inner product per dimension: what decide computes when the caller did not
-- pass the novelty (the clients compute it from the same axes with numpy, several times faster).
CREATE FUNCTION avengers.novelty(clustering integer, query vector)
RETURNS double precision
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT CASE WHEN p.threshold > 0 THEN sqrt(x.d2) / p.threshold
              WHEN x.d2 > 0 THEN 'Infinity'::double precision ELSE 0 END
  FROM avengers.novelty_profiles p
  CROSS JOIN LATERAL (
    SELECT sum((a.direction <#> (query - p.mean)) * (a.direction <#> (query - p.mean))
               / a.variance) AS d2
    FROM avengers.novelty_axes a
    WHERE a.clustering_id = p.clustering_id) AS x
  WHERE p.clustering_id = clustering;
END;
COMMENT ON FUNCTION avengers.novelty(integer, vector) IS
  'Novelty of a query vector in a clustering version: its Mahalanobis distance to the calibration Gaussian over the held-out threshold (NULL: the version has no novelty model).';

-- A model's weighted sums over a query's neighbours for a clustering that is not pooled, from
-- routing_entries and cluster_costs, one row per neighbour.
CREATE FUNCTION avengers.entry_sums(clustering integer, model integer, weights sparsevec)
RETURNS avengers.pooled_sums
LANGUAGE sql STABLE
SET plan_cache_mode = force_generic_plan
BEGIN ATOMIC
  SELECT coalesce(sum(nb.w * e.score_sum), 0), coalesce(sum(nb.w * e.n), 0),
         coalesce(sum(nb.w * e.production_decayed_sum), 0),
         coalesce(sum(nb.w * e.production_decayed_n), 0),
         coalesce(sum(nb.w * cc.tokens_out_sum), 0), coalesce(sum(nb.w * cc.answers), 0),
         coalesce(sum(nb.w * cc.cost_sum), 0), coalesce(sum(nb.w * cc.cost_answers), 0)
  FROM (SELECT split_part(x, ':', 1)::integer - 1 AS cluster,
               split_part(x, ':', 2)::double precision AS w
        FROM unnest(string_to_array(
               nullif(split_part(split_part(weights::text, '{', 2), '}', 1), ''), ',')) AS x)
       AS nb
  LEFT JOIN avengers.routing_entries e
    ON e.clustering_id = clustering AND e.cluster = nb.cluster AND e.model_id = model
  LEFT JOIN avengers.cluster_costs cc
    ON cc.clustering_id = clustering AND cc.cluster = nb.cluster AND cc.model_id = model;
END;
COMMENT ON FUNCTION avengers.entry_sums(integer, integer, sparsevec) IS
  'A model''s weighted sums over the neighbours in `weights` (a sparsevec over clusters), read from routing_entries and cluster_costs: what a clustering that is not pooled scores with.';

-- The decision for one query vector. See the top of this file for the rule.
CREATE FUNCTION avengers.decide(
  query vector,
  policy avengers.routing_policy DEFAULT avengers.policy(),
  seed bigint DEFAULT NULL,
  prompt_chars integer DEFAULT NULL,
  pinned text DEFAULT NULL,
  mahalanobis double precision DEFAULT NULL,
  novelty_clustering integer DEFAULT NULL)
RETURNS SETOF avengers.decision
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT 1, st.clustering_id, p.cluster, p.distance, p.novelty, p.novelty > 1,
         CASE WHEN p.novelty > 1 THEN coalesce((policy).ood_policy, 'flag') END,
         CASE WHEN st.explore <> 'off' THEN st.explore END,
         CASE WHEN st.explore <> 'off' AND r.model_id IS NOT NULL THEN r.explored END,
         st.lambda,
         r.rank::integer, r.model_id, r.name, r.endpoint, r.served_name, r.api_key_env,
         r.score, r.evidence,
         -- The probability the candidate had of going first: 1 or 0 without exploration (or
         -- with a pin, or nothing within the ceiling); under epsilon, the plain order's best
         -- keeps its place with 1 - share and every candidate is drawn with share / fitting.
         CASE WHEN r.pin_count > 0 OR st.explore = 'off' OR r.fitting = 0 THEN
                (r.rank = 1)::integer::double precision
              WHEN st.explore = 'epsilon' THEN
                CASE WHEN r.rank = CASE WHEN r.explored THEN 2 ELSE 1 END THEN 1 - st.share
                     ELSE 0 END
                + st.share / r.fitting
         END,
         e.mean_score, e.n, e.wilson_low, e.wilson_high, r.overall_score,
         e.production_n, e.production_mean, r.cost,
         CASE WHEN r.model_id IS NOT NULL AND st.costed THEN NOT r.fits END, r.utility
  FROM (
    -- The policy's clustering, the policy resolved against its settings, and the query
    -- normalised (once, not once per centroid compared with).
    SELECT s.*, l2_normalize(query) AS u,
           coalesce((policy).production_weight, s.production_weight) AS lambda,
           coalesce((policy).exploration, s.exploration) AS explore,
           coalesce((policy).exploration_share, s.exploration_share) AS share,
           (policy).tradeoff IS NOT NULL OR (policy).max_cost IS NOT NULL AS costed,
           -- Without a seed: the statement's time and the query's norm (SQL users; the clients
           -- always pass one).
           coalesce(seed, hashint8extended((extract(epoch FROM statement_timestamp()) * 1e6)::bigint,
                                           hashfloat8(vector_norm(query))::bigint)) AS draw_seed
    FROM avengers.routing_state s
    WHERE CASE WHEN (policy).clustering_id IS NULL THEN s.active
               ELSE s.clustering_id = (policy).clustering_id END
      AND avengers.policy_valid(policy)
      AND CASE WHEN query IS NOT NULL AND vector_dims(query) = s.dimension THEN true
               ELSE avengers.query_dimension_error(s.dimension, s.clustering_id) END
    OFFSET 0) AS st
  CROSS JOIN LATERAL (
    -- The neighbourhood and the novelty: the Mahalanobis distance to the calibration Gaussian
    -- (the caller's, when computed for this clustering) over its threshold, else the distance
    -- over the nearest cluster's OOD distance.
    SELECT n.*,
           CASE WHEN mahalanobis IS NOT NULL AND novelty_clustering = st.clustering_id
                     AND st.novelty_threshold IS NOT NULL THEN
                  CASE WHEN st.novelty_threshold > 0 THEN mahalanobis / st.novelty_threshold
                       WHEN mahalanobis > 0 THEN 'Infinity'::double precision ELSE 0 END
                WHEN st.novelty_threshold IS NOT NULL THEN avengers.novelty(st.clustering_id, query)
                WHEN n.ood_distance > 0 THEN n.distance / n.ood_distance
                WHEN n.ood_distance = 0 THEN
                  CASE WHEN n.distance > 0 THEN 'Infinity'::double precision ELSE 0 END
           END AS novelty
    FROM (
      -- One pass over the clustering's centroids: the nearest (ties: lower cluster), and the
      -- `neighbours` nearest weighed, as one sparsevec literal.
      SELECT min(w.cluster) FILTER (WHERE w.first) AS cluster, min(w.nearest) AS distance,
             min(w.ood_distance) FILTER (WHERE w.first) AS ood_distance,
             format('{%s}/%s', string_agg(w.weight_key || w.w::text, ',') FILTER (WHERE w.w >= 1e-30),
                    st.clusters)::sparsevec AS weights
      FROM (
        SELECT l.cluster, l.weight_key, l.ood_distance, l.nearest, l.first,
               avengers.neighbour_weight(l.distance, l.nearest,
                                         coalesce((policy).temperature, 0.1), st.rho) AS w
        FROM (
          SELECT o.*, first_value(o.distance) OVER w AS nearest,
                 row_number() OVER w = 1 AS first
          FROM (
            SELECT c.cluster, c.weight_key, c.ood_distance, c.centroid <-> st.u AS distance
            FROM avengers.routing_centroids c
            WHERE c.clustering_id = st.clustering_id
            ORDER BY 4, 1
            LIMIT greatest(coalesce((policy).neighbours, 16), 1)) AS o
          WINDOW w AS (ORDER BY o.distance, o.cluster)) AS l) AS w) AS n
    OFFSET 0) AS p
  LEFT JOIN LATERAL (
    -- Ranked: the first place (a pin, else exploration's choice), then the plain order (k1, k2,
    -- score, tie_rank). In that order the plain order's best is the first row, or the second
    -- when the first was put there, so the window over the one sort also tells whether the
    -- first model is the one the plain order would have put there.
    SELECT f.*,
           row_number() OVER w AS rank,
           coalesce(f.pin_count = 0 AND first_value(f.first) OVER w
                    AND ROW(first_value(f.k1) OVER w, first_value(f.k2) OVER w,
                            first_value(f.score) OVER w, -first_value(f.tie_rank) OVER w)
                        < ROW(nth_value(f.k1, 2) OVER w, nth_value(f.k2, 2) OVER w,
                              nth_value(f.score, 2) OVER w, -nth_value(f.tie_rank, 2) OVER w),
                    false) AS explored
    FROM (
      SELECT c.*,
             CASE WHEN c.fitting > 0 THEN 0 ELSE -coalesce(c.cost, 'Infinity') END AS k1,
             CASE WHEN coalesce((policy).tradeoff, 1) = 1 THEN c.score ELSE c.utility END AS k2,
             CASE WHEN c.pin_count > 0 THEN c.name = pinned
                  WHEN c.fitting = 0 THEN false
                  WHEN st.explore = 'epsilon' THEN c.draw = c.top_draw
                    AND avengers.uniform(st.draw_seed, -1) < st.share
                  WHEN st.explore = 'thompson' THEN c.draw = c.top_draw
                  ELSE false END AS first
      FROM (
        SELECT t.*,
               count(*) FILTER (WHERE t.fits) OVER a AS fitting,
               count(*) FILTER (WHERE t.fits AND t.name = pinned) OVER a AS pin_count,
               max(t.draw) FILTER (WHERE t.fits) OVER a AS top_draw,
               CASE WHEN st.costed THEN
                 avengers.tradeoff_utility(coalesce((policy).tradeoff, 1), t.score,
                                           min(t.score) OVER a, max(t.score) OVER a, t.cost,
                                           min(t.cost) OVER a, max(t.cost) OVER a)
               END AS utility
        FROM (
          SELECT m.*,
                 coalesce((policy).max_cost IS NULL OR m.cost <= (policy).max_cost, false) AS fits,
                 -- Exploration's draw: epsilon's uniform pick among the candidates that fit,
                 -- thompson's posterior sample.
                 CASE WHEN st.explore <> 'off' THEN
                   avengers.exploration_draw(st.explore, st.draw_seed, m.model_id, m.score,
                                             m.evidence)
                 END AS draw
          FROM (
            SELECT rm.model_id, rm.name, rm.endpoint, rm.served_name, rm.api_key_env,
                   rm.overall_score, rm.tie_rank,
                   CASE WHEN p.novelty > 1 AND (policy).ood_policy = 'best-overall'
                          THEN rm.prior_score
                        ELSE (sm.ws + st.lambda * sm.pws
                              + coalesce((policy).shrinkage, 1) * rm.prior_score)
                             / nullif(sm.wn + st.lambda * sm.pwn
                                      + coalesce((policy).shrinkage, 1), 0) END AS score,
                   sm.wn + st.lambda * sm.pwn + coalesce((policy).shrinkage, 1) AS evidence,
                   sm.wn + st.lambda * sm.pwn AS pooled_n,
                   CASE WHEN st.costed THEN
                     avengers.candidate_cost(rm.price_in, rm.price_out, rm.tokens_per_char,
                                             rm.mean_tokens_out, rm.mean_cost,
                                             coalesce(prompt_chars, st.mean_chars), sm.cost_sums,
                                             coalesce((policy).shrinkage, 1),
                                             coalesce((policy).completions, 1))
                   END AS cost
            FROM avengers.routing_models rm
            -- The pooled sums: inner products of the model's per-cluster sums with the
            -- neighbour weights (a clustering that is not pooled reads them per neighbour).
            CROSS JOIN LATERAL (
              SELECT CASE WHEN st.pooled THEN -(rm.score_sums <#> p.weights)
                          ELSE (avengers.entry_sums(st.clustering_id, rm.model_id, p.weights)).ws
                     END AS ws,
                     CASE WHEN st.pooled THEN -(rm.ns <#> p.weights)
                          ELSE (avengers.entry_sums(st.clustering_id, rm.model_id, p.weights)).wn
                     END AS wn,
                     CASE WHEN st.lambda = 0 THEN 0
                          WHEN st.pooled THEN -(rm.production_sums <#> p.weights)
                          ELSE (avengers.entry_sums(st.clustering_id, rm.model_id, p.weights)).pws
                     END AS pws,
                     CASE WHEN st.lambda = 0 THEN 0
                          WHEN st.pooled THEN -(rm.production_ns <#> p.weights)
                          ELSE (avengers.entry_sums(st.clustering_id, rm.model_id, p.weights)).pwn
                     END AS pwn,
                     CASE WHEN NOT st.costed THEN NULL
                          WHEN st.pooled THEN
                            ROW(NULL, NULL, NULL, NULL, -(rm.tokens_out_sums <#> p.weights),
                                -(rm.answer_ns <#> p.weights), -(rm.cost_sums <#> p.weights),
                                -(rm.cost_ns <#> p.weights))::avengers.pooled_sums
                          ELSE avengers.entry_sums(st.clustering_id, rm.model_id, p.weights)
                     END AS cost_sums
              OFFSET 0) AS sm
            WHERE rm.clustering_id = st.clustering_id
              AND rm.active
              AND (rm.endpoint IS NOT NULL OR NOT coalesce((policy).require_endpoint, false))
              AND (rm.name = ANY ((policy).models) OR (policy).models IS NULL)) AS m
          -- Without a prior (shrinkage 0) a model needs outcomes near the query.
          WHERE m.score IS NOT NULL
            AND (coalesce((policy).shrinkage, 1) > 0 OR m.pooled_n > 0
                 OR (p.novelty > 1 AND (policy).ood_policy = 'best-overall'))
        ) AS t
        WINDOW a AS ()
      ) AS c
      -- Within the ceiling; when nothing fits, the cheapest alone (the first in the order).
      WHERE c.fits OR c.fitting = 0
    ) AS f
    WINDOW w AS (ORDER BY f.first DESC, f.k1 DESC, f.k2 DESC, f.score DESC, f.tie_rank
                 ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
  ) AS r ON r.rank <= CASE WHEN r.fitting > 0 THEN coalesce((policy).top_n, 1) ELSE 1 END
  -- LATERAL ... OFFSET 0: one index probe per candidate, whatever the statistics (a plain
  -- join let the planner hash all of routing_entries per call).
  LEFT JOIN LATERAL (
    SELECT x.mean_score, x.n, x.wilson_low, x.wilson_high, x.production_n, x.production_mean
    FROM avengers.routing_entries x
    WHERE x.clustering_id = st.clustering_id AND x.cluster = p.cluster
      AND x.model_id = r.model_id
    OFFSET 0) AS e ON true;
END;
COMMENT ON FUNCTION avengers.decide(vector, avengers.routing_policy, bigint, integer, text, double precision, integer) IS
  'The routing decision for one query vector under a policy (avengers.policy(...)): one row per candidate, in rank order (model NULL: no eligible model; no row: no clustering to route with). seed makes exploration''s draws reproducible; prompt_chars is the query''s length for its expected cost (NULL: the calibration texts'' mean); pinned is a model to ask first when it is a candidate (a conversation''s); mahalanobis, the query''s distance to the calibration Gaussian of novelty_clustering (routing.novelty), spares computing it. SELECT * FROM avengers.decide(v, avengers.policy(3, tradeoff => 0.5)).';

-- Many query vectors in one statement (one snapshot): decide's rule, run once per query.
-- work_mem: the per-query sorts are tiny, but the result of a large batch is sorted by ord.
CREATE FUNCTION avengers.decide_many(
  queries vector[],
  policy avengers.routing_policy DEFAULT avengers.policy(),
  seeds bigint[] DEFAULT NULL,
  prompt_chars integer[] DEFAULT NULL,
  pinned text[] DEFAULT NULL,
  mahalanobis double precision[] DEFAULT NULL,
  novelty_clustering integer DEFAULT NULL)
RETURNS SETOF avengers.decision
LANGUAGE sql STABLE
SET plan_cache_mode = force_generic_plan
SET work_mem = '64MB'
BEGIN ATOMIC
  SELECT x.ord::integer, d.clustering_id, d.cluster, d.distance, d.novelty, d.ood, d.ood_policy,
         d.exploration, d.explored, d.production_weight, d.rank, d.model_id, d.model, d.endpoint,
         d.served_name, d.api_key_env, d.score, d.evidence, d.propensity, d.mean_score, d.n,
         d.wilson_low, d.wilson_high, d.overall_score, d.production_n, d.production_mean,
         d.expected_cost, d.over_budget, d.utility
  FROM unnest(queries) WITH ORDINALITY AS x(v, ord)
  CROSS JOIN LATERAL avengers.decide(
    x.v, policy,
    CASE WHEN seeds IS NULL THEN NULL ELSE seeds[x.ord] END,
    CASE WHEN prompt_chars IS NULL THEN NULL ELSE prompt_chars[x.ord] END,
    CASE WHEN pinned IS NULL THEN NULL ELSE pinned[x.ord] END,
    CASE WHEN mahalanobis IS NULL THEN NULL ELSE mahalanobis[x.ord] END,
    novelty_clustering) AS d
  ORDER BY x.ord, d.rank;
END;
COMMENT ON FUNCTION avengers.decide_many(vector[], avengers.routing_policy, bigint[], integer[], text[], double precision[], integer) IS
  'avengers.decide for many query vectors in one statement (one snapshot): rows ordered by ord (the query''s 1-based position), then rank. seeds, prompt_chars, pinned and mahalanobis are per query (NULL: none).';

-- For SQL users: the decision with the policy's main knobs as arguments.
CREATE FUNCTION avengers.route(
  query vector, top_n integer DEFAULT 1, tradeoff double precision DEFAULT NULL,
  max_cost double precision DEFAULT NULL, prompt_chars integer DEFAULT NULL)
RETURNS SETOF avengers.decision
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT d.* FROM avengers.decide(query, avengers.policy(top_n, tradeoff => tradeoff,
                                                          max_cost => max_cost),
                                  prompt_chars => prompt_chars) AS d;
END;
COMMENT ON FUNCTION avengers.route(vector, integer, double precision, double precision, integer) IS
  'avengers.decide with the default policy but for top_n, tradeoff and max_cost: SELECT model, score FROM avengers.route(v, 3).';
