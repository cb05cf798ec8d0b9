-- name: replay_log_row
INSERT INTO avengers.route_log (route_id, at, query_hash, clustering_id, cluster, distance,
                                models, strategy, answer_model, exploration, explored, propensity)
SELECT x.r, x.t, x.h, %s, x.c, x.d, ARRAY[x.m], 'replay', x.m, %s, x.e, x.p
FROM unnest(%s::uuid[], %s::timestamptz[], %s::text[], %s::integer[], %s::float8[], %s::text[],
            %s::boolean[], %s::float8[]) AS x(r, t, h, c, d, m, e, p)

-- name: cost_matrix
-- Per (test query, active model): the cost of answering it, from the outcome row when it
-- measured one, else the store's cost model on the query's text.
SELECT q.id, m.id,
       CASE WHEN o.cost IS NOT NULL THEN o.cost / o.samples
            ELSE avengers.expected_cost(
                   m.cost_in_per_m, m.cost_out_per_m,
                   coalesce(o.tokens_in::double precision,
                            avengers.prompt_tokens(char_length(q.text), mc.tokens_per_char)),
                   coalesce(o.tokens_out::double precision / o.samples, mc.tokens_out),
                   NULL, 1)
       END
FROM avengers.queries q
CROSS JOIN avengers.models m
LEFT JOIN avengers.outcomes o ON o.query_id = q.id AND o.model_id = m.id
LEFT JOIN avengers.model_costs mc
  ON mc.model_id = m.id AND mc.clustering_id = (SELECT k.id FROM avengers.active_clustering k)
WHERE q.id = ANY(%s) AND m.id = ANY(%s)

-- name: replay_queries
SELECT q.id, d.name, d.is_ood, q.split, q.content_hash, char_length(q.text)
FROM avengers.queries q JOIN avengers.datasets d ON d.id = q.dataset_id
ORDER BY q.id
