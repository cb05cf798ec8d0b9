-- What the console (/console) shows, as objects analysts can query themselves: the traffic over
-- time, the request log with its key and feedback, each model's spend per day, the pool's
-- health, and a cluster's calibration examples and neighbours. Each page prints the SELECT it
-- runs on them.

-- Requests per time bucket since `since`: answered, failed, with a fallback, out of
-- distribution, and what they cost (route_log.cost, at the prices when each was logged).
CREATE FUNCTION avengers.traffic_series(since timestamptz, bucket interval DEFAULT '1 hour')
RETURNS TABLE (
  bucket_start timestamptz, requests bigint, answers bigint, errors bigint, fallbacks bigint,
  ood bigint, ood_share double precision, tokens_in bigint, tokens_out bigint,
  cost double precision)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT date_bin(traffic_series.bucket, r.at, timestamptz '2000-01-01 00:00:00+00'),
         count(*),
         count(*) FILTER (WHERE r.final_answer IS NOT NULL),
         count(*) FILTER (WHERE r.metadata ? 'error'),
         count(*) FILTER (WHERE jsonb_array_length(
                            coalesce(r.metadata -> 'fallbacks', '[]')) > 0),
         count(*) FILTER (WHERE r.ood),
         (count(*) FILTER (WHERE r.ood))::double precision / nullif(count(r.ood), 0),
         sum(u.tokens_in)::bigint,
         sum(u.tokens_out)::bigint,
         coalesce(sum(r.cost), 0)
  FROM avengers.route_log r
  CROSS JOIN LATERAL avengers.request_usage(r.metadata -> 'usage') AS u
  WHERE r.at >= traffic_series.since
  GROUP BY 1
  ORDER BY 1;
END;
COMMENT ON FUNCTION avengers.traffic_series(timestamptz, interval) IS
  'Requests logged since `since` per `bucket` (default an hour): answered, failed (metadata error), with a fallback, out of distribution and their share, tokens and cost (route_log.cost). SELECT * FROM avengers.traffic_series(now() - interval ''1 day'').';

-- One row per logged request, with what the console filters on and shows in its list.
CREATE VIEW avengers.request_log AS
SELECT r.route_id, r.at, r.clustering_id, r.cluster, r.distance, r.novelty, r.ood,
       r.ood_policy, r.strategy, r.answer_model, r.models, r.samples, r.vote_share,
       r.latency_ms, r.cost, r.exploration, r.explored, r.propensity, r.final_answer,
       r.metadata, k.name AS key_name,
       ARRAY(SELECT jsonb_array_elements_text(coalesce(r.metadata -> 'candidates', '[]')))
         AS candidates,
       r.metadata ->> 'error' AS error,
       jsonb_array_length(coalesce(r.metadata -> 'fallbacks', '[]')) AS fallbacks,
       f.feedback_n, f.feedback_mean
FROM avengers.route_log r
LEFT JOIN avengers.api_keys k ON k.id = r.api_key_id
LEFT JOIN LATERAL (
  SELECT count(*) AS feedback_n, avg(fb.score) AS feedback_mean
  FROM avengers.feedback fb WHERE fb.route_id = r.route_id
) AS f ON true;
COMMENT ON VIEW avengers.request_log IS
  'The route log as the console lists it: each request with its key''s name (never the key), candidates, error, fallbacks and feedback.';
COMMENT ON COLUMN avengers.request_log.route_id IS 'The x-avengers-route-id the caller got.';
COMMENT ON COLUMN avengers.request_log.at IS 'When the request was logged.';
COMMENT ON COLUMN avengers.request_log.key_name IS 'Name of the API key that sent it (NULL: none, e.g. --no-auth or a client).';
COMMENT ON COLUMN avengers.request_log.candidates IS 'The ranked candidate models of its decision, best first.';
COMMENT ON COLUMN avengers.request_log.error IS 'Why it failed (NULL: it did not).';
COMMENT ON COLUMN avengers.request_log.fallbacks IS 'Candidates that failed and were replaced by the next.';
COMMENT ON COLUMN avengers.request_log.feedback_n IS 'Feedback rows on it (one per source).';
COMMENT ON COLUMN avengers.request_log.feedback_mean IS 'Their mean score (NULL: none).';

