-- name: roles
-- The roles and their policies in one round trip: what a client reads (and caches briefly).
SELECT r.role, r.name, p.policy, r.sample_share, r.max_spend_per_day
FROM avengers.policy_roles r JOIN avengers.policies p ON p.name = r.name

-- name: status_counts
-- The shadow policy's stored decisions and sampled answers, and today's (UTC) sampled spend.
SELECT (SELECT count(*) FROM avengers.shadow_decisions WHERE policy_name = %(n)s),
       (SELECT count(*) FROM avengers.shadow_samples s
        JOIN avengers.shadow_decisions d USING (route_id) WHERE d.policy_name = %(n)s),
       (SELECT coalesce(sum(cost), 0) FROM avengers.shadow_samples
        WHERE at >= (now() AT TIME ZONE 'UTC')::date AT TIME ZONE 'UTC')
