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
--     what the production update rule adds to them (production_evidence: feedback moves a
--     calibrated model's mean, N = 0; a model without calibration outcomes has pseudo-outcomes
--     and its feedback, and is a candidate only when lambda > 0), lambda the production weight
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
--   latency (the same way): the expected milliseconds of a model request, measured from the
--     route log and pooled like the score; max_latency_ms is a ceiling like max_cost and
--     latency_weight beta takes its share of the trade-off: utility(m) = (1 - beta) * (the
--     above) + beta * (1 - normalised latency).
--   ranking: among the candidates that fit max_cost and max_latency_ms (all when none is
--     asked), by utility (by score when alpha = 1 and no latency weight), then score, then
--     tie_rank (overall calibration score, then name);
--     when none fits, the cheapest alone, flagged over_budget.
--   first place: a pinned model (a conversation's; it turns exploration off) when it is among
--     the ranked candidates; else, when exploring, the candidates within the ceiling are asked
--     in the order of their draws: targeted, with probability share, one of the plausible
--     candidates (below) and the plain order's best otherwise; epsilon, with probability share,
--     a uniform order (so the first is drawn uniformly); thompson, by a draw from each one's
--     posterior (a normal approximation of Beta(1 + score * evidence, 1 + (1 - score) *
--     evidence)). Otherwise the plain order. Draws come from the seed (hashed with the model id;
--     targeted's one draw u from md5('<seed>:targeted')), so a decision is reproducible from its
--     seed. propensity is the probability the candidate had of going first (1 and 0 without
--     exploration; NULL under thompson, which has no closed form).
--   targeted (production/exploration_rule.py is its reference): a candidate within the ceiling
--     is plausible when its chance of beating the plain order's best (the leader) is at least
--     the overlap: score_0 - score_i <= Phi^-1(1 - overlap) * sqrt(v_0 + v_i), v = score (1 -
--     score) / (evidence + 1); every candidate is plausible when the query's nearest cluster
--     moved (production_evidence.cluster_moved). With plausible candidates P (in the plain
--     order) and u < share the floor(u / share * |P|)-th of P goes first, else the leader: the
--     leader's propensity is 1 - share (1 when P is empty), each plausible one's share / |P|.
--
-- Scoring reads routing_models: each model's per-cluster sums as sparse vectors, pooled with one
-- inner product each against the query's neighbour weights (pgvector, float32: scores carry
-- ~1e-7 relative rounding); a clustering serves at most the 16,000 clusters a sparse vector
-- holds. Neighbours are found by an exact scan of the clustering's centroids (numpy's argmin to
-- the last tie).
--
-- Consistency: every function here is STABLE, so the reads of one statement (the active
-- clustering, its centroids, profiles and models) use one snapshot; a clustering switch commits
-- in one transaction and a statement sees it entirely or not at all.
--
-- Speed: decide is plain SQL without SET clauses, so the planner inlines it (and what it calls)
-- into the calling statement, which a client prepares once; decide_many runs the same body once
-- per query (LATERAL), so both forms are one text.

-- A routing policy: everything a decision depends on besides the query. NULL fields take the
-- defaults of avengers.policy(); exploration, exploration_share, exploration_overlap and
-- production_weight NULL take the clustering's settings (avengers.clusterings), clustering_id
-- NULL the active clustering.
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
  production_weight double precision,
  max_latency_ms double precision,
  latency_weight double precision,
  exploration_overlap double precision
);
COMMENT ON TYPE avengers.routing_policy IS
  'What avengers.decide routes by besides the query: the clustering, the scoring method, how many candidates, the candidate filter, the quality-cost trade-off and ceiling, the out-of-distribution policy, exploration and the production weight. Build one with avengers.policy(...).';