-- The feedback rows on one request, with the model each scored.
CREATE FUNCTION avengers.request_feedback(route uuid)
RETURNS TABLE (source text, model text, score double precision, at timestamptz)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT f.source, m.name, f.score, f.at
  FROM avengers.feedback f
  LEFT JOIN avengers.models m ON m.id = f.model_id
  WHERE f.route_id = request_feedback.route
  ORDER BY f.at;
END;
COMMENT ON FUNCTION avengers.request_feedback(uuid) IS
  'The feedback rows on the request with route id `route`: source, the model scored, score and time.';

-- Each model's share of the traffic and its spend per UTC day, from the usage every request
-- logged (samples of every candidate called) at the models' current prices.
CREATE VIEW avengers.model_spend_daily AS
SELECT (r.at AT TIME ZONE 'UTC')::date AS day,
       u.model,
       count(DISTINCT r.route_id)::bigint AS requests,
       sum(u.samples)::bigint AS samples,
       sum(u.tokens_in)::bigint AS tokens_in,
       sum(u.tokens_out)::bigint AS tokens_out,
       sum((coalesce(m.cost_in_per_m, 0) * coalesce(u.tokens_in, 0)
            + coalesce(m.cost_out_per_m, 0) * coalesce(u.tokens_out, 0)) / 1e6) AS cost
FROM avengers.route_log r
CROSS JOIN LATERAL jsonb_to_recordset(
  CASE WHEN jsonb_typeof(r.metadata -> 'usage') = 'array' THEN r.metadata -> 'usage' ELSE '[]' END
) AS u(model text, samples integer, tokens_in bigint, tokens_out bigint)
LEFT JOIN avengers.models m ON m.name = u.model
GROUP BY 1, 2;
COMMENT ON VIEW avengers.model_spend_daily IS
  'Per UTC day and model: requests that called it, samples drawn, tokens and their cost at the model''s current prices per 1M tokens (route_log usage).';
COMMENT ON COLUMN avengers.model_spend_daily.day IS 'UTC day.';
COMMENT ON COLUMN avengers.model_spend_daily.model IS 'Pool model called.';
COMMENT ON COLUMN avengers.model_spend_daily.requests IS 'Requests that called it.';
COMMENT ON COLUMN avengers.model_spend_daily.samples IS 'Samples drawn from it.';
COMMENT ON COLUMN avengers.model_spend_daily.tokens_in IS 'Prompt tokens of those samples.';
COMMENT ON COLUMN avengers.model_spend_daily.tokens_out IS 'Completion tokens of those samples.';
COMMENT ON COLUMN avengers.model_spend_daily.cost IS 'Their cost at the model''s current prices (0 without a price).';

-- The pool as the gateway sees it over the last day: each model's endpoint, how often it was
-- called and answered, and how often it failed and was replaced.
CREATE VIEW avengers.pool_health AS
WITH recent AS (
  SELECT r.* FROM avengers.route_log r WHERE r.at >= now() - interval '1 day'
),
called AS (
  SELECT u.model, sum(u.requests)::bigint AS calls, sum(u.errors)::bigint AS errors,
         avg(u.latency_ms / nullif(u.requests, 0)) AS latency_ms
  FROM recent r
  CROSS JOIN LATERAL jsonb_to_recordset(
    CASE WHEN jsonb_typeof(r.metadata -> 'usage') = 'array' THEN r.metadata -> 'usage' ELSE '[]' END
  ) AS u(model text, requests integer, errors integer, latency_ms double precision)
  GROUP BY u.model
),
answered AS (
  SELECT r.answer_model AS model, count(*) AS answers, max(r.at) AS last_answer
  FROM recent r WHERE r.final_answer IS NOT NULL GROUP BY r.answer_model
),
replaced AS (
  SELECT fb ->> 'model' AS model, count(*) AS fallbacks
  FROM recent r CROSS JOIN LATERAL jsonb_array_elements(coalesce(r.metadata -> 'fallbacks', '[]')) AS fb
  GROUP BY 1
)
SELECT m.name AS model, m.active, m.endpoint, m.served_name, m.cost_in_per_m, m.cost_out_per_m,
       coalesce(c.calls, 0) AS calls, coalesce(c.errors, 0) AS errors, c.latency_ms,
       coalesce(a.answers, 0) AS answers, a.last_answer,
       coalesce(x.fallbacks, 0) AS fallbacks
