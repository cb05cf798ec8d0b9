-- What an answer costs: the cost model's formula and defaults, and what was measured per cluster
-- and per model, for routing with a quality-cost trade-off (sql/040_routing_functions.sql) and
-- for the replay's frontier. README.md ("Cost-aware routing") states the model in prose.
--
-- Expected cost of a query on model m, for `completions` answers drawn from one prompt:
--   measured: completions * (the pooled measured cost per answer of m near the query), when any
--             outcome or logged request of m carries a cost (outcomes.cost);
--   else:     (price_in * prompt tokens + completions * price_out * completion tokens) / 1e6,
--             prices per 1M tokens (avengers.models.cost_in_per_m / cost_out_per_m);
--   NULL when m has neither a price nor a measured cost.
-- Expected latency of a request on m: m's measured milliseconds per model request (the route
-- log's usage), pooled over the query's neighbourhood like the scores, else m's mean.
-- Prompt tokens = the query's characters * m's measured prompt tokens per character
-- (model_costs.tokens_per_char), else 1 token per 4 characters. Completion tokens = m's measured
-- tokens per answer pooled over the query's neighbourhood like the scores (cluster_costs), else
-- m's mean, else 256.
-- "Measured" is what the active clustering's calibration outcomes carry (tokens_in, tokens_out,
-- cost, e.g. from `avengers models evaluate`) plus the usage the route log records for requests
-- routed to its clusters. An outcome of s samples counts as s answers.

