-- name: dataset_summary
SELECT d.id, d.name, d.category, d.is_ood, d.split_seed, d.calibration_fraction, d.source,
       d.added_at, d.metadata,
       count(q.id)::integer AS n_queries,
       (count(q.id) FILTER (WHERE q.split = 'calibration'))::integer AS n_calibration,
       (count(q.id) FILTER (WHERE q.split = 'test'))::integer AS n_test
FROM avengers.datasets d
LEFT JOIN avengers.queries q ON q.dataset_id = d.id
{where}
GROUP BY d.id
ORDER BY d.name

-- name: query_keys
SELECT q.id, q.content_hash, q.external_id, m.ext
FROM avengers.queries q
LEFT JOIN LATERAL jsonb_array_elements_text(
    coalesce(q.metadata -> 'merged_external_ids', '[]'::jsonb)) AS m(ext) ON true
WHERE q.dataset_id = %s
ORDER BY q.id

-- name: stage_outcomes
CREATE TEMP TABLE IF NOT EXISTS avengers_outcomes_in (
  ord bigint GENERATED ALWAYS AS IDENTITY,
  query_id bigint, model_id integer, score double precision, samples integer,
  answer text, tokens_in integer, tokens_out integer, cost double precision,
  latency_ms double precision, source text
) ON COMMIT DROP

-- name: upsert_outcomes
INSERT INTO avengers.outcomes AS o
  (query_id, model_id, score, samples, answer, tokens_in, tokens_out, cost,
   latency_ms, source, recorded_at)
SELECT query_id, model_id,
       least(1.0, sum(score * samples) / sum(samples)),
       sum(samples),
       (array_agg(answer ORDER BY ord) FILTER (WHERE answer IS NOT NULL))[1],
       sum(tokens_in), sum(tokens_out), sum(cost), avg(latency_ms),
       (array_agg(source ORDER BY ord))[1],
       now()
FROM avengers_outcomes_in
GROUP BY query_id, model_id
ON CONFLICT (query_id, model_id) DO UPDATE SET
  score = excluded.score, samples = excluded.samples, answer = excluded.answer,
  tokens_in = excluded.tokens_in, tokens_out = excluded.tokens_out,
  cost = excluded.cost, latency_ms = excluded.latency_ms, source = excluded.source,
  recorded_at = excluded.recorded_at
