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
-- Index: prepare_centroid_index (Python, avengers_store/routing.py) builds a partial HNSW index
-- named avengers.centroids_hnsw_<clustering id> only for very large clusterings (k >= 16,384 by
-- default). When it exists, nearest_centroids takes the index's `candidates` nearest centroids
-- (hnsw.ef_search, at most 1,000) and re-ranks them by the exact distance; otherwise it scans the
-- clustering's centroids exactly. Measured here (384 dimensions, 1,000 random unit queries, 2
-- shared and busy cores): exact scan ≈ 1.2 ms per query inside route_many at k = 2,048 (≈ 0.3-0.6
-- µs per centroid) and always equal to numpy's argmin; the HNSW path at k = 2,048 is slower (≈ 6.7
-- ms per query) and agreed with the argmin on 98.9-99.8% of queries with 200 candidates and
-- 99.9-100% with 1,000. HNSW cannot promise the true nearest is among its candidates, so it is
-- used only where the exact scan gets slow, and is then approximate.

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
  SELECT k.id, s.dimension INTO active_id, dim
  FROM avengers.clusterings k
  JOIN avengers.embedding_spaces s ON s.id = k.space_id
  WHERE k.status = 'active';
  IF active_id IS NULL OR queries IS NULL THEN
    RETURN;
  END IF;
  SELECT q.ord INTO bad
  FROM unnest(queries) WITH ORDINALITY AS q(v, ord)
  WHERE q.v IS NULL OR vector_dims(q.v) <> dim
  LIMIT 1;
  IF bad IS NOT NULL THEN
    RAISE EXCEPTION 'query vector % is NULL or does not have the % dimensions of the active clustering %',
      bad, dim, active_id
      USING ERRCODE = 'data_exception',
            HINT = 'Embed queries with the active embedding space''s embedder (avengers_store.spaces.active_space).';
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

-- Batch routing: one row per (query, candidate model), ordered by ord then rank. A query with no
-- eligible model still gets one row (model NULL); with no active clustering every query gets one
-- row with cluster NULL.
--
-- The score of model m for a query (the default "avengers" method):
--   take the `neighbours` (L) nearest centroids c_1..c_L, distances d_1 <= ... <= d_L;
--   w_j = exp(-(d_j^2 - d_1^2) / (temperature * rho))         (rho: avengers.clustering_scale)
--   score = (sum_j w_j S[c_j,m] + shrinkage * prior[m] + dataset_prior * dprior[m])
--         / (sum_j w_j n[c_j,m] + shrinkage + dataset_prior)
-- with S and n the outcome sum and count of m in the cluster (cluster_profiles), prior[m] the
-- model's dataset-balanced calibration mean (model_priors) and dprior[m] the mean of m's
-- per-dataset means (dataset_profiles) weighted by the neighbourhood's dataset make-up
-- pi_D = sum_j w_j count(c_j, D) / sum_j w_j size(c_j)  (cluster_datasets; renormalised over the
-- datasets m has outcomes on). Models rank by score, then overall calibration score, then name.
-- neighbours = 1, shrinkage = 0, dataset_prior = 0 is the paper's rule exactly: score =
-- score_sum / n of the nearest cluster = its mean_score, the order of active_rank.
-- w_1 = 1, so the weights never all underflow; exp's argument is floored at -700 (Postgres
-- raises on underflow; e^-700 is 1e-304, nothing next to w_1). With rho = 0 (every calibration
-- query on its centroid) or temperature = 0 only the centroids at distance d_1 count.
-- Cost over the paper rule: L rows per query from the same ORDER BY ... LIMIT scan, and a join
-- to at most L x (models) profile rows by their (cluster, model_id) key.
CREATE FUNCTION avengers.route_many(
  queries vector[], top_n integer DEFAULT 1, require_endpoint boolean DEFAULT false,
  neighbours integer DEFAULT 16, temperature double precision DEFAULT 0.1,
  shrinkage double precision DEFAULT 1, dataset_prior double precision DEFAULT 0)
RETURNS TABLE (
  ord integer, clustering_id integer, cluster integer, distance double precision, rank integer,
  model_id integer, model text, mean_score double precision, n integer,
  wilson_low double precision, wilson_high double precision, overall_score double precision,
  endpoint text, served_name text, api_key_env text, score double precision)