CREATE FUNCTION avengers.prompt_tokens(chars double precision, tokens_per_char double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN chars * coalesce(tokens_per_char, 0.25);
COMMENT ON FUNCTION avengers.prompt_tokens(double precision, double precision) IS
  'Prompt tokens of a text of `chars` characters: chars * the model''s measured tokens per character, else chars / 4.';

CREATE FUNCTION avengers.pooled_mean(
  ws double precision, wn double precision, mean double precision, shrinkage double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce((ws + shrinkage * mean) / nullif(wn + shrinkage, 0), mean);
COMMENT ON FUNCTION avengers.pooled_mean(double precision, double precision, double precision, double precision) IS
  'A per-answer measurement pooled over a neighbourhood (weighted sum ws over weighted count wn), shrunk toward the model''s mean like routing scores; the mean when nothing was measured nearby, NULL when nothing at all.';

CREATE FUNCTION avengers.expected_cost(
  price_in double precision, price_out double precision, prompt_tokens double precision,
  completion_tokens double precision, measured_cost double precision, completions integer)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN measured_cost IS NOT NULL THEN completions * measured_cost
            WHEN price_in IS NULL AND price_out IS NULL THEN NULL
            ELSE (coalesce(price_in, 0) * prompt_tokens
                  + completions * coalesce(price_out, 0) * coalesce(completion_tokens, 256)) / 1e6
       END;
COMMENT ON FUNCTION avengers.expected_cost(double precision, double precision, double precision, double precision, double precision, integer) IS
  'Expected cost of `completions` answers to one prompt: completions * measured cost per answer when measured, else prices per 1M tokens * tokens (completion tokens 256 when unknown); NULL without a price or a measured cost.';

-- Per cluster of the active clustering and model: measured completion tokens and costs, summed
-- (routing pools them over a query's neighbourhood as sparse vectors in routing_models).
CREATE MATERIALIZED VIEW avengers.cluster_costs AS
WITH measured AS (
  SELECT a.clustering_id, a.cluster, o.model_id, o.samples,
         o.tokens_in, char_length(q.text) AS chars, o.tokens_out, o.cost,
         NULL::double precision AS latency_ms, NULL::integer AS requests
  FROM avengers.assignments a
  JOIN avengers.routed_clusterings k ON k.id = a.clustering_id
  JOIN avengers.outcomes o ON o.query_id = a.query_id
  JOIN avengers.queries q ON q.id = a.query_id
  WHERE o.tokens_in IS NOT NULL OR o.tokens_out IS NOT NULL OR o.cost IS NOT NULL
  UNION ALL
  -- Requests answered through the library or the gateway: per model, the answers drawn, their
  -- completion tokens (the route log keeps no text, so no prompt length) and the time its
  -- requests took.
  SELECT r.clustering_id, r.cluster, m.id, u.samples, NULL, NULL, u.tokens_out, NULL,
         u.latency_ms, u.requests
  FROM avengers.route_log r
  JOIN avengers.routed_clusterings k ON k.id = r.clustering_id
  CROSS JOIN LATERAL jsonb_to_recordset(
    CASE WHEN jsonb_typeof(r.metadata -> 'usage') = 'array' THEN r.metadata -> 'usage'
         ELSE '[]'::jsonb END)
       AS u(model text, samples integer, tokens_out bigint, latency_ms double precision,
            requests integer)
  JOIN avengers.models m ON m.name = u.model
  WHERE r.cluster IS NOT NULL AND u.samples > 0
    AND (u.tokens_out IS NOT NULL OR (u.latency_ms IS NOT NULL AND u.requests > 0))
)
SELECT clustering_id, cluster, model_id,
       coalesce(sum(tokens_in), 0)::double precision AS tokens_in_sum,
       coalesce(sum(chars) FILTER (WHERE tokens_in IS NOT NULL), 0)::double precision AS chars_sum,
       coalesce(sum(samples) FILTER (WHERE tokens_out IS NOT NULL), 0)::double precision AS answers,
       coalesce(sum(tokens_out), 0)::double precision AS tokens_out_sum,
       coalesce(sum(samples) FILTER (WHERE cost IS NOT NULL), 0)::double precision AS cost_answers,
       coalesce(sum(cost), 0)::double precision AS cost_sum,
       coalesce(sum(requests) FILTER (WHERE latency_ms IS NOT NULL), 0)::double precision
         AS latency_requests,
       coalesce(sum(latency_ms) FILTER (WHERE requests > 0), 0)::double precision AS latency_sum
FROM measured
GROUP BY clustering_id, cluster, model_id
WITH DATA;
CREATE UNIQUE INDEX cluster_costs_key ON avengers.cluster_costs (clustering_id, cluster, model_id);
COMMENT ON MATERIALIZED VIEW avengers.cluster_costs IS
  'Per cluster of the active clustering and model: measured prompt and completion tokens and costs of its calibration outcomes (outcomes.tokens_in / tokens_out / cost) and of the requests the route log answered there (usage). Only clusters and models with a measurement have a row.';
CALL avengers.comment_columns('avengers.cluster_costs', $$
clustering_id: The active clustering version.
cluster: Cluster index.
model_id: Model.
tokens_in_sum: Prompt tokens of the outcomes with tokens_in.
chars_sum: Characters of those outcomes' query texts.
answers: Answers (samples) behind tokens_out_sum.
tokens_out_sum: Completion tokens of those answers.
cost_answers: Answers (samples) behind cost_sum.
latency_requests: Model requests the route log timed here.
latency_sum: Their summed wall time, in milliseconds.
cost_sum: Measured cost of those answers (outcomes.cost).
$$);

-- Per model: the same measurements over all clusters, as means (what a route falls back to).
CREATE MATERIALIZED VIEW avengers.model_costs AS
SELECT cc.clustering_id, cc.model_id,
       sum(cc.tokens_in_sum) / nullif(sum(cc.chars_sum), 0) AS tokens_per_char,
       sum(cc.answers) AS answers,
       sum(cc.tokens_out_sum) / nullif(sum(cc.answers), 0) AS tokens_out,
       sum(cc.cost_answers) AS cost_answers,
       sum(cc.cost_sum) / nullif(sum(cc.cost_answers), 0) AS cost,
       sum(cc.latency_requests) AS latency_requests,
       sum(cc.latency_sum) / nullif(sum(cc.latency_requests), 0) AS latency_ms
FROM avengers.cluster_costs cc
GROUP BY cc.clustering_id, cc.model_id
WITH DATA;
CREATE UNIQUE INDEX model_costs_key ON avengers.model_costs (clustering_id, model_id);
COMMENT ON MATERIALIZED VIEW avengers.model_costs IS
  'Per model with a measurement in the active clustering (cluster_costs): prompt tokens per character of query text, completion tokens per answer and measured cost per answer; NULL where nothing of the kind was measured.';
CALL avengers.comment_columns('avengers.model_costs', $$
clustering_id: The active clustering version.
model_id: Model.
tokens_per_char: Prompt tokens per character of the query text (prompt template included), from outcomes.tokens_in.
answers: Answers behind tokens_out.
tokens_out: Mean completion tokens per answer.
cost_answers: Answers behind cost.
latency_requests: Model requests the route log timed.
latency_ms: Their mean wall time, in milliseconds (NULL: none timed).
cost: Mean measured cost per answer.
$$);