CALL avengers.comment_columns('avengers.routing_policy', $$
clustering_id: Clustering version to route with (NULL: the active one).
neighbours: Nearest centroids pooled (L >= 1; default 16).
temperature: Weight decay over the neighbours, in units of the clustering's median squared distance (>= 0; default 0.1).
shrinkage: Pseudo-outcomes of the model's calibration prior added to every score (>= 0; default 1).
top_n: Candidates returned (>= 1; default 1).
require_endpoint: Only models with an endpoint (default false).
models: Only these models (names; NULL: every active model).
tradeoff: alpha in [0, 1]: 1 ranks by expected quality, 0 by expected cost (NULL: no trade-off).
max_cost: Highest expected cost a candidate may have (NULL: no ceiling).
completions: Answers the request draws from its first model: its expected cost counts them (default 1).
ood_policy: What an out-of-distribution query gets: flag (routed as usual, default), best-overall (ranked by the models' dataset-balanced calibration means) or widen (routed as usual; answered with Model-Switch).
exploration: off, targeted, thompson or epsilon (NULL: the clustering's).
exploration_share: targeted and epsilon: the share of decisions that may put a drawn candidate first (NULL: the clustering's).
exploration_overlap: targeted: the chance of beating the leader from which a candidate is plausible, in [0, 1) (NULL: the clustering's).
production_weight: How much a production outcome counts against a calibration one (>= 0; 0: the static router; NULL: the clustering's).
max_latency_ms: Highest expected latency of a model request a candidate may have, in milliseconds (NULL: no ceiling).
latency_weight: beta in [0, 1]: the share of the trade-off given to low expected latency (NULL: none).
$$);

CREATE FUNCTION avengers.policy(
  top_n integer DEFAULT 1, neighbours integer DEFAULT 16,
  temperature double precision DEFAULT 0.1, shrinkage double precision DEFAULT 1,
  tradeoff double precision DEFAULT NULL, max_cost double precision DEFAULT NULL,
  completions integer DEFAULT 1, ood_policy text DEFAULT 'flag',
  exploration text DEFAULT NULL, exploration_share double precision DEFAULT NULL,
  production_weight double precision DEFAULT NULL, require_endpoint boolean DEFAULT false,
  models text[] DEFAULT NULL, clustering_id integer DEFAULT NULL,
  max_latency_ms double precision DEFAULT NULL, latency_weight double precision DEFAULT NULL,
  exploration_overlap double precision DEFAULT NULL)
RETURNS avengers.routing_policy
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ROW(clustering_id, neighbours, temperature, shrinkage, top_n, require_endpoint, models,
           tradeoff, max_cost, completions, ood_policy, exploration, exploration_share,
           production_weight, max_latency_ms, latency_weight,
           exploration_overlap)::avengers.routing_policy;
COMMENT ON FUNCTION avengers.policy(integer, integer, double precision, double precision, double precision, double precision, integer, text, text, double precision, double precision, boolean, text[], integer, double precision, double precision, double precision) IS
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
  over_budget boolean, utility double precision, expected_latency_ms double precision);
COMMENT ON TYPE avengers.decision IS
  'A row of a routing decision (avengers.decide): one candidate model of one query, best first, with the decision''s fields. model NULL: no eligible model.';
CALL avengers.comment_columns('avengers.decision', $$
ord: Position of the query in the batch (1 for a single vector).
clustering_id: The clustering version that routed it.
cluster: The nearest cluster.
distance: Euclidean distance of the normalised query to its centroid.
novelty: Mahalanobis distance to the clustering's calibration Gaussian over its threshold (avengers.novelty_profiles), else the distance over the nearest cluster's ood_distance; NULL: neither is stored.
ood: novelty > 1: out of distribution.
ood_policy: The out-of-distribution policy applied (NULL when the query is in distribution).
exploration: The exploration policy in force (NULL: off).
explored: Exploration put another candidate first than the best-ranked one (NULL: off).
production_weight: The production weight the scores pooled production outcomes at.
rank: Rank of the model for this query (1: the one asked first).
model_id: Model id.
model: Model name.
endpoint: models.endpoint.
served_name: models.served_name, else the name.
api_key_env: models.api_key_env.
score: The routing score (expected quality) of the model.
evidence: The pseudo-count behind the score: pooled outcomes (calibration, and production at its weight) plus the shrinkage.
propensity: Probability the model had of being asked first under this policy (1 or 0 without exploration; NULL under thompson).
mean_score: The model's calibration mean in the nearest cluster (cluster_profiles; NULL: no outcome there).
n: Outcomes behind mean_score.
wilson_low: Lower Wilson 95% bound of mean_score.
wilson_high: Upper Wilson 95% bound of mean_score.
overall_score: The model's mean outcome over all clustered calibration queries.
production_n: Feedback rows of the model in the nearest cluster.
production_mean: Their decayed mean (NULL: none).
expected_cost: Expected cost of the request on the model (NULL when no trade-off or ceiling was asked, or the model has neither a price nor a measured cost).
over_budget: True when max_cost was asked and no candidate fits it: the row is the cheapest candidate (NULL when no trade-off or ceiling was asked).
expected_latency_ms: Expected latency of a request to the model, in milliseconds (measured from the route log, pooled like the score; NULL when no trade-off or ceiling was asked, or nothing was measured).
utility: What the model was ranked by under a trade-off (NULL when no trade-off or ceiling was asked).
$$);

-- What a cost-aware decision pools for a candidate over a query's neighbours.
CREATE TYPE avengers.pooled_costs AS (
  wo double precision, wa double precision, wc double precision, wca double precision,
  wl double precision, wln double precision);
COMMENT ON TYPE avengers.pooled_costs IS
  'A model''s measurements over a query''s neighbours, weighted: completion tokens (wo over wa answers), costs (wc over wca answers) and latency (wl milliseconds over wln requests).';
CALL avengers.comment_columns('avengers.pooled_costs', $$
wo: Weighted sum of measured completion tokens.
wa: Weighted count of answers behind wo.
wc: Weighted sum of measured costs.
wca: Weighted count of answers behind wc.
wl: Weighted sum of measured request latencies, in milliseconds.
wln: Weighted count of requests behind wl.
$$);

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
  IF NOT coalesce(p.exploration IN ('off', 'targeted', 'thompson', 'epsilon'), true) THEN
    RAISE EXCEPTION '%', format('unknown exploration %L; choose one of off, targeted, thompson, epsilon', p.exploration) USING ERRCODE = 'VA422', COLUMN = 'exploration';
  END IF;
  IF NOT coalesce(p.exploration_share BETWEEN 0 AND 1, true) THEN
    RAISE EXCEPTION '%', format('exploration_share must be in [0, 1], got %s', p.exploration_share) USING ERRCODE = 'VA422', COLUMN = 'exploration_share';
  END IF;
  IF NOT coalesce(p.exploration_overlap >= 0 AND p.exploration_overlap < 1, true) THEN
    RAISE EXCEPTION '%', format('exploration_overlap must be in [0, 1), got %s', p.exploration_overlap) USING ERRCODE = 'VA422', COLUMN = 'exploration_overlap';
  END IF;
  IF NOT coalesce(p.production_weight >= 0 AND p.production_weight < 'Infinity', true) THEN
    RAISE EXCEPTION '%', format('production_weight must be a finite number >= 0, got %s', p.production_weight) USING ERRCODE = 'VA422', COLUMN = 'production_weight';
  END IF;
  IF NOT coalesce(p.max_latency_ms >= 0 AND p.max_latency_ms < 'Infinity', true) THEN
    RAISE EXCEPTION '%', format('max_latency_ms must be a finite number >= 0, got %s', p.max_latency_ms) USING ERRCODE = 'VA422', COLUMN = 'max_latency_ms';
  END IF;
  IF NOT coalesce(p.latency_weight BETWEEN 0 AND 1, true) THEN
    RAISE EXCEPTION '%', format('latency_weight must be between 0 and 1, got %s', p.latency_weight) USING ERRCODE = 'VA422', COLUMN = 'latency_weight';
  END IF;
  RETURN true;
END
$$;
COMMENT ON FUNCTION avengers.policy_error(avengers.routing_policy) IS
  'Raises the error (SQLSTATE VA422, naming the field in its column) of the first field of a routing policy that is out of range.';

-- One condition of plain comparisons (inlined into a decision); the messages only when it fails.
CREATE FUNCTION avengers.policy_valid(p avengers.routing_policy)
RETURNS boolean
LANGUAGE sql STABLE
RETURN CASE WHEN p IS DISTINCT FROM NULL
                 AND coalesce(p.top_n >= 1, true)
                 AND coalesce(p.neighbours >= 1, true)
                 AND coalesce(p.temperature >= 0, true)
                 AND coalesce(p.shrinkage >= 0, true)
                 AND coalesce(p.tradeoff BETWEEN 0 AND 1, true)
                 AND coalesce(p.max_cost >= 0 AND p.max_cost < 'Infinity', true)
                 AND coalesce(p.completions >= 1, true)
                 AND coalesce(p.ood_policy IN ('flag', 'best-overall', 'widen'), true)
                 AND coalesce(p.exploration IN ('off', 'targeted', 'thompson', 'epsilon'), true)
                 AND coalesce(p.exploration_share BETWEEN 0 AND 1, true)
                 AND coalesce(p.exploration_overlap >= 0 AND p.exploration_overlap < 1, true)
                 AND coalesce(p.production_weight >= 0 AND p.production_weight < 'Infinity', true)
                 AND coalesce(p.max_latency_ms >= 0 AND p.max_latency_ms < 'Infinity', true)
                 AND coalesce(p.latency_weight BETWEEN 0 AND 1, true)
            THEN true ELSE avengers.policy_error(p) END;
COMMENT ON FUNCTION avengers.policy_valid(avengers.routing_policy) IS
  'True when every field of the policy is in range; raises (VA422, naming the field) otherwise.';

CREATE FUNCTION avengers.clustering_too_large(clustering integer, clusters integer)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
  RAISE EXCEPTION 'clustering % has % clusters; routing serves at most 16,000 (a sparse vector''s entries)',
    clustering, clusters
    USING ERRCODE = 'VA409',
          HINT = 'Re-cluster with a smaller k: avengers recluster --k 4096.';
END
$$;
COMMENT ON FUNCTION avengers.clustering_too_large(integer, integer) IS
  'Raises the error of routing with a clustering of more than 16,000 clusters (SQLSTATE VA409; called only then).';

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
  tradeoff double precision, latency_weight double precision, score double precision,
  cost double precision, latency double precision, ranges double precision[])
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (1 - coalesce(latency_weight, 0))
       * (tradeoff * coalesce((score - ranges[1]) / nullif(ranges[2] - ranges[1], 0), 1)
          + (1 - tradeoff)
            * (1 - CASE WHEN cost IS NULL THEN 1
                        ELSE coalesce((cost - ranges[3]) / nullif(ranges[4] - ranges[3], 0), 0)
                   END))
       + coalesce(latency_weight, 0)
         * (1 - CASE WHEN latency IS NULL THEN 1
                     ELSE coalesce((latency - ranges[5]) / nullif(ranges[6] - ranges[5], 0), 0)
                END);
COMMENT ON FUNCTION avengers.tradeoff_utility(double precision, double precision, double precision, double precision, double precision, double precision[]) IS
  '(1 - latency_weight) * (tradeoff * normalised score + (1 - tradeoff) * (1 - normalised cost)) + latency_weight * (1 - normalised latency), each normalised over the query''s candidates (ranges: score, cost and latency minima and maxima); an unknown cost or latency counts as the highest.';

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

-- Targeted exploration's draw: a uniform number in [0, 1) from the first 52 bits of
-- md5('<seed>:<key>'), what production/exploration_rule.hash_uniform computes in Python.
CREATE FUNCTION avengers.hash_uniform(seed bigint, key text)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ('x' || substr(md5(seed::text || ':' || key), 1, 13))::bit(52)::bigint
       / 4503599627370496.0::double precision;
COMMENT ON FUNCTION avengers.hash_uniform(bigint, text) IS
  'A uniform number in [0, 1) from (seed, key): the first 13 hex digits of md5(''<seed>:<key>'') over 16^13 (targeted exploration''s draw, key ''targeted'').';

-- The normal quantile Phi^-1(p) by Wichura's AS241 (the algorithm and coefficients of Python's
-- statistics.NormalDist.inv_cdf, evaluated in the same order, so both give the same double).
CREATE FUNCTION avengers.normal_quantile(p double precision)
RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
  q double precision := p - 0.5;
  r double precision;
  num double precision;
  den double precision;
  a double precision[];
  b double precision[];
  i integer;
BEGIN
  IF p <= 0 OR p >= 1 THEN
    RAISE EXCEPTION 'the normal quantile needs p in (0, 1), got %', p USING ERRCODE = 'VA422';
  END IF;
  IF abs(q) <= 0.425 THEN
    r := 0.180625 - q * q;
    a := '{2.5090809287301226727e+3, 3.3430575583588128105e+4, 6.7265770927008700853e+4, 4.5921953931549871457e+4, 1.3731693765509461125e+4, 1.9715909503065514427e+3, 1.3314166789178437745e+2, 3.3871328727963666080e+0}';
    b := '{5.2264952788528545610e+3, 2.8729085735721942674e+4, 3.9307895800092710610e+4, 2.1213794301586595867e+4, 5.3941960214247511077e+3, 6.8718700749205790830e+2, 4.2313330701600911252e+1, 1.0}';
  ELSE
    r := sqrt(-ln(CASE WHEN q <= 0 THEN p ELSE 1 - p END));
    IF r <= 5 THEN
      r := r - 1.6;
      a := '{7.74545014278341407640e-4, 2.27238449892691845833e-2, 2.41780725177450611770e-1, 1.27045825245236838258e+0, 3.64784832476320460504e+0, 5.76949722146069140550e+0, 4.63033784615654529590e+0, 1.42343711074968357734e+0}';
      b := '{1.05075007164441684324e-9, 5.47593808499534494600e-4, 1.51986665636164571966e-2, 1.48103976427480074590e-1, 6.89767334985100004550e-1, 1.67638483018380384940e+0, 2.05319162663775882187e+0, 1.0}';
    ELSE
      r := r - 5;
      a := '{2.01033439929228813265e-7, 2.71155556874348757815e-5, 1.24266094738807843860e-3, 2.65321895265761230930e-2, 2.96560571828504891230e-1, 1.78482653991729133580e+0, 5.46378491116411436990e+0, 6.65790464350110377720e+0}';
      b := '{2.04426310338993978564e-15, 1.42151175831644588870e-7, 1.84631831751005468180e-5, 7.86869131145613259100e-4, 1.48753612908506148525e-2, 1.36929880922735805310e-1, 5.99832206555887937690e-1, 1.0}';
    END IF;
  END IF;
  num := a[1];
  den := b[1];
  FOR i IN 2..8 LOOP
    num := num * r + a[i];
    den := den * r + b[i];
  END LOOP;
  IF abs(q) <= 0.425 THEN
    RETURN num * q / den;
  END IF;
  RETURN CASE WHEN q < 0 THEN -(num / den) ELSE num / den END;
END
$$;
COMMENT ON FUNCTION avengers.normal_quantile(double precision) IS
  'The standard normal quantile Phi^-1(p) for p in (0, 1) (Wichura''s AS241, as Python''s statistics.NormalDist.inv_cdf).';

-- How far behind the leader, in standard deviations of the difference, a candidate may be and
-- still be plausible: Phi^-1(1 - overlap); every candidate is plausible at overlap 0.
CREATE FUNCTION avengers.plausibility_gap(overlap double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN overlap <= 0 THEN 'Infinity'::double precision
            ELSE -avengers.normal_quantile(overlap) END;
COMMENT ON FUNCTION avengers.plausibility_gap(double precision) IS
  'Phi^-1(1 - overlap): a candidate is plausible when the leader''s score minus its own is at most this many standard deviations of the difference (Infinity at overlap 0: every candidate).';

-- Targeted exploration's candidates: given each candidate within the ceiling as [model id,
-- ranking key, score, tie_rank, evidence, gap] (concatenated, in any order), the plain order's
-- best (the leader) and then the plausible candidates in the plain order, as model ids.
CREATE FUNCTION avengers.targeted_candidates_final(cells double precision[])
RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
  n integer := coalesce(cardinality(cells), 0) / 6;
  ranked integer[] := '{}';
  out integer[];
  i integer;
  j integer;
  at integer;
  a integer;
  b integer;
  p0 double precision;
  v0 double precision;
  p double precision;
  spread double precision;
  behind double precision;
  gap double precision;
BEGIN
  IF n = 0 THEN
    RETURN NULL;
  END IF;
  -- The plain order (ranking key, then score, both descending, then tie_rank): insertion.
  FOR i IN 1..n LOOP
    at := cardinality(ranked) + 1;
    FOR j IN 1..cardinality(ranked) LOOP
      a := 6 * (i - 1);
      b := 6 * (ranked[j] - 1);
      IF coalesce(cells[a + 2], 'Infinity') > coalesce(cells[b + 2], 'Infinity')
         OR (coalesce(cells[a + 2], 'Infinity') = coalesce(cells[b + 2], 'Infinity')
             AND (cells[a + 3] > cells[b + 3]
                  OR (cells[a + 3] = cells[b + 3] AND cells[a + 4] < cells[b + 4]))) THEN
        at := j;
        EXIT;
      END IF;
    END LOOP;
    ranked := ranked[1:at - 1] || i || ranked[at:];
  END LOOP;
  a := 6 * (ranked[1] - 1);
  out := ARRAY[cells[a + 1]::integer];
  gap := cells[a + 6];
  p0 := least(greatest(cells[a + 3], 0), 1);
  v0 := p0 * (1 - p0) / (greatest(cells[a + 5], 0) + 1);
  FOR j IN 2..n LOOP
    b := 6 * (ranked[j] - 1);
    p := least(greatest(cells[b + 3], 0), 1);
    spread := sqrt(p * (1 - p) / (greatest(cells[b + 5], 0) + 1) + v0);
    behind := cells[a + 3] - cells[b + 3];
    IF gap = 'Infinity' OR behind <= gap * spread OR (spread = 0 AND behind <= 0) THEN
      out := out || cells[b + 1]::integer;
    END IF;
  END LOOP;
  RETURN out;
END
$$;
COMMENT ON FUNCTION avengers.targeted_candidates_final(double precision[]) IS
  'avengers.targeted_candidates'' result from its cells: the leader''s model id, then the plausible candidates'' in the plain order.';

CREATE AGGREGATE avengers.targeted_candidates(double precision[]) (
  SFUNC = array_cat, STYPE = double precision[],
  FINALFUNC = avengers.targeted_candidates_final);
COMMENT ON AGGREGATE avengers.targeted_candidates(double precision[]) IS
  'Over a decision''s candidates within the ceiling, each ARRAY[model id, ranking key, score, tie_rank, evidence, gap]: the leader''s model id, then those of the candidates plausibly better than it (targeted exploration; gap Infinity: all of them).';

-- The candidate targeted exploration puts first: with u < share, the floor(u / share * |P|)-th
-- of the plausible candidates P (avengers.targeted_candidates, after the leader); NULL: the leader.
CREATE FUNCTION avengers.targeted_pick(ids integer[], u double precision, share double precision)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN u < share AND cardinality(ids) > 1 THEN
         ids[2 + least(floor(u / share * (cardinality(ids) - 1))::integer, cardinality(ids) - 2)]
       END;
COMMENT ON FUNCTION avengers.targeted_pick(integer[], double precision, double precision) IS
  'The model id targeted exploration puts first for draw u and share (NULL: the leader keeps its place).';

-- The probability a candidate had of going first under targeted exploration.
CREATE FUNCTION avengers.targeted_propensity(ids integer[], model integer, share double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN cardinality(ids) < 2 OR share = 0 THEN (model = ids[1])::integer::double precision
            WHEN model = ids[1] THEN 1 - share
            WHEN model = ANY (ids[2:]) THEN share / (cardinality(ids) - 1)
            ELSE 0 END;
COMMENT ON FUNCTION avengers.targeted_propensity(integer[], integer, double precision) IS
  'Targeted exploration''s propensity of a model: 1 - share for the leader (1 with no plausible rival), share / |P| for each plausible candidate, 0 otherwise.';

-- A candidate's expected cost from its prices, measured means and the sums pooled around the
-- query (sql/025_costs.sql). plpgsql: one step in a decision that asks no cost.
CREATE FUNCTION avengers.candidate_cost(
  price_in double precision, price_out double precision, tokens_per_char double precision,
  mean_tokens_out double precision, mean_cost double precision, chars double precision,
  sums avengers.pooled_costs, shrinkage double precision, completions integer)
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
COMMENT ON FUNCTION avengers.candidate_cost(double precision, double precision, double precision, double precision, double precision, double precision, avengers.pooled_costs, double precision, integer) IS
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

-- A query's candidates in a clustering: every eligible model (active; with an endpoint when
-- the policy requires one; among the policy's models when it names some) with its score and
-- the evidence behind it (pooled over the neighbours in `weights`, production outcomes at
-- weight lambda) and its expected cost (only when `costed`). The one place a candidate is
-- scored: decide inlines it, candidate_ranges reads it again.
CREATE FUNCTION avengers.candidates(
  clustering integer, weights sparsevec, lambda double precision,
  shrinkage double precision, completions integer, require_endpoint boolean, models text[],
  chars double precision, costed boolean, best_overall boolean)
RETURNS TABLE (model_id integer, name text, endpoint text, served_name text,
               api_key_env text, overall_score double precision, tie_rank integer,
               score double precision, evidence double precision, cost double precision,
               latency double precision)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT m.model_id, m.name, m.endpoint, m.served_name, m.api_key_env, m.overall_score,
         m.tie_rank,
         CASE WHEN best_overall THEN m.prior_score
              ELSE (m.ws + lambda * m.pws + shrinkage * m.prior_score)
                   / nullif(m.wn + lambda * m.pwn + shrinkage, 0) END,
         m.wn + lambda * m.pwn + shrinkage,
         CASE WHEN costed THEN
           avengers.candidate_cost(m.price_in, m.price_out, m.tokens_per_char,
                                   m.mean_tokens_out, m.mean_cost, chars, m.cost_sums,
                                   shrinkage, completions)
         END,
         CASE WHEN costed THEN
           avengers.pooled_mean((m.cost_sums).wl, (m.cost_sums).wln, m.mean_latency_ms, shrinkage)
         END
  FROM (
    SELECT rm.model_id, rm.name, rm.endpoint, rm.served_name, rm.api_key_env,
           rm.overall_score, rm.tie_rank, rm.prior_score, rm.price_in, rm.price_out,
           rm.tokens_per_char, rm.mean_tokens_out, rm.mean_cost, rm.mean_latency_ms,
           -- Inner products of the model's per-cluster sums with the neighbour weights.
           -(rm.score_sums <#> weights) AS ws, -(rm.ns <#> weights) AS wn,
           CASE WHEN lambda > 0 THEN -(rm.production_sums <#> weights) ELSE 0 END AS pws,
           CASE WHEN lambda > 0 THEN -(rm.production_ns <#> weights) ELSE 0 END AS pwn,
           CASE WHEN costed THEN
             ROW(-(rm.tokens_out_sums <#> weights), -(rm.answer_ns <#> weights),
                 -(rm.cost_sums <#> weights), -(rm.cost_ns <#> weights),
                 -(rm.latency_sums <#> weights), -(rm.latency_ns <#> weights)
             )::avengers.pooled_costs
           END AS cost_sums
    FROM avengers.routing_models rm
    WHERE rm.clustering_id = clustering
      AND rm.active
      -- A model without calibration outcomes has only the update rule's evidence.
      AND (rm.calibrated OR lambda > 0)
      AND (rm.endpoint IS NOT NULL OR NOT require_endpoint)
      AND (rm.name = ANY (models) OR models IS NULL)
    -- OFFSET 0: each inner product computed once, not once per expression that reads it.
    OFFSET 0) AS m
  -- Without a prior (shrinkage 0) a model needs outcomes near the query.
  WHERE (best_overall OR shrinkage > 0 OR m.wn + lambda * m.pwn > 0)
    AND CASE WHEN best_overall THEN m.prior_score IS NOT NULL
             ELSE m.wn + lambda * m.pwn + shrinkage > 0 END;
END;
COMMENT ON FUNCTION avengers.candidates(integer, sparsevec, double precision, double precision, integer, boolean, text[], double precision, boolean, boolean) IS
  'A query''s candidate models in a clustering under a policy: score, evidence and expected cost of each eligible model (what avengers.decide ranks).';

-- A candidate's entry in the query's nearest cluster (the entry at `onehot` of its sparse
-- vectors). Read only for the candidates a decision returns, after the ranking: six inner
-- products per model, each a pass over the model's clusters, were a fifth of a plain route's
-- server time at k = 64 and most of it at k = 4,096 (docs/benchmarks.md).
CREATE FUNCTION avengers.candidate_entry(clustering integer, model integer, onehot sparsevec)
RETURNS TABLE (entry_sum double precision, entry_n double precision,
               entry_wilson_low double precision, entry_wilson_high double precision,
               entry_feedback double precision, entry_production_mean double precision,
               endpoint text, served_name text, api_key_env text,
               overall_score double precision)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT -(rm.score_sums <#> onehot), -(rm.ns <#> onehot), -(rm.wilson_lows <#> onehot),
         -(rm.wilson_highs <#> onehot), -(rm.production_counts <#> onehot),
         -(rm.production_means <#> onehot), rm.endpoint, rm.served_name, rm.api_key_env,
         rm.overall_score
  FROM avengers.routing_models rm
  WHERE rm.clustering_id = clustering AND rm.model_id = model;
END;
COMMENT ON FUNCTION avengers.candidate_entry(integer, integer, sparsevec) IS
  'A model''s entry in one cluster of a clustering (onehot: the cluster''s routing_centroids.onehot), from routing_models: calibration outcome sum and count, Wilson bounds, feedback counted and its decayed mean.';

-- The score and cost ranges of a query's candidates: what the trade-off normalises by. A
-- function of its own (a second pass over the candidates) that only a cost-aware decision
-- calls, so a plain one plans no more than it runs.
CREATE FUNCTION avengers.candidate_ranges(
  clustering integer, weights sparsevec, lambda double precision,
  shrinkage double precision, completions integer, require_endpoint boolean, models text[],
  chars double precision, best_overall boolean)
RETURNS double precision[]
LANGUAGE sql STABLE
SET plan_cache_mode = force_generic_plan
BEGIN ATOMIC
  SELECT ARRAY[min(c.score), max(c.score), min(c.cost), max(c.cost), min(c.latency),
               max(c.latency)]
  FROM avengers.candidates(clustering, weights, lambda, shrinkage, completions,
                           require_endpoint, models, chars, true, best_overall) AS c;
END;
COMMENT ON FUNCTION avengers.candidate_ranges(integer, sparsevec, double precision, double precision, integer, boolean, text[], double precision, boolean) IS
  'min and max of the candidates'' scores, expected costs and expected latencies for one query (avengers.candidates): the ranges a trade-off normalises by.';

-- What a candidate is ranked by: whether it fits the ceilings, its utility under a trade-off
-- (only when costed) and the plain order's key (utility, or the score when quality alone
-- counts). Inlined where it is called: the one place these rules are written.
CREATE FUNCTION avengers.rank_keys(
  costed boolean, alpha double precision, ceiling double precision,
  latency_ceiling double precision, latency_weight double precision, score double precision,
  cost double precision, latency double precision, ranges double precision[])
RETURNS TABLE (fits boolean, utility double precision, k2 double precision)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
  SELECT j.fits, j.utility,
         CASE WHEN alpha = 1 AND latency_weight IS NULL THEN score ELSE j.utility END
  FROM (SELECT coalesce(ceiling IS NULL OR cost <= ceiling, false)
                 AND coalesce(latency_ceiling IS NULL OR latency <= latency_ceiling, false)
                 AS fits,
               CASE WHEN costed THEN
                 avengers.tradeoff_utility(alpha, latency_weight, score, cost, latency, ranges)
               END AS utility) AS j;
END;
COMMENT ON FUNCTION avengers.rank_keys(boolean, double precision, double precision, double precision, double precision, double precision, double precision, double precision, double precision[]) IS
  'A candidate''s ranking keys: whether it fits max_cost and max_latency_ms, its trade-off utility (costed decisions only) and the plain order''s key (the utility, or the score when alpha = 1 without a latency weight).';

-- Targeted exploration's leader and plausible candidates for one query: a second pass over its
-- candidates (avengers.candidates, ranked by avengers.rank_keys), called only by a decision that
-- explores this way. Every candidate is plausible when the nearest cluster moved.
CREATE FUNCTION avengers.targeted_candidates_of(
  clustering integer, cluster integer, weights sparsevec,
  lambda double precision, shrinkage double precision, completions integer,
  require_endpoint boolean, models text[], chars double precision, best_overall boolean,
  costed boolean, alpha double precision, ceiling double precision,
  latency_ceiling double precision, latency_weight double precision, gap double precision)
RETURNS integer[]
LANGUAGE sql STABLE
SET plan_cache_mode = force_generic_plan
BEGIN ATOMIC
  WITH x AS MATERIALIZED (
    SELECT CASE WHEN costed THEN
             avengers.candidate_ranges(clustering, weights, lambda, shrinkage,
                                       completions, require_endpoint, models, chars,
                                       best_overall)
           END AS ranges,
           CASE WHEN EXISTS (SELECT 1 FROM avengers.production_evidence e
                             WHERE e.cluster = targeted_candidates_of.cluster
                               AND e.clustering_id = clustering AND e.cluster_moved)
                THEN 'Infinity'::double precision ELSE gap END AS gap)
  SELECT avengers.targeted_candidates(
           ARRAY[c.model_id, k.k2, c.score, c.tie_rank, c.evidence, x.gap])
  FROM x
  CROSS JOIN avengers.candidates(clustering, weights, lambda, shrinkage, completions,
                                 require_endpoint, models, chars, costed, best_overall) AS c
  CROSS JOIN LATERAL avengers.rank_keys(costed, alpha, ceiling, latency_ceiling,
                                        latency_weight, c.score, c.cost, c.latency,
                                        x.ranges) AS k
  WHERE k.fits;
END;
COMMENT ON FUNCTION avengers.targeted_candidates_of(integer, integer, sparsevec, double precision, double precision, integer, boolean, text[], double precision, boolean, boolean, double precision, double precision, double precision, double precision, double precision) IS
  'Targeted exploration''s candidates for one query (avengers.targeted_candidates over its candidates within the ceilings): the leader''s model id, then the plausible ones'' in the plain order; every candidate is plausible when the nearest cluster moved (production_evidence.cluster_moved).';

-- What a decision needs of its clustering, and the policy resolved against it: defaults for
-- unset fields, the clustering's production weight and exploration for unset ones (targeted
-- exploration's overlap as the plausibility gap it sets). Checked once
-- per statement: the policy's fields, the clustering's size.
CREATE FUNCTION avengers.routing_context(policy avengers.routing_policy)
RETURNS TABLE (clustering_id integer, dimension integer, clusters integer, rho double precision,
               mean_chars double precision, novelty_threshold double precision,
               lambda double precision, explore text, share double precision,
               gap double precision, costed boolean,
               alpha double precision, ceiling double precision, top_n integer,
               shrinkage double precision, completions integer, require_endpoint boolean,
               models text[], ood_policy text, neighbours integer, temperature double precision,
               latency_ceiling double precision, latency_weight double precision)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT s.clustering_id, s.dimension, s.clusters, s.rho, s.mean_chars, s.novelty_threshold,
         coalesce((policy).production_weight, s.production_weight),
         coalesce((policy).exploration, s.exploration),
         coalesce((policy).exploration_share, s.exploration_share),
         -- Targeted exploration's plausibility gap, once per statement.
         CASE WHEN coalesce((policy).exploration, s.exploration) = 'targeted' THEN
           avengers.plausibility_gap(coalesce((policy).exploration_overlap, s.exploration_overlap))
         END,
         (policy).tradeoff IS NOT NULL OR (policy).max_cost IS NOT NULL
           OR (policy).max_latency_ms IS NOT NULL OR (policy).latency_weight IS NOT NULL,
         coalesce((policy).tradeoff, 1), (policy).max_cost, coalesce((policy).top_n, 1),
         coalesce((policy).shrinkage, 1), coalesce((policy).completions, 1),
         coalesce((policy).require_endpoint, false), (policy).models,
         coalesce((policy).ood_policy, 'flag'), coalesce((policy).neighbours, 16),
         coalesce((policy).temperature, 0.1), (policy).max_latency_ms, (policy).latency_weight
  FROM avengers.routing_state s
  WHERE CASE WHEN (policy).clustering_id IS NULL THEN s.active
             ELSE s.clustering_id = (policy).clustering_id END
    AND avengers.policy_valid(policy)
    AND (s.pooled OR avengers.clustering_too_large(s.clustering_id, s.clusters));
END;
COMMENT ON FUNCTION avengers.routing_context(avengers.routing_policy) IS
  'The clustering a policy routes with (the active one unless it names another) and the policy resolved against it: what avengers.decide_query takes. No row: no clustering to route with.';

-- The decision for one query in a routing context (avengers.routing_context's columns, passed
-- one by one: a record's fields would be unpacked again on every read, and read as arguments
-- a policy's constant fields fold into the plan, so a plain decision plans none of the cost,
-- latency or pin rules). See the top of this file for the rule; decide and decide_many both run
-- it, once per query.
CREATE FUNCTION avengers.decide_query(
  clustering_id integer, dimension integer, clusters integer, rho double precision,
  mean_chars double precision, novelty_threshold double precision, lambda double precision,
  explore text, share double precision, gap double precision, costed boolean,
  alpha double precision, ceiling double precision, top_n integer, shrinkage double precision, completions integer,
  require_endpoint boolean, models text[], ood_policy text, neighbours integer,
  temperature double precision, latency_ceiling double precision, latency_weight double precision,
  query vector, ord integer, seed bigint, prompt_chars integer, pinned text,
  mahalanobis double precision, novelty_clustering integer)
RETURNS SETOF avengers.decision
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT ord, clustering_id, p.cluster, p.distance, p.novelty, p.novelty > 1,
         CASE WHEN p.novelty > 1 THEN ood_policy END,
         CASE WHEN st.explore <> 'off' THEN st.explore END,
         CASE WHEN st.explore <> 'off' AND r.model_id IS NOT NULL THEN
           r.fitting > 0 AND r.first_pk < r.best_pk END,
         lambda,
         r.rank::integer, r.model_id, r.name, e.endpoint, e.served_name, e.api_key_env,
         r.score, r.evidence,
         -- The probability the candidate had of going first: 1 or 0 without exploration (with a
         -- pin, or nothing within the ceiling); under epsilon, the plain order's best keeps its
         -- place with 1 - share, and each of the candidates within the ceiling is drawn with
         -- share / their number; under targeted, 1 - share and share / |P| (see the top).
         CASE WHEN st.explore = 'off' OR r.fitting = 0 THEN (r.rank = 1)::integer::double precision
              WHEN st.explore = 'epsilon' THEN
                CASE WHEN r.pk = r.best_pk THEN 1 - share ELSE 0 END + share / r.fitting
              WHEN st.explore = 'targeted' THEN
                avengers.targeted_propensity(p.targeted, r.model_id, share)
         END,
         CASE WHEN e.entry_n > 0 THEN e.entry_sum / e.entry_n END, e.entry_n::integer,
         CASE WHEN e.entry_n > 0 THEN e.entry_wilson_low END,
         CASE WHEN e.entry_n > 0 THEN e.entry_wilson_high END,
         e.overall_score, e.entry_feedback::integer,
         CASE WHEN e.entry_feedback > 0 THEN e.entry_production_mean END, r.cost,
         CASE WHEN r.model_id IS NOT NULL AND costed THEN NOT r.fits END, r.utility,
         r.latency
  FROM (
    -- The query checked and normalised (once, not once per centroid compared with); a pinned
    -- model turns exploration off (a conversation keeps its model).
    SELECT CASE WHEN pinned IS NOT NULL THEN 'off' ELSE explore END AS explore,
           l2_normalize(query) AS u,
           -- Without a seed: the statement's time and the query's norm (SQL users; the clients
           -- always pass one).
           coalesce(seed, hashint8extended((extract(epoch FROM statement_timestamp()) * 1e6)::bigint,
                                           hashfloat8(vector_norm(query))::bigint)) AS draw_seed
    WHERE CASE WHEN query IS NOT NULL AND vector_dims(query) = dimension THEN true
               ELSE avengers.query_dimension_error(dimension, clustering_id, ord) END
    OFFSET 0) AS st
  CROSS JOIN LATERAL (
    -- The neighbourhood and the novelty: the Mahalanobis distance to the calibration Gaussian
    -- (the caller's, when computed for this clustering) over its threshold, else the distance
    -- over the nearest cluster's OOD distance; whether an out-of-distribution query is ranked
    -- by the models' calibration priors; and, for a cost-aware decision, the candidates'
    -- ranges.
    SELECT v.*,
           -- Targeted exploration's draw, and its leader and plausible candidates (a second
           -- pass over the candidates, only when targeted, as candidate_ranges is only when
           -- costed).
           CASE WHEN st.explore = 'targeted' THEN
             avengers.hash_uniform(st.draw_seed, 'targeted')
           END AS draw,
           CASE WHEN st.explore = 'targeted' THEN
             avengers.targeted_candidates_of(clustering_id, v.cluster, v.weights, lambda,
                                             shrinkage, completions, require_endpoint, models,
                                             coalesce(prompt_chars, mean_chars), v.best_overall, costed, alpha, ceiling,
                                             latency_ceiling, latency_weight, gap)
           END AS targeted,
           CASE WHEN costed THEN
             avengers.candidate_ranges(clustering_id, v.weights, lambda,
                                       shrinkage, completions, require_endpoint,
                                       models, coalesce(prompt_chars, mean_chars),
                                       v.best_overall)
           END AS ranges
    FROM (
      SELECT n.*, x.novelty,
             coalesce(x.novelty > 1 AND ood_policy = 'best-overall', false)
               AS best_overall
      FROM (
        -- One pass over the clustering's centroids: the nearest (ties: lower cluster), and the
        -- `neighbours` nearest weighed, as one sparsevec literal.
        SELECT min(w.cluster) FILTER (WHERE w.first) AS cluster, min(w.nearest) AS distance,
               min(w.ood_distance) FILTER (WHERE w.first) AS ood_distance,
               format('{%s:1}/%s', min(w.cluster) FILTER (WHERE w.first) + 1,
                      clusters)::sparsevec AS onehot,
               format('{%s}/%s',
                      string_agg(w.weight_key || w.w::text, ',') FILTER (WHERE w.w >= 1e-30),
                      clusters)::sparsevec AS weights
        FROM (
          SELECT l.cluster, l.weight_key, l.ood_distance, l.nearest, l.first,
                 avengers.neighbour_weight(l.distance, l.nearest,
                                           temperature, rho) AS w
          FROM (
            SELECT o.*, first_value(o.distance) OVER w AS nearest,
                   row_number() OVER w = 1 AS first
            FROM (
              SELECT c.cluster, c.weight_key, c.ood_distance, c.centroid <-> st.u AS distance
              FROM avengers.routing_centroids c
              WHERE c.clustering_id = decide_query.clustering_id
              ORDER BY 4, 1
              LIMIT greatest(neighbours, 1)) AS o
            WINDOW w AS (ORDER BY o.distance, o.cluster)) AS l) AS w) AS n
      CROSS JOIN LATERAL (
        SELECT CASE WHEN mahalanobis IS NOT NULL AND novelty_clustering = clustering_id
                         AND novelty_threshold IS NOT NULL THEN
                      CASE WHEN novelty_threshold > 0 THEN mahalanobis / novelty_threshold
                           WHEN mahalanobis > 0 THEN 'Infinity'::double precision ELSE 0 END
                    WHEN novelty_threshold IS NOT NULL THEN
                      avengers.novelty(clustering_id, query)
                    WHEN n.ood_distance > 0 THEN n.distance / n.ood_distance
                    WHEN n.ood_distance = 0 THEN
                      CASE WHEN n.distance > 0 THEN 'Infinity'::double precision ELSE 0 END
               END AS novelty) AS x) AS v
    OFFSET 0) AS p
  LEFT JOIN LATERAL (
    -- Ranked in one sort: the pinned model first, then, when exploring, the candidates by
    -- their draws; then within the ceiling before outside it, the cheapest first outside it;
    -- then by utility (or score), score, tie_rank. The window over all of it also counts the
    -- candidates within the ceiling and finds the plain order's best, so the decision knows
    -- whether exploration changed its first.
    SELECT f.*,
           row_number() OVER w AS rank,
           count(*) FILTER (WHERE f.fits) OVER w AS fitting,
           max(f.pk) FILTER (WHERE f.fits) OVER w AS best_pk,
           first_value(f.pk) OVER w AS first_pk
    FROM (
      SELECT c.model_id, c.name, c.tie_rank, c.score, c.evidence, c.cost, c.latency,
             k.fits, k.utility, k.k2,
             -- The plain order as one number (what finds its best): utility or score, then
             -- score, then tie_rank, each step far below what the one before tells apart.
             k.k2 + c.score * 1e-9 - c.tie_rank * 1e-12 AS pk,
             -- First: the pinned model, else, when exploring, the candidates within the ceiling
             -- by their draws (targeted's pick, when its draw says so; thompson's sample of each
             -- one's posterior; epsilon's uniform number, when its coin says so).
             CASE WHEN NOT k.fits THEN NULL
                  WHEN c.name = pinned THEN 'Infinity'::double precision
                  WHEN st.explore = 'targeted' THEN
                    CASE WHEN c.model_id = avengers.targeted_pick(p.targeted, p.draw, share)
                      THEN 'Infinity'::double precision END
                  WHEN st.explore = 'thompson'
                    OR (st.explore = 'epsilon' AND avengers.uniform(st.draw_seed, -1) < share)
                    THEN avengers.exploration_draw(st.explore, st.draw_seed, c.model_id, c.score,
                                                   c.evidence)
             END AS first,
             -- Then within the ceiling, else the cheapest.
             CASE WHEN k.fits THEN 'Infinity'::double precision
                  ELSE -coalesce(c.cost, 'Infinity') END AS within
      FROM avengers.candidates(clustering_id, p.weights, lambda, shrinkage,
                               completions, require_endpoint, models,
                               coalesce(prompt_chars, mean_chars), costed,
                               p.best_overall) AS c
      CROSS JOIN LATERAL avengers.rank_keys(costed, alpha, ceiling, latency_ceiling,
                                            latency_weight, c.score, c.cost, c.latency,
                                            p.ranges) AS k
      OFFSET 0
    ) AS f
    WINDOW w AS (ORDER BY f.first DESC NULLS LAST, f.within DESC, f.k2 DESC, f.score DESC,
                          f.tie_rank
                 ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
  ) AS r ON r.rank <= CASE WHEN r.fitting > 0 THEN top_n ELSE 1 END
            AND (r.fits OR r.fitting = 0)
  -- The nearest cluster's entry, for the candidates returned only.
  -- OFFSET 0 keeps the lookup a per-row scan: inlined, it became a hash join whose table was
  -- built and searched for unmatched rows once per query.
  LEFT JOIN LATERAL (SELECT * FROM avengers.candidate_entry(clustering_id, r.model_id, p.onehot)
                     OFFSET 0) AS e ON true;
END;
COMMENT ON FUNCTION avengers.decide_query(integer, integer, integer, double precision, double precision, double precision, double precision, text, double precision, double precision, boolean, double precision, double precision, integer, double precision, integer, boolean, text[], text, integer, double precision, double precision, double precision, vector, integer, bigint, integer, text, double precision, integer) IS
  'The decision for one query in a routing context (avengers.routing_context): the body avengers.decide and avengers.decide_many share.';

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
  SELECT d.*
  FROM avengers.routing_context(policy) AS c
  CROSS JOIN LATERAL avengers.decide_query(
    c.clustering_id, c.dimension, c.clusters, c.rho, c.mean_chars, c.novelty_threshold,
    c.lambda, c.explore, c.share, c.gap, c.costed, c.alpha, c.ceiling, c.top_n, c.shrinkage,
    c.completions, c.require_endpoint, c.models, c.ood_policy, c.neighbours, c.temperature,
    c.latency_ceiling, c.latency_weight,
    query, 1, seed, prompt_chars, pinned, mahalanobis, novelty_clustering) AS d
  -- In rank order whatever the plan's join order (the entry lookup joins after the ranking).
  ORDER BY d.rank;
END;
COMMENT ON FUNCTION avengers.decide(vector, avengers.routing_policy, bigint, integer, text, double precision, integer) IS
  'The routing decision for one query vector under a policy (avengers.policy(...)): one row per candidate, in rank order (model NULL: no eligible model; no row: no clustering to route with). seed makes exploration''s draws reproducible; prompt_chars is the query''s length for its expected cost (NULL: the calibration texts'' mean); pinned is a model to ask first when it is a candidate (a conversation''s; it turns exploration off); mahalanobis, the query''s distance to the calibration Gaussian of novelty_clustering (routing.novelty), spares computing it. SELECT * FROM avengers.decide(v, avengers.policy(3, tradeoff => 0.5)).';

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
  -- The context once for the statement; MATERIALIZED keeps it from being recomputed per query.
  WITH c AS MATERIALIZED (SELECT * FROM avengers.routing_context(policy))
  SELECT d.*
  FROM c
  CROSS JOIN unnest(queries) WITH ORDINALITY AS x(v, ord)
  CROSS JOIN LATERAL avengers.decide_query(
    c.clustering_id, c.dimension, c.clusters, c.rho, c.mean_chars, c.novelty_threshold,
    c.lambda, c.explore, c.share, c.gap, c.costed, c.alpha, c.ceiling, c.top_n, c.shrinkage,
    c.completions, c.require_endpoint, c.models, c.ood_policy, c.neighbours, c.temperature,
    c.latency_ceiling, c.latency_weight,
    x.v, x.ord::integer,
    CASE WHEN seeds IS NULL THEN NULL ELSE seeds[x.ord] END,
    CASE WHEN prompt_chars IS NULL THEN NULL ELSE prompt_chars[x.ord] END,
    CASE WHEN pinned IS NULL THEN NULL ELSE pinned[x.ord] END,
    CASE WHEN mahalanobis IS NULL THEN NULL ELSE mahalanobis[x.ord] END,
    novelty_clustering) AS d
  ORDER BY d.ord, d.rank;
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