LANGUAGE sql STABLE
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
           CASE WHEN nb.neighbour = 1 THEN 1.0::double precision
                WHEN s.rho > 0 AND temperature > 0 THEN
                  exp(greatest(-700.0,
                      -(nb.distance ^ 2 - h.distance ^ 2) / (temperature * s.rho)))
                WHEN nb.distance = h.distance THEN 1.0::double precision
                ELSE 0.0::double precision END AS w
    FROM near nb
    JOIN head h ON h.ord = nb.ord
    LEFT JOIN avengers.clustering_scale s ON s.clustering_id = nb.clustering_id
  ),
  -- LATERAL ... OFFSET 0 keeps these as index probes of cluster_profiles_key per neighbour: as
  -- a plain join the planner (expecting 1,000 rows from nearest_centroids) hashes the whole
  -- profile table on every call (≈ 0.15 ms at k = 64, milliseconds at k = 1,024).
  pooled AS (
    SELECT wt.ord, p.model_id, sum(wt.w * p.score_sum) AS ws, sum(wt.w * p.n) AS wn
    FROM weights wt
    CROSS JOIN LATERAL (
      SELECT cp.model_id, cp.score_sum, cp.n FROM avengers.cluster_profiles cp
      WHERE cp.cluster = wt.cluster AND cp.clustering_id = wt.clustering_id OFFSET 0) AS p
    GROUP BY wt.ord, p.model_id
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
    SELECT h.ord, mp.model_id, m.name AS model, mp.overall_score, m.endpoint,
           coalesce(m.served_name, m.name) AS served_name, m.api_key_env,
           (coalesce(pl.ws, 0) + shrinkage * mp.prior_score
              + dataset_prior * coalesce(mx.dprior, mp.prior_score))
           / nullif(coalesce(pl.wn, 0) + shrinkage + dataset_prior, 0) AS score,
           coalesce(pl.wn, 0) AS wn
    FROM head h
    JOIN avengers.model_priors mp ON mp.clustering_id = h.clustering_id
    JOIN avengers.models m ON m.id = mp.model_id
    LEFT JOIN pooled pl ON pl.ord = h.ord AND pl.model_id = mp.model_id
    LEFT JOIN mixed mx ON mx.ord = h.ord AND mx.model_id = mp.model_id
    WHERE m.active AND (NOT require_endpoint OR m.endpoint IS NOT NULL)
  ),
  ranked AS (
    SELECT sc.*, row_number() OVER (PARTITION BY sc.ord
                                    ORDER BY sc.score DESC, sc.overall_score DESC, sc.model)
                   AS position
    FROM scored sc
    -- Without a prior (shrinkage = dataset_prior = 0) a model needs outcomes near the query.
    WHERE sc.score IS NOT NULL AND (sc.wn > 0 OR shrinkage + dataset_prior > 0)
  )
  SELECT q.ord::integer, h.clustering_id, h.cluster, h.distance, r.position::integer,
         r.model_id, r.model, p.mean_score, p.n, p.wilson_low, p.wilson_high, r.overall_score,
         r.endpoint, r.served_name, r.api_key_env, r.score
  FROM generate_subscripts(queries, 1) AS q(ord)
  LEFT JOIN head h ON h.ord = q.ord
  LEFT JOIN ranked r ON r.ord = q.ord AND r.position <= top_n
  LEFT JOIN LATERAL (
    SELECT cp.mean_score, cp.n, cp.wilson_low, cp.wilson_high FROM avengers.cluster_profiles cp
    WHERE cp.cluster = h.cluster AND cp.model_id = r.model_id
      AND cp.clustering_id = h.clustering_id OFFSET 0) AS p ON true
  ORDER BY q.ord, r.position;
END;
COMMENT ON FUNCTION avengers.route_many(vector[], integer, boolean, integer, double precision, double precision, double precision) IS
  'Route many query vectors in one statement (one snapshot): for each ord, the nearest cluster of the active clustering (cluster, distance) and the top_n active models by score, pooled over the `neighbours` nearest clusters weighted by distance and shrunk toward each model''s calibration prior (see sql/030_routing.sql; neighbours=1, shrinkage=0, dataset_prior=0 is the paper''s nearest-cluster rule). mean_score, n and the Wilson bounds describe the nearest cluster. Ties: overall calibration score, then name. require_endpoint skips models without an endpoint. model NULL: no eligible model; cluster NULL: no active clustering.';

-- The score rule of route_many for one vector, as plain SQL (no plpgsql, so no per-call SPI
-- statements): the active clustering and its HNSW flag in one small lookup, the L nearest
-- centroids by one exact ORDER BY ... LIMIT scan (the query normalised once), then the same
-- pooling, priors and ranking as route_many, with the same expressions, so both give the same
-- decision. A clustering with a centroids_hnsw_<id> index (k >= 16,384) goes through route_many
-- and nearest_centroids' index path instead: the two branches are gated by one-time filters, so
-- only one runs. The dimension check stays in SQL (avengers.query_dimension_error raises only
-- when it fails). Measured at k = 64 (bench/route_latency.py): see bench/README.md.
CREATE FUNCTION avengers.query_dimension_error(dim integer, clustering integer)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
  RAISE EXCEPTION 'query vector 1 is NULL or does not have the % dimensions of the active clustering %',
    dim, clustering
    USING ERRCODE = 'data_exception',
          HINT = 'Embed queries with the active embedding space''s embedder (avengers_store.spaces.active_space).';
