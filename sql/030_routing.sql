-- Routing: nearest centroid of the active clustering, then the top-n active models of that cluster.
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

-- Batch routing: one row per (query, candidate model), ordered by ord then rank. A query whose
-- cluster has no eligible model still gets one row (model NULL); with no active clustering every
-- query gets one row with cluster NULL.
CREATE FUNCTION avengers.route_many(
  queries vector[], top_n integer DEFAULT 1, require_endpoint boolean DEFAULT false)
RETURNS TABLE (
  ord integer, clustering_id integer, cluster integer, distance double precision, rank integer,
  model_id integer, model text, mean_score double precision, n integer,
  wilson_low double precision, wilson_high double precision, overall_score double precision,
  endpoint text, served_name text, api_key_env text)
LANGUAGE sql STABLE
BEGIN ATOMIC
  -- The models of each query's cluster come from a LATERAL probe of cluster_profiles_route_idx
  -- (cluster, active_rank), LIMIT top_n. A plain join made the planner (which expects 1,000 rows
  -- from nearest_centroids) sort the whole profile table on every call: ≈ 7 ms per single route
  -- at k = 1,024 with 8 models, against ≈ 0.5 ms for the probe (bench/route_latency.py).
  SELECT q.ord::integer, nr.clustering_id, nr.cluster, nr.distance, rk.position::integer,
         rk.model_id, rk.model, rk.mean_score, rk.n, rk.wilson_low, rk.wilson_high,
         rk.overall_score, rk.endpoint, rk.served_name, rk.api_key_env
  FROM generate_subscripts(queries, 1) AS q(ord)
  LEFT JOIN avengers.nearest_centroids(queries, 1) AS nr ON nr.ord = q.ord
  LEFT JOIN LATERAL (
    SELECT p.model_id, p.model, p.mean_score, p.n, p.wilson_low, p.wilson_high, p.overall_score,
           m.endpoint, coalesce(m.served_name, m.name) AS served_name, m.api_key_env,
           row_number() OVER (ORDER BY p.active_rank) AS position
    FROM avengers.cluster_profiles p
    JOIN avengers.models m ON m.id = p.model_id
    WHERE p.cluster = nr.cluster AND p.clustering_id = nr.clustering_id
      AND p.active_rank IS NOT NULL
      AND m.active AND (NOT require_endpoint OR m.endpoint IS NOT NULL)
    ORDER BY p.active_rank
    LIMIT top_n) AS rk ON true
  ORDER BY q.ord, rk.position;
END;
COMMENT ON FUNCTION avengers.route_many(vector[], integer, boolean) IS
  'Route many query vectors in one statement (one snapshot): for each ord, the nearest cluster of the active clustering and its top_n active models by profile (rank 1 = best; ties: overall calibration score, then name). require_endpoint skips models without an endpoint. model NULL: no eligible model; cluster NULL: no active clustering.';

CREATE FUNCTION avengers.route(
  query vector, top_n integer DEFAULT 1, require_endpoint boolean DEFAULT false)
RETURNS TABLE (
  clustering_id integer, cluster integer, distance double precision, rank integer,
  model_id integer, model text, mean_score double precision, n integer,
  wilson_low double precision, wilson_high double precision, overall_score double precision,
  endpoint text, served_name text, api_key_env text)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT r.clustering_id, r.cluster, r.distance, r.rank, r.model_id, r.model, r.mean_score, r.n,
         r.wilson_low, r.wilson_high, r.overall_score, r.endpoint, r.served_name, r.api_key_env
  FROM avengers.route_many(ARRAY[query], top_n, require_endpoint) AS r
  ORDER BY r.rank;
END;
COMMENT ON FUNCTION avengers.route(vector, integer, boolean) IS
  'Route one query vector: nearest centroid of the active clustering (Euclidean on the normalised query) and its top_n active models by profile score, one row per model (model NULL when the cluster has no eligible model; cluster NULL when no clustering is active).';
