-- Keys with policies: what each key spent per day and month (avengers.key_spend, from the
-- route log's cost rolled up per key and day in api_key_usage), and the one call the gateway
-- makes per request to admit it (avengers.admit_key). Days and months are UTC.

CREATE VIEW avengers.key_spend AS
SELECT k.id AS key_id, k.name AS key_name, p.period, p.period_start,
       sum(u.requests)::bigint AS requests, sum(u.tokens_in)::bigint AS tokens_in,
       sum(u.tokens_out)::bigint AS tokens_out, sum(u.cost) AS cost,
       CASE p.period WHEN 'day' THEN k.spend_limit_day ELSE k.spend_limit_month END AS spend_limit
FROM avengers.api_key_usage u
JOIN avengers.api_keys k ON k.id = u.api_key_id
CROSS JOIN LATERAL (
  VALUES ('day', u.day), ('month', date_trunc('month', u.day)::date)
) AS p(period, period_start)
GROUP BY k.id, k.name, p.period, p.period_start, k.spend_limit_day, k.spend_limit_month;
COMMENT ON VIEW avengers.key_spend IS
  'What each API key spent per UTC day and calendar month: requests logged, tokens in and out of every sample drawn, and their cost at the models'' prices when each request was logged; spend_limit is the key''s limit for that period (NULL: none).';

-- The admission of one request with a key, in one round trip: the live key with this hash and
-- its policy, refused (and why) when its spend this day or month has reached a limit or its
-- requests this minute have; otherwise the request is counted in its minute. Its last-used time
-- is refreshed when older than a minute (a busy key does not write a row version per request).
CREATE FUNCTION avengers.admit_key(
  hash text, admit boolean DEFAULT true, at timestamptz DEFAULT now())
RETURNS TABLE (
  key_id integer, key_name text, models text[], max_samples integer, routing jsonb,
  refused text, spent double precision, quota double precision, retry_after integer,
  console_only boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  k avengers.api_keys;
  today date := (admit_key.at AT TIME ZONE 'UTC')::date;
  this_minute timestamptz := date_trunc('minute', admit_key.at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
  day_spent double precision;
  month_spent double precision;
  counted integer;
BEGIN
  SELECT * INTO k FROM avengers.api_keys a WHERE a.key_hash = hash AND a.revoked_at IS NULL;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  IF k.last_used_at IS NULL OR k.last_used_at < admit_key.at - interval '1 minute' THEN
    UPDATE avengers.api_keys SET last_used_at = admit_key.at WHERE id = k.id;
  END IF;
  key_id := k.id; key_name := k.name; models := k.models; max_samples := k.max_samples;
  routing := k.routing; console_only := k.console_only;
  IF NOT admit OR k.console_only THEN
    RETURN NEXT;  -- a request that calls no model, or a console key: the key alone
    RETURN;
  END IF;
  IF k.spend_limit_day IS NOT NULL OR k.spend_limit_month IS NOT NULL THEN
    SELECT coalesce(sum(u.cost) FILTER (WHERE u.day = today), 0), coalesce(sum(u.cost), 0)
      INTO day_spent, month_spent
    FROM avengers.api_key_usage u
    WHERE u.api_key_id = k.id AND u.day >= date_trunc('month', today)::date;
    IF k.spend_limit_day IS NOT NULL AND day_spent >= k.spend_limit_day THEN
      refused := 'day'; spent := day_spent; quota := k.spend_limit_day;
      retry_after := ceil(extract(epoch FROM ((today + 1)::timestamp AT TIME ZONE 'UTC') - admit_key.at));
      RETURN NEXT;
      RETURN;
    END IF;
    IF k.spend_limit_month IS NOT NULL AND month_spent >= k.spend_limit_month THEN
      refused := 'month'; spent := month_spent; quota := k.spend_limit_month;
      retry_after := ceil(extract(epoch FROM
        ((date_trunc('month', today) + interval '1 month') AT TIME ZONE 'UTC') - admit_key.at));
      RETURN NEXT;
      RETURN;
    END IF;
  END IF;
  IF k.requests_per_minute IS NOT NULL THEN
    DELETE FROM avengers.api_key_minutes m WHERE m.api_key_id = k.id AND m.minute < this_minute;
    INSERT INTO avengers.api_key_minutes AS m (api_key_id, minute, requests)
    VALUES (k.id, this_minute, 1)
    ON CONFLICT (api_key_id, minute) DO UPDATE SET requests = m.requests + 1
      WHERE m.requests < k.requests_per_minute
    RETURNING m.requests INTO counted;
    IF counted IS NULL THEN
      refused := 'rate'; spent := k.requests_per_minute; quota := k.requests_per_minute;
      retry_after := greatest(1, ceil(extract(epoch FROM this_minute + interval '1 minute' - admit_key.at)));
      RETURN NEXT;
      RETURN;
    END IF;
  END IF;
  RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION avengers.admit_key(text, boolean, timestamptz) IS
  'Admit one gateway request with the key whose sha256 is `hash`: no row when no live key has it; else the key and its policy, with `refused` = day or month (its spend in that UTC period, `spent`, reached its limit, `quota`) or rate (its requests this minute reached `quota` = requests_per_minute), and `retry_after` seconds until the period ends. An admitted request is counted in its minute. With `admit` false (a request that calls no model, such as feedback) only the key is looked up; a console-only key (console_only) is looked up only, never counted, and the gateway refuses it.';