FROM avengers.models m
LEFT JOIN called c ON c.model = m.name
LEFT JOIN answered a ON a.model = m.name
LEFT JOIN replaced x ON x.model = m.name;
COMMENT ON VIEW avengers.pool_health IS
  'Each pool model over the last 24 hours of the route log: its endpoint and prices, HTTP calls made to it and how many failed, their mean latency, answers it won, and how often it failed and was replaced by the next candidate.';
COMMENT ON COLUMN avengers.pool_health.model IS 'Pool model.';
COMMENT ON COLUMN avengers.pool_health.active IS 'Whether routing may choose it.';
COMMENT ON COLUMN avengers.pool_health.endpoint IS 'Its OpenAI-compatible endpoint (NULL: none, routing only).';
COMMENT ON COLUMN avengers.pool_health.served_name IS 'The model name sent to the endpoint.';
COMMENT ON COLUMN avengers.pool_health.cost_in_per_m IS 'Price per 1M prompt tokens.';
COMMENT ON COLUMN avengers.pool_health.cost_out_per_m IS 'Price per 1M completion tokens.';
COMMENT ON COLUMN avengers.pool_health.calls IS 'HTTP requests made to it in the last 24 hours.';
COMMENT ON COLUMN avengers.pool_health.errors IS 'Of those, the ones that failed.';
COMMENT ON COLUMN avengers.pool_health.latency_ms IS 'Mean wall time of one of its requests, in milliseconds.';
COMMENT ON COLUMN avengers.pool_health.answers IS 'Requests whose returned answer was its.';
COMMENT ON COLUMN avengers.pool_health.last_answer IS 'When it last answered.';
COMMENT ON COLUMN avengers.pool_health.fallbacks IS 'Times it failed and the next candidate was tried.';

-- A cluster of the active clustering: the calibration queries nearest its centroid.
CREATE FUNCTION avengers.cluster_examples(target integer, n integer DEFAULT 8)
RETURNS TABLE (query_id bigint, dataset text, task_type text, distance real, text text)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT q.id, d.name, q.task_type, a.distance, q.text
  FROM avengers.active_clustering k
  JOIN avengers.assignments a ON a.clustering_id = k.id AND a.cluster = cluster_examples.target
  JOIN avengers.queries q ON q.id = a.query_id
  JOIN avengers.datasets d ON d.id = q.dataset_id
  ORDER BY a.distance, q.id
  LIMIT cluster_examples.n;
END;
COMMENT ON FUNCTION avengers.cluster_examples(integer, integer) IS
  'The `n` calibration queries nearest the centroid of cluster `target` of the active clustering, with their dataset: what the cluster is about. SELECT * FROM avengers.cluster_examples(3).';

-- A cluster's nearest other clusters, by the Euclidean distance between centroids.
CREATE FUNCTION avengers.cluster_neighbours(target integer, n integer DEFAULT 5)
RETURNS TABLE (cluster integer, distance double precision, size integer)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT o.cluster, o.centroid <-> c.centroid, o.size
  FROM avengers.active_clustering k
  JOIN avengers.centroids c ON c.clustering_id = k.id AND c.cluster = cluster_neighbours.target
  JOIN avengers.centroids o ON o.clustering_id = k.id AND o.cluster <> c.cluster
  ORDER BY 2, 1
  LIMIT cluster_neighbours.n;
END;
COMMENT ON FUNCTION avengers.cluster_neighbours(integer, integer) IS
  'The `n` clusters of the active clustering whose centroids are nearest cluster `target`''s (Euclidean distance), with their calibration sizes.';
