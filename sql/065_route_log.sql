-- Writing the route log: one statement for any number of requests, whatever wrote them (a
-- client, the gateway's background writer, a replay of the local spool), so every path writes
-- the same columns the same way.

-- entries: a JSON array of objects with route_log's columns (route_id, api_key_id, query_hash,
-- clustering_id, cluster, distance, models, strategy, final_answer, vote_share, samples,
-- latency_ms, metadata, answer_model, novelty, ood, ood_policy, exploration, explored,
-- propensity, at) and optionally the query's embedding (an array of numbers, kept in
-- route_vectors in the routing clustering's space) and text. A route id already logged is
-- skipped, so writing a batch twice writes it once.
CREATE FUNCTION avengers.log_routes(entries jsonb)
RETURNS integer
LANGUAGE sql
BEGIN ATOMIC
  WITH e AS (
    SELECT x.*
    FROM jsonb_to_recordset(entries) AS x(
      route_id uuid, api_key_id integer, query_hash text, clustering_id integer,
      cluster integer, distance double precision, models text[], strategy text,
      final_answer text, vote_share double precision, samples integer,
      latency_ms double precision, metadata jsonb, answer_model text,
      novelty double precision, ood boolean, ood_policy text, exploration text,
      explored boolean, propensity double precision, at timestamptz, embedding real[],
      query_text text)
  ),
  logged AS (
    INSERT INTO avengers.route_log (
      route_id, api_key_id, query_hash, clustering_id, cluster, distance, models, strategy,
      final_answer, vote_share, samples, latency_ms, metadata, answer_model, novelty, ood,
      ood_policy, exploration, explored, propensity, at)
    SELECT e.route_id, e.api_key_id, e.query_hash, e.clustering_id, e.cluster, e.distance,
           coalesce(e.models, '{}'), e.strategy, e.final_answer, e.vote_share, e.samples,
           e.latency_ms, coalesce(e.metadata, '{}'), e.answer_model, e.novelty, e.ood,
           e.ood_policy, e.exploration, e.explored, e.propensity, coalesce(e.at, now())
    FROM e
    ON CONFLICT (route_id) DO NOTHING
    RETURNING route_id, clustering_id
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
  'Write route-log rows (a JSON array of objects with route_log''s columns, and optionally each query''s embedding and text for route_vectors) in one statement; route ids already logged are skipped. Returns the rows written.';
