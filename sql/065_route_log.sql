-- Writing the route log: one statement for any number of requests, whatever wrote them (a
-- client, the gateway's background writer, a replay of the local spool), so every path writes
-- the same columns the same way.

-- What a request used and cost, from its row's usage (metadata -> 'usage': per model the
-- tokens of every sample drawn) at the models' current prices per 1M tokens.
CREATE FUNCTION avengers.request_usage(
  usage jsonb, OUT tokens_in bigint, OUT tokens_out bigint, OUT cost double precision)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT coalesce(sum(u.tokens_in), 0)::bigint, coalesce(sum(u.tokens_out), 0)::bigint,
         sum((coalesce(m.cost_in_per_m, 0) * coalesce(u.tokens_in, 0)
              + coalesce(m.cost_out_per_m, 0) * coalesce(u.tokens_out, 0)) / 1e6)
           FILTER (WHERE m.cost_in_per_m IS NOT NULL OR m.cost_out_per_m IS NOT NULL)
  FROM jsonb_to_recordset(CASE WHEN jsonb_typeof(usage) = 'array' THEN usage ELSE '[]' END)
       AS u(model text, tokens_in bigint, tokens_out bigint)
  LEFT JOIN avengers.models m ON m.name = u.model;
END;
COMMENT ON FUNCTION avengers.request_usage(jsonb) IS
  'Tokens in and out of a route-log usage array (per model: tokens of every sample drawn) and their cost at the models'' prices per 1M tokens (NULL when none of them has a price).';

-- entries: a JSON array of objects with route_log's columns (route_id, api_key_id, query_hash,
-- clustering_id, cluster, distance, models, strategy, final_answer, vote_share, samples,
-- latency_ms, metadata, answer_model, novelty, ood, ood_policy, exploration, explored,
-- propensity, at) and optionally the query's embedding (an array of numbers, kept in
-- route_vectors in the routing clustering's space) and text. A route id already logged is
-- skipped, so writing a batch twice writes it once. Each row's cost is its usage at the prices
-- of the moment (request_usage), added to its key's day in api_key_usage with it.
CREATE FUNCTION avengers.log_routes(entries jsonb)
RETURNS integer
LANGUAGE sql
BEGIN ATOMIC
  WITH e AS (
    SELECT x.*, u.tokens_in, u.tokens_out, u.cost
    FROM jsonb_to_recordset(entries) AS x(
      route_id uuid, api_key_id integer, query_hash text, clustering_id integer,
      cluster integer, distance double precision, models text[], strategy text,
      final_answer text, vote_share double precision, samples integer,
      latency_ms double precision, metadata jsonb, answer_model text,
      novelty double precision, ood boolean, ood_policy text, exploration text,
      explored boolean, propensity double precision, at timestamptz, embedding real[],
      query_text text)
    CROSS JOIN LATERAL avengers.request_usage(x.metadata -> 'usage') AS u
  ),
  logged AS (
    INSERT INTO avengers.route_log (
      route_id, api_key_id, query_hash, clustering_id, cluster, distance, models, strategy,
      final_answer, vote_share, samples, latency_ms, metadata, answer_model, novelty, ood,
      ood_policy, exploration, explored, propensity, at, cost)
    SELECT e.route_id, e.api_key_id, e.query_hash, e.clustering_id, e.cluster, e.distance,
           coalesce(e.models, '{}'), e.strategy, e.final_answer, e.vote_share, e.samples,
           e.latency_ms, coalesce(e.metadata, '{}'), e.answer_model, e.novelty, e.ood,
           e.ood_policy, e.exploration, e.explored, e.propensity, coalesce(e.at, now()), e.cost
    FROM e
    ON CONFLICT (route_id) DO NOTHING
    RETURNING route_id, clustering_id, api_key_id, at
  ),
  spent AS (
    INSERT INTO avengers.api_key_usage AS s (api_key_id, day, requests, tokens_in, tokens_out, cost)
    SELECT l.api_key_id, (l.at AT TIME ZONE 'UTC')::date, count(*), sum(e.tokens_in),
           sum(e.tokens_out), coalesce(sum(e.cost), 0)
    FROM logged l
    JOIN e ON e.route_id = l.route_id
    WHERE l.api_key_id IS NOT NULL
    GROUP BY 1, 2
    ON CONFLICT (api_key_id, day) DO UPDATE
      SET requests = s.requests + excluded.requests,
          tokens_in = s.tokens_in + excluded.tokens_in,
          tokens_out = s.tokens_out + excluded.tokens_out,
          cost = s.cost + excluded.cost
    RETURNING 1
  ),
  kept AS (
    INSERT INTO avengers.route_vectors (route_id, space_id, embedding, query_text)
    SELECT l.route_id, k.space_id, e.embedding::vector, e.query_text
    FROM logged l
    JOIN e ON e.route_id = l.route_id
    JOIN avengers.clusterings k ON k.id = l.clustering_id
    WHERE e.embedding IS NOT NULL
    RETURNING 1
  )
  SELECT count(*)::integer FROM logged;
END;
COMMENT ON FUNCTION avengers.log_routes(jsonb) IS
  'Write route-log rows (a JSON array of objects with route_log''s columns, and optionally each query''s embedding and text for route_vectors) in one statement, each with its cost, added to its key''s day (api_key_usage); route ids already logged are skipped. Returns the rows written.';
