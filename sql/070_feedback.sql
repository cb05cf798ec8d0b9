-- Recording feedback: the rules a feedback row must meet, stated once. avengers.record_feedback
-- applies them to one row (the clients and the gateway call it); `avengers feedback import`
-- applies avengers.feedback_problem to every row of a file before inserting any.

-- The models a request may be scored for: the ones it sampled (route_log.models); for a decision
-- only (strategy route: the caller called a model itself), its candidates. The default, first:
-- the model whose answer was returned, else the first sampled, else the first candidate.
CREATE FUNCTION avengers.route_models(route uuid)
RETURNS TABLE (models text[], answer_model text)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT CASE WHEN cardinality(r.models) > 0 THEN r.models
              WHEN r.strategy = 'route'
                THEN ARRAY(SELECT jsonb_array_elements_text(r.metadata -> 'candidates'))
              ELSE r.models END,
         coalesce(r.answer_model,
                  r.models[1],
                  CASE WHEN r.strategy = 'route' THEN r.metadata -> 'candidates' ->> 0 END)
  FROM avengers.route_log r
  WHERE r.route_id = route;
END;
COMMENT ON FUNCTION avengers.route_models(uuid) IS
  'The models feedback on a request may score (those it sampled; a decision''s candidates) and the one it scores by default (the model whose answer was returned). No row: no such route.';

CREATE FUNCTION avengers.feedback_problem(
  route uuid, score double precision, model text DEFAULT NULL, source text DEFAULT 'user',
  OUT field text, OUT message text)
LANGUAGE sql STABLE
BEGIN ATOMIC
  WITH r AS (SELECT * FROM avengers.route_models(feedback_problem.route)),
  arg AS (
    SELECT feedback_problem.route AS route, feedback_problem.score AS score,
           feedback_problem.model AS model, feedback_problem.source AS source
  )
  SELECT v.field, v.message
  FROM (
    SELECT 1 AS step, 'score' AS field,
           format('score must be in [0, 1], got %s', coalesce(a.score::text, 'none')) AS message
    FROM arg a
    WHERE a.score IS NULL OR a.score < 0 OR a.score > 1 OR a.score = 'NaN'
    UNION ALL
    SELECT 2, 'source', 'source must be a non-blank name (e.g. user, grader)'
    FROM arg a WHERE a.source IS NULL OR btrim(a.source) = ''
    UNION ALL
    SELECT 3, 'route_id',
           format('no request has route id %s (route ids are in the x-avengers-route-id '
                  'header, Answer.route_id and avengers.route_log)', coalesce(a.route::text, 'none'))
    FROM arg a WHERE NOT EXISTS (SELECT 1 FROM r)
    UNION ALL
    SELECT 4, 'model', format('request %s sampled no model: nothing to score', a.route)
    FROM arg a CROSS JOIN r WHERE a.model IS NULL AND r.answer_model IS NULL
    UNION ALL
    SELECT 5, 'model',
           format('request %s sampled %s, not %s: feedback scores a model the request used',
                  a.route, coalesce(nullif(array_to_string(r.models, ', '), ''), 'no model'),
                  a.model)
    FROM arg a CROSS JOIN r WHERE a.model IS NOT NULL AND NOT a.model = ANY (r.models)
    UNION ALL
    SELECT 6, 'model', format('model %s is no longer in the pool', coalesce(a.model, r.answer_model))
    FROM arg a CROSS JOIN r
    WHERE coalesce(a.model, r.answer_model) IS NOT NULL
      AND (a.model IS NULL OR a.model = ANY (r.models))
      AND NOT EXISTS (SELECT 1 FROM avengers.models m WHERE m.name = coalesce(a.model, r.answer_model))
  ) AS v
  ORDER BY v.step
  LIMIT 1;
END;
COMMENT ON FUNCTION avengers.feedback_problem(uuid, double precision, text, text) IS
  'Why a feedback row would be refused, as (field, message), or NULLs when it is fine: score in [0, 1], a non-blank source, a route id that exists, and a model the request sampled (NULL: the model that answered).';

CREATE FUNCTION avengers.record_feedback(
  route uuid, score double precision, model text DEFAULT NULL, source text DEFAULT 'user',
  at timestamptz DEFAULT now())
RETURNS TABLE (feedback_id bigint, model_name text, replaced boolean)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
  bad record;
  scored text;
  scored_id integer;
  earlier boolean;
  stored bigint;
BEGIN
  SELECT p.field, p.message INTO bad
  FROM avengers.feedback_problem(record_feedback.route, record_feedback.score,
                                 record_feedback.model, record_feedback.source) p;
  IF bad.field = 'route_id' THEN
    RAISE EXCEPTION '%', bad.message USING ERRCODE = 'VA404', COLUMN = bad.field;
  ELSIF bad.field IS NOT NULL THEN
    RAISE EXCEPTION '%', bad.message USING ERRCODE = 'VA422', COLUMN = bad.field;
  END IF;
  SELECT coalesce(record_feedback.model, r.answer_model) INTO scored
  FROM avengers.route_models(record_feedback.route) r;
  SELECT m.id INTO scored_id FROM avengers.models m WHERE m.name = scored;
  earlier := EXISTS (SELECT 1 FROM avengers.feedback f
                     WHERE f.route_id = record_feedback.route AND f.source = record_feedback.source);
  INSERT INTO avengers.feedback AS f (route_id, source, model_id, score, at)
  VALUES (record_feedback.route, record_feedback.source, scored_id, record_feedback.score, record_feedback.at)
  ON CONFLICT (route_id, source) DO UPDATE
    SET model_id = excluded.model_id, score = excluded.score, at = excluded.at
  RETURNING f.id INTO stored;
  RETURN QUERY SELECT stored, scored, earlier;
END
$$;
COMMENT ON FUNCTION avengers.record_feedback(uuid, double precision, text, text, timestamptz) IS
  'Store one feedback row (replacing the same source''s earlier one for the route): SELECT * FROM avengers.record_feedback(''<route id>'', 1.0). Refused rows raise VA404 (unknown route) or VA422 naming the field. Served after CALL avengers.refresh_production().';
