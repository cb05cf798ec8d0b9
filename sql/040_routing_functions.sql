-- Routing: the nearest centroids of the active clustering, then the top-n active models by a score
-- pooled over them (route_many below; the paper's nearest-cluster rule is one setting of it).
--
-- Distance rule, everywhere: Euclidean (<->) between the L2-normalised query and the stored
-- centroid (the mean of its members' unit vectors, not renormalised). That is exactly the rule
-- K-means assigned the calibration queries with, so a calibration query routes to its own cluster.
-- Ties between equidistant centroids go to the lower cluster index (numpy's argmin does the same).
--
-- Consistency: every function here is STABLE, so all the reads of one statement (the active
-- clustering, its centroids, the profiles, the models) use that statement's snapshot. A clustering
-- switch commits in one transaction (CALL avengers.activate_clustering) and a statement sees it
-- entirely or not at all, also when route_many routes thousands of vectors.
--
-- Index: the library builds a partial HNSW index named avengers.centroids_hnsw_<clustering id>
-- only for very large clusterings (k >= 16,384 by default). When it exists, nearest_centroids takes
-- the index's `candidates` nearest centroids (hnsw.ef_search, at most 1,000) and re-ranks them by
-- the exact distance; otherwise it scans the clustering's centroids exactly. HNSW cannot promise
-- that the true nearest is among its candidates, so it is used only where the exact scan gets slow,
-- and is then approximate (figures in bench/README.md).

-- One row of a routing decision, whatever function made it.
CREATE TYPE avengers.route_row AS (
  ord integer, clustering_id integer, cluster integer, distance double precision, rank integer,
  model_id integer, model text, mean_score double precision, n integer,
  wilson_low double precision, wilson_high double precision, overall_score double precision,
  endpoint text, served_name text, api_key_env text, score double precision,
  expected_cost double precision, over_budget boolean, utility double precision);
COMMENT ON TYPE avengers.route_row IS
  'A row of a routing decision (route, route_pooled, route_many, route_many_general): one candidate model of one query, best first. model NULL: no eligible model; cluster NULL: no active clustering.';
COMMENT ON COLUMN avengers.route_row.ord IS 'Position of the query in the batch (1 for a single vector).';
COMMENT ON COLUMN avengers.route_row.clustering_id IS 'The active clustering version.';
COMMENT ON COLUMN avengers.route_row.cluster IS 'The nearest cluster.';
COMMENT ON COLUMN avengers.route_row.distance IS 'Euclidean distance of the normalised query to its centroid.';
COMMENT ON COLUMN avengers.route_row.rank IS 'Rank of the model for this query (1 = best).';
COMMENT ON COLUMN avengers.route_row.model_id IS 'Model id.';
COMMENT ON COLUMN avengers.route_row.model IS 'Model name.';
COMMENT ON COLUMN avengers.route_row.mean_score IS 'The model''s mean outcome in the nearest cluster (cluster_profiles).';
COMMENT ON COLUMN avengers.route_row.n IS 'Outcomes behind mean_score.';
COMMENT ON COLUMN avengers.route_row.wilson_low IS 'Lower Wilson 95% bound of mean_score.';
COMMENT ON COLUMN avengers.route_row.wilson_high IS 'Upper Wilson 95% bound of mean_score.';
COMMENT ON COLUMN avengers.route_row.overall_score IS 'The model''s mean outcome over all clustered calibration queries.';
COMMENT ON COLUMN avengers.route_row.endpoint IS 'models.endpoint.';
COMMENT ON COLUMN avengers.route_row.served_name IS 'models.served_name, else the name.';
COMMENT ON COLUMN avengers.route_row.api_key_env IS 'models.api_key_env.';
COMMENT ON COLUMN avengers.route_row.score IS 'The routing score (expected quality) of the model.';
COMMENT ON COLUMN avengers.route_row.expected_cost IS 'Expected cost of the request on the model (avengers.expected_cost); NULL when no trade-off or max_cost was asked, or the model has neither a price nor a measured cost.';
COMMENT ON COLUMN avengers.route_row.over_budget IS 'True when max_cost was asked and no candidate fits it: the row is then the cheapest candidate. NULL when no trade-off or max_cost was asked.';
COMMENT ON COLUMN avengers.route_row.utility IS 'tradeoff * normalised score + (1 - tradeoff) * (1 - normalised expected cost) over the query''s candidates, what the model was ranked by when tradeoff < 1. NULL when no trade-off or max_cost was asked.';

CREATE FUNCTION avengers.query_dimension_error(dim integer, clustering integer, ord integer DEFAULT 1)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
  RAISE EXCEPTION 'query vector % is NULL or does not have the % dimensions of the active clustering %',
    ord, dim, clustering
    USING ERRCODE = 'VA422',
          HINT = 'Embed queries with the embedder of the active clustering''s space: SELECT s.embedder, s.dimension FROM avengers.active_clustering k JOIN avengers.embedding_spaces s ON s.id = k.space_id.';
END
$$;
COMMENT ON FUNCTION avengers.query_dimension_error(integer, integer, integer) IS
  'Raises the routing error for a query vector that is NULL or of the wrong dimension (SQLSTATE VA422; called only when the check fails).';

CREATE FUNCTION avengers.nearest_centroids(
  queries vector[], neighbours integer DEFAULT 1, candidates integer DEFAULT 1000)
RETURNS TABLE (
  ord integer, clustering_id integer, cluster integer, distance double precision,
  neighbour integer)
LANGUAGE plpgsql STABLE
-- Resolve vector, <-> and l2_normalize in the extension's schema whatever the caller's path is.
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
  active_id integer;
  dim integer;
  bad integer;
  saved text[];
BEGIN
  SELECT k.id, k.dimension INTO active_id, dim FROM avengers.active_clustering k;
  IF active_id IS NULL OR queries IS NULL THEN
    RETURN;
  END IF;
  SELECT q.ord INTO bad
  FROM unnest(queries) WITH ORDINALITY AS q(v, ord)
  WHERE q.v IS NULL OR vector_dims(q.v) <> dim
  LIMIT 1;
  IF bad IS NOT NULL THEN
    PERFORM avengers.query_dimension_error(dim, active_id, bad::integer);
  END IF;

  IF to_regclass(format('avengers.centroids_hnsw_%s', active_id)) IS NULL THEN
    RETURN QUERY
      -- MATERIALIZED: normalise each query once, not once per centroid it is compared with.
      WITH q AS MATERIALIZED (
        SELECT t.ord, l2_normalize(t.v) AS u FROM unnest(queries) WITH ORDINALITY AS t(v, ord)
      )
      SELECT q.ord::integer, active_id, n.cluster, n.distance,
             (row_number() OVER (PARTITION BY q.ord ORDER BY n.distance, n.cluster))::integer
      FROM q
      CROSS JOIN LATERAL (
        SELECT c.cluster, c.centroid <-> q.u AS distance
        FROM avengers.centroids c
        WHERE c.clustering_id = active_id
        ORDER BY 2, 1
        LIMIT neighbours) AS n;
    RETURN;
  END IF;

  -- The literal clustering id lets the planner match the partial index; the cast to the space's
  -- dimension matches the index expression. ef_search bounds how many candidates HNSW returns.
  -- With a few thousand rows the planner may prefer scan + sort (also exact, but not what the
  -- index was built for): the two settings below make the index the only cheap order.
  saved := ARRAY[current_setting('hnsw.ef_search', true), current_setting('enable_seqscan'),
                 current_setting('enable_sort')];
  PERFORM set_config('hnsw.ef_search', greatest(candidates, neighbours, 40)::text, true),
          set_config('enable_seqscan', 'off', true),
          set_config('enable_sort', 'off', true);
  RETURN QUERY EXECUTE format($q$
    WITH q AS MATERIALIZED (
      SELECT t.ord, l2_normalize(t.v)::vector(%2$s) AS u
      FROM unnest($1) WITH ORDINALITY AS t(v, ord)
    )
    SELECT q.ord::integer, %1$s::integer, n.cluster, n.distance,
           (row_number() OVER (PARTITION BY q.ord ORDER BY n.distance, n.cluster))::integer
    FROM q
    CROSS JOIN LATERAL (
      SELECT r.cluster, r.distance
      FROM (SELECT c.cluster, c.centroid <-> q.u AS distance
            FROM avengers.centroids c
            WHERE c.clustering_id = %1$s
            ORDER BY c.centroid::vector(%2$s) <-> q.u
            LIMIT $3) AS r
      ORDER BY 2, 1
      LIMIT $2) AS n
    $q$, active_id, dim)
  USING queries, neighbours, greatest(candidates, neighbours);
  -- RETURN QUERY has run the scan to completion: put the caller's settings back.
  PERFORM set_config('hnsw.ef_search', coalesce(saved[1], '40'), true),
          set_config('enable_seqscan', saved[2], true),
          set_config('enable_sort', saved[3], true);
END
$$;
COMMENT ON FUNCTION avengers.nearest_centroids(vector[], integer, integer) IS
  'For each query vector (ord = its 1-based position): the `neighbours` nearest centroids of the active clustering by Euclidean distance of the normalised query (exact; with a centroids_hnsw_<id> index, the index''s `candidates` nearest re-ranked exactly). No rows when no clustering is active.';

-- The score of model m for a query (the default "avengers" method):
--   take the `neighbours` (L) nearest centroids c_1..c_L, distances d_1 <= ... <= d_L;
--   w_j = exp(-(d_j^2 - d_1^2) / (temperature * rho))         (rho: avengers.clustering_scale)
--   score = (sum_j w_j S[c_j,m] + shrinkage * prior[m] + dataset_prior * dprior[m])
--         / (sum_j w_j n[c_j,m] + shrinkage + dataset_prior)
-- with S and n the outcome sum and count of m in the cluster (cluster_profiles; plus the
-- production outcomes of production_profiles, decayed, times the clustering's production_weight,
-- so with weight 0 exactly the calibration ones), prior[m] the
-- model's dataset-balanced calibration mean (model_priors) and dprior[m] the mean of m's
-- per-dataset means (dataset_profiles) weighted by the neighbourhood's dataset make-up
-- pi_D = sum_j w_j count(c_j, D) / sum_j w_j size(c_j)  (cluster_datasets; renormalised over the
-- datasets m has outcomes on). Models rank by score, then tie_rank (overall calibration score,
-- then name; cluster_profiles).
-- neighbours = 1, shrinkage = 0, dataset_prior = 0 is the paper's rule exactly: score =
-- score_sum / n of the nearest cluster = its mean_score, the order of active_rank.
-- w_1 = 1, so the weights never all underflow; exp's argument is floored at -700 (Postgres
-- raises on underflow; e^-700 is 1e-304, nothing next to w_1). With rho = 0 (every calibration
-- query on its centroid) or temperature = 0 only the centroids at distance d_1 count.
--
-- Cost-aware routing (tradeoff, max_cost; both NULL by default, and then none of this runs):
-- each candidate m gets an expected cost c(m) for the request (avengers.expected_cost,
-- sql/025_costs.sql, its measured tokens and costs pooled over the same neighbours with the same
-- weights and shrinkage as its score), and with alpha = coalesce(tradeoff, 1)
--   utility(m) = alpha * (score(m) - min score) / (max score - min score)
--                + (1 - alpha) * (1 - (c(m) - min c) / (max c - min c))
-- over the query's candidates (Avengers-Pro's form; a candidate without a cost counts as the
-- most expensive). Candidates rank by utility (by score when alpha = 1, so tradeoff 1 is exactly
-- the plain rule), then score, then tie_rank, among those with c(m) <= max_cost; when none
-- fits, the cheapest alone is returned, flagged over_budget (a request still gets a model;
-- callers that must not exceed the budget check the flag). The plain rule and the cost-aware
-- one are two branches of each function behind one-time filters, so a plain route runs only its
-- own nodes.
--
-- Two implementations of that one rule, sharing the helpers below (inlined where used):
-- * route_many / route_pooled (the served path): the L nearest centroids from one exact ORDER BY
--   ... LIMIT scan of routing_centroids per query, their weights written as one sparse vector over
--   clusters (both in avengers.neighbourhood), and each model's pooled sums as pgvector inner
--   products with its sparse per-cluster sums and counts (routing_models): one row per model, no
--   per-(neighbour, model) rows. pgvector computes in float32, so scores carry ~1e-7 relative
--   rounding (decisions differ from exact arithmetic only between models within that distance).
--   Weights below 1e-30 are dropped.
-- * route_many_general: the same rule in double precision over cluster_profiles rows, with the
--   dataset-mixture prior and the HNSW index path of nearest_centroids. The served path hands over
--   to it when routing_state.pooled is false (HNSW-indexed clusterings, more than 16,000
--   clusters) or dataset_prior <> 0, behind one-time filters, so only one of them runs.

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

CREATE FUNCTION avengers.pooled_score(
  ws double precision, wn double precision, prior double precision,
  shrinkage double precision, dataset_prior double precision, dprior double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (ws + shrinkage * prior + dataset_prior * coalesce(dprior, prior))
       / nullif(wn + shrinkage + dataset_prior, 0);
COMMENT ON FUNCTION avengers.pooled_score(double precision, double precision, double precision, double precision, double precision, double precision) IS
  'Routing score from the weighted outcome sum ws and count wn over the neighbours, shrunk toward the model''s prior (and the dataset-mixture prior dprior, the prior when NULL).';

CREATE FUNCTION avengers.model_eligible(
  active boolean, endpoint text, require_endpoint boolean)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN active AND (NOT require_endpoint OR endpoint IS NOT NULL);
COMMENT ON FUNCTION avengers.model_eligible(boolean, text, boolean) IS
  'Whether routing may pick a model: active, and with an endpoint when require_endpoint.';

-- The quality-cost trade-off (Avengers-Pro's form): both terms normalised to [0, 1] over the
-- query's candidates, so tradeoff means the same whatever the scale of scores and prices. A
-- candidate without an expected cost counts as the most expensive; equal scores (or costs) all
-- count as the best.
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

-- The checks of a cost-aware route's arguments, raised only when one fails.
CREATE FUNCTION avengers.cost_argument_error(
  tradeoff double precision, max_cost double precision, completions integer)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
  IF NOT coalesce(tradeoff BETWEEN 0 AND 1, true) THEN
    RAISE EXCEPTION 'tradeoff must be between 0 and 1, got %', tradeoff USING ERRCODE = 'VA422';
  ELSIF NOT coalesce(max_cost >= 0, true) THEN
    RAISE EXCEPTION 'max_cost must be >= 0, got %', max_cost USING ERRCODE = 'VA422';
  END IF;
  RAISE EXCEPTION 'completions must be >= 1, got %', completions USING ERRCODE = 'VA422';
END
$$;
COMMENT ON FUNCTION avengers.cost_argument_error(double precision, double precision, integer) IS
  'Raises the error (SQLSTATE VA422) for a tradeoff outside [0, 1], a negative max_cost or completions below 1 (called only when a check fails).';

CREATE FUNCTION avengers.cost_arguments_valid(
  tradeoff double precision, max_cost double precision, completions integer)
RETURNS boolean
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN coalesce(tradeoff BETWEEN 0 AND 1, true) AND coalesce(max_cost >= 0, true)
                 AND coalesce(completions >= 1, false) THEN true
            ELSE avengers.cost_argument_error(tradeoff, max_cost, completions) END;
COMMENT ON FUNCTION avengers.cost_arguments_valid(double precision, double precision, integer) IS
  'True when a cost-aware route''s tradeoff, max_cost and completions are valid; raises (VA422) otherwise.';

-- LATERAL ... OFFSET 0 where it is used: one index probe of cluster_profiles_key per result row,
-- whatever the statistics (a plain join let the planner hash all of cluster_profiles per call).
CREATE FUNCTION avengers.profile_entry(of_cluster integer, of_model integer)
RETURNS TABLE (mean_score double precision, n integer, wilson_low double precision,
               wilson_high double precision)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT p.mean_score, p.n, p.wilson_low, p.wilson_high
  FROM avengers.cluster_profiles p
  WHERE p.cluster = of_cluster AND p.model_id = of_model
  OFFSET 0;
END;
COMMENT ON FUNCTION avengers.profile_entry(integer, integer) IS
  'A model''s served profile entry in one cluster (mean, n, Wilson bounds): what a routing decision reports for its nearest cluster. Inlined where it is called.';

-- The general path: route_many's rule in double precision (see above), over cluster_profiles.
CREATE FUNCTION avengers.route_many_general(
  queries vector[], top_n integer DEFAULT 1, require_endpoint boolean DEFAULT false,
  neighbours integer DEFAULT 16, temperature double precision DEFAULT 0.1,
  shrinkage double precision DEFAULT 1, dataset_prior double precision DEFAULT 0,
  tradeoff double precision DEFAULT NULL, max_cost double precision DEFAULT NULL,
  prompt_chars integer[] DEFAULT NULL, completions integer DEFAULT 1)
RETURNS SETOF avengers.route_row
LANGUAGE sql STABLE
-- A SET clause keeps it from being inlined into route / route_many, whose plans would otherwise
-- initialise all of it on every call, also when a one-time filter skips it.
SET plan_cache_mode = force_generic_plan
BEGIN ATOMIC
  WITH near AS MATERIALIZED (
    SELECT nc.ord, nc.clustering_id, nc.cluster, nc.distance, nc.neighbour
    FROM avengers.nearest_centroids(queries, greatest(neighbours, 1)) AS nc
  ),
  head AS (
    SELECT h.ord, h.clustering_id, h.cluster, h.distance FROM near h WHERE h.neighbour = 1
  ),
  weights AS (
    SELECT nb.ord, nb.clustering_id, nb.cluster,
           avengers.neighbour_weight(nb.distance, h.distance, temperature, s.rho) AS w
    FROM near nb
    JOIN head h ON h.ord = nb.ord
    LEFT JOIN avengers.clustering_scale s ON s.clustering_id = nb.clustering_id
  ),
  -- Every model of each neighbour cluster; LATERAL ... OFFSET 0 keeps it one index probe of
  -- cluster_profiles_key per neighbour (as a plain join the planner, expecting 1,000 rows from
  -- nearest_centroids, hashed the whole profile table on every call).
  pooled AS (
    SELECT wt.ord, p.model_id, sum(wt.w * p.score_sum) AS ws, sum(wt.w * p.n) AS wn
    FROM weights wt
    CROSS JOIN LATERAL (
      SELECT cp.model_id, cp.score_sum::double precision AS score_sum,
             cp.n::double precision AS n
      FROM avengers.cluster_profiles cp
      WHERE cp.cluster = wt.cluster AND cp.clustering_id = wt.clustering_id
      -- Production outcomes at the clustering's weight, as in routing_models.
      UNION ALL
      SELECT pp.model_id, k.production_weight * pp.decayed_sum, k.production_weight * pp.decayed_n
      FROM avengers.production_profiles pp
      JOIN avengers.active_clustering k ON k.id = pp.clustering_id
      WHERE pp.cluster = wt.cluster AND pp.clustering_id = wt.clustering_id
        AND k.production_weight > 0
      OFFSET 0) AS p
    GROUP BY wt.ord, p.model_id
  ),
  -- Measured tokens and costs of each model near the query: only for a cost-aware route.
  pooled_costs AS (
    SELECT wt.ord, c.model_id, sum(wt.w * c.tokens_out_sum) AS wo, sum(wt.w * c.answers) AS wa,
           sum(wt.w * c.cost_sum) AS wc, sum(wt.w * c.cost_answers) AS wca
    FROM weights wt
    CROSS JOIN LATERAL (
      SELECT cc.model_id, cc.tokens_out_sum, cc.answers, cc.cost_sum, cc.cost_answers
      FROM avengers.cluster_costs cc
      WHERE cc.cluster = wt.cluster AND cc.clustering_id = wt.clustering_id OFFSET 0) AS c
    WHERE tradeoff IS NOT NULL OR max_cost IS NOT NULL
    GROUP BY wt.ord, c.model_id
  ),
  mixture AS (
    SELECT wt.ord, cd.dataset_id, sum(wt.w * cd.n) AS wd
    FROM weights wt
    JOIN avengers.cluster_datasets cd
      ON cd.cluster = wt.cluster AND cd.clustering_id = wt.clustering_id
    WHERE dataset_prior <> 0
    GROUP BY wt.ord, cd.dataset_id
  ),
  mixed AS (
    SELECT mx.ord, dp.model_id, sum(mx.wd * dp.mean_score) / nullif(sum(mx.wd), 0) AS dprior
    FROM mixture mx
    JOIN avengers.dataset_profiles dp ON dp.dataset_id = mx.dataset_id
    GROUP BY mx.ord, dp.model_id
  ),
  scored AS (
    SELECT h.ord, mp.model_id, m.name AS model, mp.overall_score, mp.tie_rank, m.endpoint,
           coalesce(m.served_name, m.name) AS served_name, m.api_key_env,
           avengers.pooled_score(coalesce(pl.ws, 0), coalesce(pl.wn, 0), mp.prior_score, shrinkage,
                                 dataset_prior, mx.dprior) AS score,
           coalesce(pl.wn, 0) AS wn,
           CASE WHEN tradeoff IS NOT NULL OR max_cost IS NOT NULL THEN
             avengers.expected_cost(
               m.cost_in_per_m, m.cost_out_per_m,
               avengers.prompt_tokens(
                 coalesce(prompt_chars[h.ord], (SELECT s.mean_chars FROM avengers.routing_state s)),
                 mc.tokens_per_char),
               avengers.pooled_mean(coalesce(pc.wo, 0), coalesce(pc.wa, 0), mc.tokens_out, shrinkage),
               avengers.pooled_mean(coalesce(pc.wc, 0), coalesce(pc.wca, 0), mc.cost, shrinkage),
               completions)
           END AS cost
    FROM head h
    JOIN avengers.model_priors mp ON mp.clustering_id = h.clustering_id
    JOIN avengers.models m ON m.id = mp.model_id
    LEFT JOIN pooled pl ON pl.ord = h.ord AND pl.model_id = mp.model_id
    LEFT JOIN mixed mx ON mx.ord = h.ord AND mx.model_id = mp.model_id
    LEFT JOIN pooled_costs pc ON pc.ord = h.ord AND pc.model_id = mp.model_id
    LEFT JOIN avengers.model_costs mc ON mc.model_id = mp.model_id
    WHERE avengers.model_eligible(m.active, m.endpoint, require_endpoint)
  ),
  -- The trade-off's rule (see above); without tradeoff and max_cost every row fits and the
  -- order is score, then tie_rank.
  bounded AS (
    SELECT sc.*, coalesce(max_cost IS NULL OR sc.cost <= max_cost, false) AS fits
    FROM scored sc
    -- Without a prior (shrinkage = dataset_prior = 0) a model needs outcomes near the query.
    WHERE sc.score IS NOT NULL AND (sc.wn > 0 OR shrinkage + dataset_prior > 0)
  ),
  windowed AS (
    SELECT b.*,
           CASE WHEN tradeoff IS NOT NULL OR max_cost IS NOT NULL THEN
             avengers.tradeoff_utility(coalesce(tradeoff, 1), b.score, min(b.score) OVER w,
                                       max(b.score) OVER w, b.cost, min(b.cost) OVER w,
                                       max(b.cost) OVER w)
           END AS utility,
           bool_or(b.fits) OVER w AS any_fits
    FROM bounded b
    WINDOW w AS (PARTITION BY b.ord)
  ),
  ranked AS (
    SELECT x.*,
           row_number() OVER (
             PARTITION BY x.ord
             ORDER BY CASE WHEN x.any_fits THEN 0 ELSE coalesce(x.cost, 'Infinity') END,
                      CASE WHEN coalesce(tradeoff, 1) = 1 THEN x.score ELSE x.utility END DESC,
                      x.score DESC, x.tie_rank) AS position
    FROM windowed x
    WHERE x.fits OR NOT x.any_fits
  )
  SELECT q.ord::integer, h.clustering_id, h.cluster, h.distance, r.position::integer,
         r.model_id, r.model, p.mean_score, p.n, p.wilson_low, p.wilson_high, r.overall_score,
         r.endpoint, r.served_name, r.api_key_env, r.score, r.cost,
         CASE WHEN r.model_id IS NOT NULL AND (tradeoff IS NOT NULL OR max_cost IS NOT NULL)
              THEN NOT r.fits END,
         r.utility
  FROM generate_subscripts(queries, 1) AS q(ord)
  LEFT JOIN head h ON h.ord = q.ord
  LEFT JOIN ranked r
    ON r.ord = q.ord AND r.position <= CASE WHEN r.any_fits THEN top_n ELSE 1 END
  LEFT JOIN LATERAL avengers.profile_entry(h.cluster, r.model_id) AS p ON true
  WHERE avengers.cost_arguments_valid(tradeoff, max_cost, completions)
  ORDER BY q.ord, r.position;
END;
COMMENT ON FUNCTION avengers.route_many_general(vector[], integer, boolean, integer, double precision, double precision, double precision, double precision, double precision, integer[], integer) IS
  'route_many in double precision over cluster_profiles and cluster_costs rows, with the dataset-mixture prior and the HNSW centroid index: what route and route_many hand over to when routing_state.pooled is false or dataset_prior <> 0. Same arguments and rows as route_many.';

-- The served path's neighbourhood of one normalised query u: the nearest centroid (ties: lower
-- cluster) and its distance, and the `neighbours` nearest centroids' weights as one sparsevec
-- over clusters (entry cluster + 1; weights below 1e-30 left out, float32 cannot hold them),
-- in one pass over routing_centroids. Plain SQL, no SET clause: inlined where route_pooled and
-- route_many call it (once per query in a batch), so both run the same expressions.
CREATE FUNCTION avengers.neighbourhood(
  u vector, neighbours integer, temperature double precision, rho double precision,
  clusters integer)
RETURNS TABLE (cluster integer, distance double precision, weights sparsevec)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT min(nb.cluster) FILTER (WHERE nb.distance = nb.nearest),
         min(nb.nearest),
         format('{%s}/%s', string_agg(nb.weight_key || nb.w::text, ',') FILTER (WHERE nb.w >= 1e-30),
                clusters)::sparsevec
  FROM (
    SELECT o.cluster, o.weight_key, o.distance, o.nearest,
           avengers.neighbour_weight(o.distance, o.nearest, temperature, rho) AS w
    FROM (
      SELECT l.*, first_value(l.distance) OVER (ORDER BY l.distance, l.cluster) AS nearest
      FROM (
        SELECT c.cluster, c.weight_key, c.centroid <-> u AS distance
        FROM avengers.routing_centroids c
        ORDER BY 3, 1
        LIMIT greatest(neighbours, 1)) AS l) AS o) AS nb;
END;
COMMENT ON FUNCTION avengers.neighbourhood(vector, integer, double precision, double precision, integer) IS
  'Nearest centroid, its distance and the neighbours'' weights (sparsevec over clusters) of a normalised query in the active clustering''s routing_centroids: the part route_pooled and route_many share.';

-- Batch routing with a trade-off or a cost ceiling, on the served path (route_many's body with
-- each candidate's expected cost, then the trade-off's rule). A function of its own, with a SET
-- clause, so that route_many and route call it as one node and a plain route does not pay for
-- setting up its plan. No rows when the served path does not apply (routing_state.pooled false).
CREATE FUNCTION avengers.route_many_costed(
  queries vector[], top_n integer, require_endpoint boolean, neighbours integer,
  temperature double precision, shrinkage double precision, tradeoff double precision,
  max_cost double precision, prompt_chars integer[], completions integer)
RETURNS SETOF avengers.route_row
LANGUAGE sql STABLE
SET plan_cache_mode = force_generic_plan
SET work_mem = '64MB'
BEGIN ATOMIC
  WITH st AS MATERIALIZED (
    SELECT s.clustering_id, s.dimension, s.clusters, s.rho, s.mean_chars
    FROM avengers.routing_state s
    WHERE s.pooled AND avengers.cost_arguments_valid(tradeoff, max_cost, completions)
  ),
  -- MATERIALIZED: each query checked and normalised once, not once per centroid.
  q AS MATERIALIZED (
    SELECT x.ord::integer AS ord, l2_normalize(x.v) AS u
    FROM st CROSS JOIN unnest(queries) WITH ORDINALITY AS x(v, ord)
    WHERE CASE WHEN x.v IS NOT NULL AND vector_dims(x.v) = st.dimension THEN true
               ELSE avengers.query_dimension_error(st.dimension, st.clustering_id, x.ord::integer)
          END
  ),
  -- Per query, in one pass over its L nearest centroids: the nearest (ties: lower cluster) and
  -- the neighbours' weights as one sparsevec literal.
  routed AS MATERIALIZED (
    SELECT q.ord, p.cluster, p.distance, p.weights
    FROM q CROSS JOIN st
    CROSS JOIN LATERAL avengers.neighbourhood(q.u, neighbours, temperature, st.rho, st.clusters) AS p
  ),
  scored AS (
    SELECT rt.ord, rm.model_id, rm.tie_rank, rt.weights,
           avengers.pooled_score(-(rm.score_sums <#> rt.weights), -(rm.ns <#> rt.weights),
                                 rm.prior_score, shrinkage, 0, NULL) AS score,
           -(rm.ns <#> rt.weights) AS wn
    FROM routed rt
    CROSS JOIN avengers.routing_models rm
    WHERE avengers.model_eligible(rm.active, rm.endpoint, require_endpoint)
  ),
  -- Each candidate's expected cost from the neighbourhood's measured tokens and costs
  -- (routing_costs, pooled like the scores).
  costed AS (
    SELECT sc.ord, sc.model_id, sc.tie_rank, sc.score, sc.wn,
           avengers.expected_cost(
             rc.price_in, rc.price_out,
             avengers.prompt_tokens(coalesce(prompt_chars[sc.ord], st.mean_chars),
                                    rc.tokens_per_char),
             avengers.pooled_mean(-(rc.tokens_out_sums <#> sc.weights),
                                  -(rc.answer_ns <#> sc.weights), rc.mean_tokens_out, shrinkage),
             avengers.pooled_mean(-(rc.cost_sums <#> sc.weights), -(rc.cost_ns <#> sc.weights),
                                  rc.mean_cost, shrinkage),
             completions) AS cost
    FROM scored sc
    CROSS JOIN st
    JOIN avengers.routing_costs rc ON rc.model_id = sc.model_id
    WHERE sc.score IS NOT NULL AND (shrinkage > 0 OR sc.wn > 0)
  ),
  windowed AS (
    SELECT f.*,
           avengers.tradeoff_utility(coalesce(tradeoff, 1), f.score, min(f.score) OVER w,
                                     max(f.score) OVER w, f.cost, min(f.cost) OVER w,
                                     max(f.cost) OVER w) AS utility,
           bool_or(f.fits) OVER w AS any_fits
    FROM (SELECT c.*, coalesce(max_cost IS NULL OR c.cost <= max_cost, false) AS fits
          FROM costed c) AS f
    WINDOW w AS (PARTITION BY f.ord)
  ),
  traded AS (
    SELECT x.* FROM (
      SELECT wd.*,
             row_number() OVER (
               PARTITION BY wd.ord
               ORDER BY CASE WHEN wd.any_fits THEN 0 ELSE coalesce(wd.cost, 'Infinity') END,
                        CASE WHEN coalesce(tradeoff, 1) = 1 THEN wd.score ELSE wd.utility END DESC,
                        wd.score DESC, wd.tie_rank) AS rank
      FROM windowed wd
      WHERE wd.fits OR NOT wd.any_fits) AS x
    WHERE x.rank <= CASE WHEN x.any_fits THEN top_n ELSE 1 END
  )
  SELECT rt.ord, st.clustering_id, rt.cluster, rt.distance, r.rank::integer,
         r.model_id, m.name, cp.mean_score, cp.n, cp.wilson_low, cp.wilson_high, m.overall_score,
         m.endpoint, m.served_name, m.api_key_env, r.score, r.cost, NOT r.fits, r.utility
  FROM routed rt
  CROSS JOIN st
  LEFT JOIN (traded r JOIN avengers.routing_models m ON m.model_id = r.model_id) ON r.ord = rt.ord
  LEFT JOIN avengers.cluster_profiles cp ON cp.cluster = rt.cluster AND cp.model_id = r.model_id
  ORDER BY 1, 5;
END;
COMMENT ON FUNCTION avengers.route_many_costed(vector[], integer, boolean, integer, double precision, double precision, double precision, double precision, integer[], integer) IS
  'route_many''s served path with a trade-off or a cost ceiling (what route_many and route call when tradeoff or max_cost is given): each candidate''s expected cost, ranked by the trade-off among those within max_cost. No rows when routing_state.pooled is false.';

-- Batch routing: one row per (query, candidate model), ordered by ord then rank. A query with no
-- eligible model still gets one row (model NULL); with no active clustering every query gets one
-- row with cluster NULL. work_mem: the ranking sorts (query x model) rows, 80,000 for 10,000
-- vectors and 8 models, which spill to disk at the default 4 MB. Three branches behind one-time
-- filters, only one of which runs: the plain served path (below), route_many_costed, and
-- route_many_general.
CREATE FUNCTION avengers.route_many(
  queries vector[], top_n integer DEFAULT 1, require_endpoint boolean DEFAULT false,
  neighbours integer DEFAULT 16, temperature double precision DEFAULT 0.1,
  shrinkage double precision DEFAULT 1, dataset_prior double precision DEFAULT 0,
  tradeoff double precision DEFAULT NULL, max_cost double precision DEFAULT NULL,
  prompt_chars integer[] DEFAULT NULL, completions integer DEFAULT 1)
RETURNS SETOF avengers.route_row
LANGUAGE sql STABLE
SET plan_cache_mode = force_generic_plan
SET work_mem = '64MB'
BEGIN ATOMIC
  WITH st AS MATERIALIZED (
    SELECT s.clustering_id, s.dimension, s.clusters, s.rho
    FROM avengers.routing_state s
    WHERE s.pooled AND dataset_prior = 0
  ),
  -- MATERIALIZED: each query checked and normalised once, not once per centroid.
  q AS MATERIALIZED (
    SELECT x.ord::integer AS ord, l2_normalize(x.v) AS u
    FROM st CROSS JOIN unnest(queries) WITH ORDINALITY AS x(v, ord)
    WHERE CASE WHEN x.v IS NOT NULL AND vector_dims(x.v) = st.dimension THEN true
               ELSE avengers.query_dimension_error(st.dimension, st.clustering_id, x.ord::integer)
          END
  ),
  -- Per query, in one pass over its L nearest centroids: the nearest (ties: lower cluster) and
  -- the neighbours' weights as one sparsevec literal.
  routed AS MATERIALIZED (
    SELECT q.ord, p.cluster, p.distance, p.weights
    FROM q CROSS JOIN st
    CROSS JOIN LATERAL avengers.neighbourhood(q.u, neighbours, temperature, st.rho, st.clusters) AS p
  ),
  scored AS (
    SELECT rt.ord, rm.model_id, rm.tie_rank,
           avengers.pooled_score(-(rm.score_sums <#> rt.weights), -(rm.ns <#> rt.weights),
                                 rm.prior_score, shrinkage, 0, NULL) AS score,
           -(rm.ns <#> rt.weights) AS wn
    FROM routed rt
    CROSS JOIN avengers.routing_models rm
    WHERE avengers.model_eligible(rm.active, rm.endpoint, require_endpoint)
  ),
  ranked AS (
    SELECT w.* FROM (
      SELECT sc.ord, sc.model_id, sc.score,
             row_number() OVER (PARTITION BY sc.ord ORDER BY sc.score DESC, sc.tie_rank) AS rank
      FROM scored sc
      -- Without a prior (shrinkage = 0) a model needs outcomes near the query (tested first,
      -- so that wn's inner product is computed only then).
      WHERE sc.score IS NOT NULL AND (shrinkage > 0 OR sc.wn > 0)) AS w
    WHERE w.rank <= top_n
  )
  SELECT rt.ord, st.clustering_id, rt.cluster, rt.distance, r.rank::integer,
         r.model_id, m.name, cp.mean_score, cp.n, cp.wilson_low, cp.wilson_high, m.overall_score,
         m.endpoint, m.served_name, m.api_key_env, r.score,
         NULL::double precision, NULL::boolean, NULL::double precision
  FROM routed rt
  CROSS JOIN st
  LEFT JOIN (ranked r JOIN avengers.routing_models m ON m.model_id = r.model_id) ON r.ord = rt.ord
  -- A plain join, not avengers.profile_entry: one hash of cluster_profiles serves the whole batch
  -- (a probe per row was 5% slower; bench/README.md).
  LEFT JOIN avengers.cluster_profiles cp ON cp.cluster = rt.cluster AND cp.model_id = r.model_id
  WHERE tradeoff IS NULL AND max_cost IS NULL
  UNION ALL
  SELECT c.*
  FROM avengers.route_many_costed(queries, top_n, require_endpoint, neighbours, temperature,
                                  shrinkage, tradeoff, max_cost, prompt_chars, completions) AS c
  WHERE (tradeoff IS NOT NULL OR max_cost IS NOT NULL) AND EXISTS (SELECT FROM st)
  UNION ALL
  SELECT g.*
  FROM avengers.route_many_general(queries, top_n, require_endpoint, neighbours, temperature,
                                   shrinkage, dataset_prior, tradeoff, max_cost, prompt_chars,
                                   completions) AS g
  WHERE NOT EXISTS (SELECT FROM st)
  ORDER BY 1, 5;
END;
COMMENT ON FUNCTION avengers.route_many(vector[], integer, boolean, integer, double precision, double precision, double precision, double precision, double precision, integer[], integer) IS
  'Route many query vectors in one statement (one snapshot): for each ord, the nearest cluster of the active clustering (cluster, distance) and the top_n active models by score, pooled over the `neighbours` nearest clusters weighted by distance and shrunk toward each model''s calibration prior (neighbours=1, shrinkage=0, dataset_prior=0 is the paper''s nearest-cluster rule). mean_score, n and the Wilson bounds describe the nearest cluster. Ties: overall calibration score, then name. require_endpoint skips models without an endpoint. model NULL: no eligible model; cluster NULL: no active clustering. With tradeoff (in [0, 1]) or max_cost: each candidate''s expected cost of `completions` answers to a prompt of prompt_chars[ord] characters (NULL: the calibration texts'' mean), ranked by tradeoff * normalised score + (1 - tradeoff) * (1 - normalised cost) (by score when tradeoff is 1 or NULL) among the candidates whose expected cost is at most max_cost; when none is, the cheapest alone, over_budget.';

-- One vector: route_many's served path written for a single query, without the CTEs a batch
-- needs (each materialises a tuplestore) and with the query normalised once. No rows when the
-- served path does not apply (routing_state.pooled false, or no clustering active):
-- avengers.route below adds the hand-over to route_many_general, and the library calls
-- route_pooled first and route only when it returned nothing, which keeps the hand-over off the
-- common path. No SET clause, so the planner inlines the body into the calling statement and a
-- prepared statement runs it as one plan; a statement that is not prepared plans the whole body
-- on every call, so such callers use avengers.route, which caches its plan.
CREATE FUNCTION avengers.route_pooled(
  query vector, top_n integer DEFAULT 1, require_endpoint boolean DEFAULT false,
  neighbours integer DEFAULT 16, temperature double precision DEFAULT 0.1,
  shrinkage double precision DEFAULT 1,
  tradeoff double precision DEFAULT NULL, max_cost double precision DEFAULT NULL,
  prompt_chars integer DEFAULT NULL, completions integer DEFAULT 1)
RETURNS SETOF avengers.route_row
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT 1, st.clustering_id, p.cluster, p.distance, r.rank::integer, r.model_id, r.model,
         cp.mean_score, cp.n, cp.wilson_low, cp.wilson_high, r.overall_score,
         r.endpoint, r.served_name, r.api_key_env, r.score,
         NULL::double precision, NULL::boolean, NULL::double precision
  FROM avengers.routing_state st
  -- OFFSET 0: normalised once, not once per centroid compared with.
  CROSS JOIN LATERAL (SELECT l2_normalize(query) AS u OFFSET 0) AS q
  CROSS JOIN LATERAL avengers.neighbourhood(q.u, neighbours, temperature, st.rho, st.clusters) AS p
  LEFT JOIN LATERAL (
    SELECT sc.*, row_number() OVER (ORDER BY sc.score DESC, sc.tie_rank) AS rank
    FROM (
      SELECT rm.model_id, rm.name AS model, rm.overall_score, rm.tie_rank, rm.endpoint,
             rm.served_name, rm.api_key_env,
             avengers.pooled_score(-(rm.score_sums <#> p.weights), -(rm.ns <#> p.weights),
                                   rm.prior_score, shrinkage, 0, NULL) AS score,
             -(rm.ns <#> p.weights) AS wn
      FROM avengers.routing_models rm
      WHERE avengers.model_eligible(rm.active, rm.endpoint, require_endpoint)) AS sc
    WHERE sc.score IS NOT NULL AND (shrinkage > 0 OR sc.wn > 0)) AS r ON r.rank <= top_n
  LEFT JOIN LATERAL avengers.profile_entry(p.cluster, r.model_id) AS cp ON true
  WHERE st.pooled
    AND CASE WHEN query IS NOT NULL AND vector_dims(query) = st.dimension THEN true
             ELSE avengers.query_dimension_error(st.dimension, st.clustering_id) END
    AND tradeoff IS NULL AND max_cost IS NULL
  UNION ALL
  -- The cost-aware branch (route_many_costed's, for one query, inlined with the plain one).
  SELECT 1, st.clustering_id, p.cluster, p.distance, r.rank::integer, r.model_id, r.model,
         cp.mean_score, cp.n, cp.wilson_low, cp.wilson_high, r.overall_score,
         r.endpoint, r.served_name, r.api_key_env, r.score, r.cost, NOT r.fits, r.utility
  FROM avengers.routing_state st
  CROSS JOIN LATERAL (SELECT l2_normalize(query) AS u OFFSET 0) AS q
  CROSS JOIN LATERAL avengers.neighbourhood(q.u, neighbours, temperature, st.rho, st.clusters) AS p
  LEFT JOIN LATERAL (
    SELECT wd.*,
           row_number() OVER (
             ORDER BY CASE WHEN wd.any_fits THEN 0 ELSE coalesce(wd.cost, 'Infinity') END,
                      CASE WHEN coalesce(tradeoff, 1) = 1 THEN wd.score ELSE wd.utility END DESC,
                      wd.score DESC, wd.tie_rank) AS rank
    FROM (
      SELECT f.*,
             avengers.tradeoff_utility(coalesce(tradeoff, 1), f.score, min(f.score) OVER (),
                                       max(f.score) OVER (), f.cost, min(f.cost) OVER (),
                                       max(f.cost) OVER ()) AS utility,
             bool_or(f.fits) OVER () AS any_fits
      FROM (
        SELECT sc.*, coalesce(max_cost IS NULL OR sc.cost <= max_cost, false) AS fits
        FROM (
          SELECT rm.model_id, rm.name AS model, rm.overall_score, rm.tie_rank, rm.endpoint,
                 rm.served_name, rm.api_key_env,
                 avengers.pooled_score(-(rm.score_sums <#> p.weights), -(rm.ns <#> p.weights),
                                       rm.prior_score, shrinkage, 0, NULL) AS score,
                 -(rm.ns <#> p.weights) AS wn,
                 avengers.expected_cost(
                   rc.price_in, rc.price_out,
                   avengers.prompt_tokens(coalesce(prompt_chars, st.mean_chars),
                                          rc.tokens_per_char),
                   avengers.pooled_mean(-(rc.tokens_out_sums <#> p.weights),
                                        -(rc.answer_ns <#> p.weights), rc.mean_tokens_out,
                                        shrinkage),
                   avengers.pooled_mean(-(rc.cost_sums <#> p.weights),
                                        -(rc.cost_ns <#> p.weights), rc.mean_cost, shrinkage),
                   completions) AS cost
          FROM avengers.routing_models rm
          JOIN avengers.routing_costs rc ON rc.model_id = rm.model_id
          WHERE avengers.model_eligible(rm.active, rm.endpoint, require_endpoint)) AS sc
        WHERE sc.score IS NOT NULL AND (shrinkage > 0 OR sc.wn > 0)) AS f) AS wd
    WHERE wd.fits OR NOT wd.any_fits) AS r
    ON r.rank <= CASE WHEN r.any_fits THEN top_n ELSE 1 END
  LEFT JOIN LATERAL avengers.profile_entry(p.cluster, r.model_id) AS cp ON true
  WHERE st.pooled
    AND CASE WHEN query IS NOT NULL AND vector_dims(query) = st.dimension THEN true
             ELSE avengers.query_dimension_error(st.dimension, st.clustering_id) END
    AND (tradeoff IS NOT NULL OR max_cost IS NOT NULL)
    AND avengers.cost_arguments_valid(tradeoff, max_cost, completions)
  ORDER BY 5;
END;
COMMENT ON FUNCTION avengers.route_pooled(vector, integer, boolean, integer, double precision, double precision, double precision, double precision, integer, integer) IS
  'avengers.route''s served path without the dataset-mixture prior: the same rows when routing_state.pooled, no rows otherwise (then call avengers.route). Inlined into the calling statement: prepare that statement, or call avengers.route, which caches its plan. tradeoff, max_cost, prompt_chars (the query''s length) and completions as in route_many.';

-- Any clustering and any settings: route_pooled where it applies, else route_many_general.
CREATE FUNCTION avengers.route(
  query vector, top_n integer DEFAULT 1, require_endpoint boolean DEFAULT false,
  neighbours integer DEFAULT 16, temperature double precision DEFAULT 0.1,
  shrinkage double precision DEFAULT 1, dataset_prior double precision DEFAULT 0,
  tradeoff double precision DEFAULT NULL, max_cost double precision DEFAULT NULL,
  prompt_chars integer DEFAULT NULL, completions integer DEFAULT 1)
RETURNS SETOF avengers.route_row
LANGUAGE sql STABLE
SET plan_cache_mode = force_generic_plan
BEGIN ATOMIC
  WITH served AS MATERIALIZED (
    SELECT coalesce((SELECT s.pooled FROM avengers.routing_state s), false)
           AND dataset_prior = 0 AS pooled
  )
  -- route_pooled with the plain arguments only: its cost-aware branch is left out of this plan,
  -- which a cost-aware route reaches through route_many (one node, planned in that function).
  SELECT r.*
  FROM avengers.route_pooled(query, top_n, require_endpoint, neighbours, temperature,
                             shrinkage) AS r
  WHERE (SELECT v.pooled FROM served v) AND tradeoff IS NULL AND max_cost IS NULL
  UNION ALL
  SELECT c.*
  FROM avengers.route_many(ARRAY[query], top_n, require_endpoint, neighbours, temperature,
                           shrinkage, dataset_prior, tradeoff, max_cost, ARRAY[prompt_chars],
                           completions) AS c
  WHERE tradeoff IS NOT NULL OR max_cost IS NOT NULL
  UNION ALL
  SELECT g.*
  FROM avengers.route_many_general(ARRAY[query], top_n, require_endpoint, neighbours,
                                   temperature, shrinkage, dataset_prior) AS g
  WHERE NOT (SELECT v.pooled FROM served v) AND tradeoff IS NULL AND max_cost IS NULL
  ORDER BY 5;
END;
COMMENT ON FUNCTION avengers.route(vector, integer, boolean, integer, double precision, double precision, double precision, double precision, double precision, integer, integer) IS
  'Route one query vector (the rule of route_many): the nearest cluster of the active clustering and the top_n active models by routing score, one row per model (model NULL when no model is eligible; cluster NULL when no clustering is active; ord is 1). avengers.route(v, 3, false, 1, 0, 0, 0) is the paper''s nearest-cluster rule; avengers.route(v, 3, tradeoff => 0.5, prompt_chars => 120) trades quality for expected cost, avengers.route(v, 3, max_cost => 0.001) keeps to a budget.';