END
$$;
COMMENT ON FUNCTION avengers.query_dimension_error(integer, integer) IS
  'Raises the routing error for a query vector that is NULL or of the wrong dimension (called by avengers.route only when the check fails).';

-- route's branch for a clustering with an HNSW index: route_many with one vector. plpgsql only so
-- that it is not inlined: inlined, route_many's whole plan would be initialised on every route
-- call even though a one-time filter skips it (one diagnostic run at k = 64: 600 -> 390 µs per
-- route once it was not inlined).
CREATE FUNCTION avengers.route_indexed(
  query vector, top_n integer, require_endpoint boolean, neighbours integer,
  temperature double precision, shrinkage double precision, dataset_prior double precision)
RETURNS TABLE (
  clustering_id integer, cluster integer, distance double precision, rank integer,
  model_id integer, model text, mean_score double precision, n integer,
  wilson_low double precision, wilson_high double precision, overall_score double precision,
  endpoint text, served_name text, api_key_env text, score double precision)
LANGUAGE plpgsql STABLE
AS $$
BEGIN
  RETURN QUERY
    SELECT r.clustering_id, r.cluster, r.distance, r.rank, r.model_id, r.model, r.mean_score,
           r.n, r.wilson_low, r.wilson_high, r.overall_score, r.endpoint, r.served_name,
           r.api_key_env, r.score
    FROM avengers.route_many(ARRAY[query], top_n, require_endpoint, neighbours, temperature,
                             shrinkage, dataset_prior) AS r;
END
$$;
COMMENT ON FUNCTION avengers.route_indexed(vector, integer, boolean, integer, double precision, double precision, double precision) IS
  'avengers.route through route_many (used by route when the active clustering has a centroids_hnsw_<id> index).';

CREATE FUNCTION avengers.route(
  query vector, top_n integer DEFAULT 1, require_endpoint boolean DEFAULT false,
  neighbours integer DEFAULT 16, temperature double precision DEFAULT 0.1,
  shrinkage double precision DEFAULT 1, dataset_prior double precision DEFAULT 0)
RETURNS TABLE (
  clustering_id integer, cluster integer, distance double precision, rank integer,
  model_id integer, model text, mean_score double precision, n integer,
  wilson_low double precision, wilson_high double precision, overall_score double precision,
  endpoint text, served_name text, api_key_env text, score double precision)
