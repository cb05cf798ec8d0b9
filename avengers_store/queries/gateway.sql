-- name: pinned_model
SELECT m.name FROM avengers.gateway_sessions s JOIN avengers.models m ON m.id = s.model_id
WHERE s.session_hash = %s AND s.last_seen_at > now() - make_interval(secs => %s)

-- name: pin_session
INSERT INTO avengers.gateway_sessions AS s (session_hash, model_id, clustering_id, cluster)
SELECT %s, m.id, %s, %s FROM avengers.models m WHERE m.name = %s
ON CONFLICT (session_hash) DO UPDATE
  SET last_seen_at = now(),
      model_id = CASE WHEN s.last_seen_at > now() - make_interval(secs => %s) THEN s.model_id
                      ELSE excluded.model_id END,
      clustering_id = CASE WHEN s.last_seen_at > now() - make_interval(secs => %s)
                           THEN s.clustering_id ELSE excluded.clustering_id END,
      cluster = CASE WHEN s.last_seen_at > now() - make_interval(secs => %s) THEN s.cluster
                     ELSE excluded.cluster END

-- name: key_usage
SELECT s.key_name, s.period, s.period_start, s.requests, s.tokens_in, s.tokens_out, s.cost,
       s.spend_limit
FROM avengers.key_spend s
JOIN avengers.api_keys k ON k.id = s.key_id
WHERE s.period = %(period)s
  AND (%(name)s::text IS NULL OR s.key_name = %(name)s)
  AND (%(since)s::date IS NULL OR s.period_start >= %(since)s)
  AND (%(revoked)s OR k.revoked_at IS NULL)
ORDER BY s.period_start DESC, s.key_name

-- name: store_revision
SELECT (SELECT version_num FROM public.avengers_alembic_version),
(SELECT value FROM avengers.meta WHERE key = %s),
(SELECT id FROM avengers.active_clustering),
(SELECT count(*) FROM avengers.models
 WHERE active AND endpoint IS NOT NULL)
