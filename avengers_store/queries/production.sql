-- name: pending
SELECT q.id, q.text, q.task_type, q.reference_answer
FROM avengers.queries q
JOIN avengers.datasets d ON d.id = q.dataset_id
WHERE q.split = 'calibration' AND NOT d.is_ood
  AND q.reference_answer IS NOT NULL
  AND (%(dataset)s::text IS NULL OR d.name = %(dataset)s)
  AND NOT EXISTS (SELECT 1 FROM avengers.outcomes o
                  WHERE o.query_id = q.id AND o.model_id = %(model)s)
ORDER BY q.id
LIMIT %(limit)s

-- name: ungradable
SELECT count(*)
FROM avengers.queries q JOIN avengers.datasets d ON d.id = q.dataset_id
WHERE q.split = 'calibration' AND NOT d.is_ood AND q.reference_answer IS NULL
  AND (%(dataset)s::text IS NULL OR d.name = %(dataset)s)
  AND NOT EXISTS (SELECT 1 FROM avengers.outcomes o
                  WHERE o.query_id = q.id AND o.model_id = %(model)s)

-- name: first_problem
-- The first row the store would refuse, in file order, and why.
SELECT i.ord, p.field, p.message
FROM avengers_feedback_in i
CROSS JOIN LATERAL avengers.feedback_problem(i.route_id, i.score, i.model, i.source) AS p
WHERE p.field IS NOT NULL
ORDER BY i.ord
LIMIT 1

-- name: store_feedback
-- The last row per (route, source) wins, as if the rows had been recorded one by one.
WITH latest AS (
  SELECT DISTINCT ON (i.route_id, i.source) i.*
  FROM avengers_feedback_in i
  ORDER BY i.route_id, i.source, i.ord DESC
),
earlier AS (
  SELECT count(*) AS n FROM latest l
  JOIN avengers.feedback f ON f.route_id = l.route_id AND f.source = l.source
),
stored AS (
  INSERT INTO avengers.feedback AS f (route_id, source, model_id, score, at)
  SELECT l.route_id, l.source, m.id, l.score, coalesce(l.at, now())
  FROM latest l
  CROSS JOIN LATERAL avengers.route_models(l.route_id) AS r
  JOIN avengers.models m ON m.name = coalesce(l.model, r.answer_model)
  ON CONFLICT (route_id, source) DO UPDATE
    SET model_id = excluded.model_id, score = excluded.score, at = excluded.at
  RETURNING 1
)
SELECT (SELECT count(*) FROM stored), (SELECT n FROM earlier)