LANGUAGE sql STABLE
-- Not inlined (a SET clause prevents it), so the body's plan is cached with the function and kept
-- generic: inlined into the caller's statement, Postgres re-planned it on every call whenever the
-- custom plan looked cheaper (planning costs ≈ 1.5-2 ms; at k = 4,096 the inlined route took
-- about twice route_many's time, on par with this setting).
SET plan_cache_mode = force_generic_plan
BEGIN ATOMIC
  WITH act AS MATERIALIZED (
    SELECT k.id,
           to_regclass('avengers.centroids_hnsw_' || k.id) IS NOT NULL AS indexed,
           l2_normalize(query) AS u
    FROM avengers.clusterings k
    JOIN avengers.embedding_spaces s ON s.id = k.space_id
    WHERE k.status = 'active'
      AND CASE WHEN query IS NOT NULL AND vector_dims(query) = s.dimension THEN true
               ELSE avengers.query_dimension_error(s.dimension, k.id) END
  ),
  near AS MATERIALIZED (
    SELECT c.clustering_id, c.cluster, c.centroid <-> (SELECT a.u FROM act a) AS distance
    FROM avengers.centroids c
    WHERE c.clustering_id = (SELECT a.id FROM act a)
    ORDER BY 3, 2
    LIMIT greatest(neighbours, 1)
  ),
  head AS MATERIALIZED (
    SELECT h.clustering_id, h.cluster, h.distance FROM near h ORDER BY 3, 2 LIMIT 1
  ),
  weights AS (
    SELECT nb.clustering_id, nb.cluster, cs.model_ids, cs.score_sums, cs.ns,
           CASE WHEN nb.cluster = h.cluster THEN 1.0::double precision
                WHEN s.rho > 0 AND temperature > 0 THEN
                  exp(greatest(-700.0,
                      -(nb.distance ^ 2 - h.distance ^ 2) / (temperature * s.rho)))
                WHEN nb.distance = h.distance THEN 1.0::double precision
                ELSE 0.0::double precision END AS w
    FROM near nb
    CROSS JOIN head h
    LEFT JOIN avengers.clustering_scale s ON s.clustering_id = nb.clustering_id
    -- LATERAL ... OFFSET 0: one index probe per neighbour whatever the planner guesses for L
    -- (as route_many does for cluster_profiles), never a hash of all k rows.
    LEFT JOIN LATERAL (
      SELECT x.model_ids, x.score_sums, x.ns FROM avengers.cluster_scores x
      WHERE x.cluster = nb.cluster AND x.clustering_id = nb.clustering_id OFFSET 0) AS cs ON true
  ),
  -- The L neighbours' per-model sums, pooled element by element (cluster_scores: one array
  -- entry per model, 0 where the model has no outcome, which adds exactly nothing).
  pooled AS (
    SELECT p.model_id, sum(wt.w * p.score_sum) AS ws, sum(wt.w * p.n) AS wn
    FROM weights wt
    CROSS JOIN LATERAL unnest(wt.model_ids, wt.score_sums, wt.ns) AS p(model_id, score_sum, n)
    GROUP BY p.model_id
  ),
  mixture AS (
    SELECT cd.dataset_id, sum(wt.w * cd.n) AS wd
    FROM weights wt
    JOIN avengers.cluster_datasets cd
      ON cd.cluster = wt.cluster AND cd.clustering_id = wt.clustering_id
    WHERE dataset_prior <> 0
    GROUP BY cd.dataset_id
  ),
  mixed AS (
    SELECT dp.model_id, sum(mx.wd * dp.mean_score) / nullif(sum(mx.wd), 0) AS dprior
    FROM mixture mx
    JOIN avengers.dataset_profiles dp ON dp.dataset_id = mx.dataset_id
    GROUP BY dp.model_id
  ),
  scored AS (
    SELECT mp.model_id, m.name AS model, mp.overall_score, m.endpoint,
           coalesce(m.served_name, m.name) AS served_name, m.api_key_env,
           (coalesce(pl.ws, 0) + shrinkage * mp.prior_score
              + dataset_prior * coalesce(mx.dprior, mp.prior_score))
           / nullif(coalesce(pl.wn, 0) + shrinkage + dataset_prior, 0) AS score,
           coalesce(pl.wn, 0) AS wn
    FROM head h
    JOIN avengers.model_priors mp ON mp.clustering_id = h.clustering_id
    JOIN avengers.models m ON m.id = mp.model_id
    LEFT JOIN pooled pl ON pl.model_id = mp.model_id
    LEFT JOIN mixed mx ON mx.model_id = mp.model_id
    WHERE m.active AND (NOT require_endpoint OR m.endpoint IS NOT NULL)
  ),
  ranked AS (
    SELECT sc.*, row_number() OVER (ORDER BY sc.score DESC, sc.overall_score DESC, sc.model)
                   AS position
    FROM scored sc
    WHERE sc.score IS NOT NULL AND (sc.wn > 0 OR shrinkage + dataset_prior > 0)
  )
  SELECT h.clustering_id, h.cluster, h.distance, r.position::integer,
         r.model_id, r.model, p.mean_score, p.n, p.wilson_low, p.wilson_high, r.overall_score,
         r.endpoint, r.served_name, r.api_key_env, r.score
  FROM (VALUES (1)) AS one(x)
  LEFT JOIN head h ON true
  LEFT JOIN ranked r ON r.position <= top_n
  LEFT JOIN LATERAL (
    SELECT cp.mean_score, cp.n, cp.wilson_low, cp.wilson_high FROM avengers.cluster_profiles cp
    WHERE cp.cluster = h.cluster AND cp.model_id = r.model_id
      AND cp.clustering_id = h.clustering_id OFFSET 0) AS p ON true
  WHERE NOT coalesce((SELECT a.indexed FROM act a), false)
  UNION ALL
  SELECT r.clustering_id, r.cluster, r.distance, r.rank, r.model_id, r.model, r.mean_score, r.n,
         r.wilson_low, r.wilson_high, r.overall_score, r.endpoint, r.served_name, r.api_key_env,
         r.score
  FROM avengers.route_indexed(query, top_n, require_endpoint, neighbours, temperature,
                              shrinkage, dataset_prior) AS r
  WHERE coalesce((SELECT a.indexed FROM act a), false)
  ORDER BY 4;
END;
COMMENT ON FUNCTION avengers.route(vector, integer, boolean, integer, double precision, double precision, double precision) IS
  'Route one query vector (the rule of route_many, in plain SQL): the nearest cluster of the active clustering and the top_n active models by routing score, one row per model (model NULL when no model is eligible; cluster NULL when no clustering is active). avengers.route(v, 3, false, 1, 0, 0, 0) is the paper''s nearest-cluster rule.';
