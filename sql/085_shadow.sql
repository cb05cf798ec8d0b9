-- Stored policies and shadow routing: a stored policy read into the value avengers.decide takes,
-- the shadow policy's decisions computed beside the served ones (off the response path, in a
-- batch), and the comparison of the two: agreement, expected quality and cost, sampled answers
-- and off-policy estimates of the difference from the served feedback.

-- A stored policy (routing.Policy.to_dict's JSON) as avengers.routing_policy: fields left out
-- take avengers.policy()'s defaults, the method its numbers (neighbours, temperature, shrinkage).
CREATE FUNCTION avengers.policy_from_json(p jsonb)
RETURNS avengers.routing_policy
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN avengers.policy(
  top_n => coalesce((p ->> 'top_n')::integer, 1),
  neighbours => coalesce((p -> 'method' ->> 'neighbours')::integer, 16),
  temperature => coalesce((p -> 'method' ->> 'temperature')::double precision, 0.1),
  shrinkage => coalesce((p -> 'method' ->> 'shrinkage')::double precision, 1),
  tradeoff => (p ->> 'tradeoff')::double precision,
  max_cost => (p ->> 'max_cost')::double precision,
  completions => coalesce((p ->> 'completions')::integer, 1),
  ood_policy => coalesce(p ->> 'ood_policy', 'flag'),
  exploration => p ->> 'exploration',
  exploration_share => (p ->> 'exploration_share')::double precision,
  production_weight => (p ->> 'production_weight')::double precision,
  require_endpoint => coalesce((p ->> 'require_endpoint')::boolean, false),
  models => CASE WHEN jsonb_typeof(p -> 'models') = 'array'
                 THEN ARRAY(SELECT jsonb_array_elements_text(p -> 'models')) END,
  clustering_id => (p ->> 'clustering_id')::integer,
  max_latency_ms => (p ->> 'max_latency_ms')::double precision,
  latency_weight => (p ->> 'latency_weight')::double precision);
COMMENT ON FUNCTION avengers.policy_from_json(jsonb) IS
  'A stored policy (avengers.policies.policy, routing.Policy.to_dict''s JSON) as the avengers.routing_policy value avengers.decide takes: SELECT * FROM avengers.decide(v, avengers.policy_from_json(policy)).';

-- What a shadow decision reads of a policy: it ranks greedily (exploration off, the policy's
-- target) and prices every candidate (alpha 1 ranks as without a trade-off).
CREATE FUNCTION avengers.shadow_policy(p jsonb)
RETURNS avengers.routing_policy
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN avengers.policy_from_json(
  p || jsonb_build_object('exploration', 'off', 'exploration_share', NULL,
                          'tradeoff', coalesce(p -> 'tradeoff', '1'::jsonb),
                          'top_n', greatest(coalesce((p ->> 'top_n')::integer, 1), 3)));
COMMENT ON FUNCTION avengers.shadow_policy(jsonb) IS
  'The policy a shadow decision ranks with: the stored one with exploration off (its greedy choice) and a trade-off of 1 when it has none (the same order, with expected costs).';

-- The shadow policy's decisions for a batch of served requests, stored in shadow_decisions; the
-- requests chosen for sampling are returned with the shadow model's endpoint. entries: a JSON
-- array of {route_id, embedding (the vector the request was routed with), prompt_chars,
-- served_model (the model asked first), served_policy (its Policy.to_dict), served_propensity}.
-- shadowed: the policy the requests were shadowed under when they were served (NULL: the shadow
-- role's now). A batch computed after the role moved on is still decided under the policy its
-- requests were served beside; it is sampled only while the role still names that policy.
-- The served side is recomputed greedily under its own policy for its top model, score and cost.
CREATE FUNCTION avengers.shadow_decide(entries jsonb, shadowed text DEFAULT NULL)
RETURNS TABLE (route_id uuid, model text, endpoint text, served_name text, api_key_env text,
               expected_cost double precision)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
  role record;
BEGIN
  SELECT p.name, coalesce(r.sample_share, 0) AS sample_share, p.policy INTO role
  FROM avengers.policies p
  LEFT JOIN avengers.policy_roles r ON r.role = 'shadow' AND r.name = p.name
  WHERE p.name = coalesce(shadow_decide.shadowed,
                          (SELECT r2.name FROM avengers.policy_roles r2 WHERE r2.role = 'shadow'));
  IF NOT FOUND OR jsonb_array_length(coalesce(entries, '[]'::jsonb)) = 0 THEN
    RETURN;
  END IF;
  RETURN QUERY
  WITH e AS (
    SELECT x.ord::integer AS ord, (x.v ->> 'route_id')::uuid AS route_id,
           ARRAY(SELECT jsonb_array_elements_text(x.v -> 'embedding'))::real[]::vector AS vec,
           (x.v ->> 'prompt_chars')::integer AS chars, x.v ->> 'served_model' AS served_model,
           coalesce(x.v -> 'served_policy', '{}'::jsonb) AS served_policy,
           (x.v ->> 'served_propensity')::double precision AS served_propensity
    FROM jsonb_array_elements(entries) WITH ORDINALITY AS x(v, ord)
    WHERE jsonb_typeof(x.v -> 'embedding') = 'array'
  ),
  shadow AS (
    SELECT d.* FROM avengers.decide_many(
      (SELECT array_agg(e.vec ORDER BY e.ord) FROM e),
      avengers.shadow_policy(role.policy),
      prompt_chars => (SELECT array_agg(e.chars ORDER BY e.ord) FROM e)) AS d
  ),
  -- One served policy per batch group: requests of a key or a call with its own fields differ.
  groups AS (
    SELECT e.served_policy, array_agg(e.ord ORDER BY e.ord) AS ords,
           array_agg(e.vec ORDER BY e.ord) AS vecs, array_agg(e.chars ORDER BY e.ord) AS chars
    FROM e GROUP BY e.served_policy
  ),
  served AS (
    SELECT g.ords[d.ord] AS ord, d.rank, d.model, d.score, d.expected_cost
    FROM groups g
    CROSS JOIN LATERAL avengers.decide_many(
      g.vecs,
      avengers.shadow_policy(g.served_policy || jsonb_build_object('top_n', 1000)),
      prompt_chars => g.chars) AS d
  ),
  rows AS (
    SELECT e.route_id, s.clustering_id, s.cluster, e.served_model,
           (SELECT v.model FROM served v WHERE v.ord = e.ord AND v.rank = 1) AS served_top,
           s.model,
           ARRAY(SELECT s2.model FROM shadow s2 WHERE s2.ord = e.ord AND s2.model IS NOT NULL
                 ORDER BY s2.rank) AS models,
           s.score,
           (SELECT v.score FROM served v WHERE v.ord = e.ord AND v.model = e.served_model)
             AS served_score,
           s.expected_cost,
           (SELECT v.expected_cost FROM served v WHERE v.ord = e.ord AND v.model = e.served_model)
             AS served_cost,
           e.served_propensity,
           s.model IS NOT NULL AND s.model IS DISTINCT FROM e.served_model
             AND avengers.uniform(hashtext(e.route_id::text), 7) < role.sample_share AS sample
    FROM e
    JOIN shadow s ON s.ord = e.ord AND coalesce(s.rank, 1) = 1
  ),
  stored AS (
    INSERT INTO avengers.shadow_decisions AS t
      (route_id, policy_name, clustering_id, cluster, served_model, served_top, model, models,
       score, served_score, expected_cost, served_cost, served_propensity, sample)
    SELECT r.route_id, role.name, r.clustering_id, r.cluster, r.served_model, r.served_top,
           r.model, r.models, r.score, r.served_score, r.expected_cost, r.served_cost,
           r.served_propensity, r.sample
    FROM rows r
    ON CONFLICT ON CONSTRAINT shadow_decisions_pkey DO NOTHING
    RETURNING t.route_id, t.model, t.sample, t.expected_cost
  )
  SELECT st.route_id, st.model, m.endpoint, coalesce(m.served_name, m.name), m.api_key_env,
         st.expected_cost
  FROM stored st
  JOIN avengers.models m ON m.name = st.model
  WHERE st.sample;
END
$$;
COMMENT ON FUNCTION avengers.shadow_decide(jsonb, text) IS
  'Compute and store (avengers.shadow_decisions) the decision of the shadow policy (the one named, as the requests were served beside it; NULL: the shadow role''s now) for a batch of served requests, in one decide_many over their vectors, beside the served policy''s greedy choice, score and expected cost; returns the requests chosen for sampling (the two disagree, within the sample share, while the role still names that policy) with the shadow model''s endpoint and expected cost. No such policy: nothing.';

-- What the day's sampled shadow answers may still cost (UTC day).
CREATE FUNCTION avengers.shadow_budget()
RETURNS double precision
LANGUAGE sql STABLE
RETURN (SELECT r.max_spend_per_day
                 - coalesce((SELECT sum(s.cost) FROM avengers.shadow_samples s
                             WHERE s.at >= (now() AT TIME ZONE 'UTC')::date AT TIME ZONE 'UTC'), 0)
        FROM avengers.policy_roles r WHERE r.role = 'shadow');
COMMENT ON FUNCTION avengers.shadow_budget() IS
  'What sampled shadow answers may still spend today (UTC): the shadow role''s max_spend_per_day less what shadow_samples cost since midnight; NULL without a cap or without a shadow.';

-- Reserve the most a sampled answer can cost against the day's cap, before it is asked: the
-- shadow role's row is locked, so clients and gateways reserving at once never pass the cap
-- together. The bound is the request's usage at the model's prices with tokens_in (every prompt
-- byte a token, plus the template's) and tokens_out = max_tokens; an unpriced model's bound is 0.
-- True: reserved (a shadow_samples row holds it until the answer's cost replaces it).
CREATE FUNCTION avengers.shadow_reserve(
  route_id uuid, model text, tokens_in bigint, tokens_out bigint)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
  cap double precision;
  bound double precision;
BEGIN
  SELECT r.max_spend_per_day INTO cap FROM avengers.policy_roles r
  WHERE r.role = 'shadow' FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;  -- the shadow was stopped meanwhile
  END IF;
  bound := coalesce((SELECT u.cost FROM avengers.request_usage(jsonb_build_array(
             jsonb_build_object('model', shadow_reserve.model,
                                'tokens_in', shadow_reserve.tokens_in,
                                'tokens_out', shadow_reserve.tokens_out))) u), 0);
  IF cap IS NOT NULL AND avengers.shadow_budget() < bound THEN
    RETURN false;
  END IF;
  INSERT INTO avengers.shadow_samples AS s (route_id, model, cost, reserved)
  VALUES (shadow_reserve.route_id, shadow_reserve.model, bound, bound)
  ON CONFLICT ON CONSTRAINT shadow_samples_pkey DO NOTHING;
  RETURN FOUND;
END
$$;
COMMENT ON FUNCTION avengers.shadow_reserve(uuid, text, bigint, bigint) IS
  'Reserve, against the shadow role''s daily cap, the most a sampled shadow answer can cost (its usage bound at the model''s prices; 0 when unpriced), under a lock on the role so concurrent reservations never pass the cap together; true when reserved (a shadow_samples row holds the reservation until the answer''s cost replaces it).';

-- Per shadowed request: both decisions, the served feedback and what the off-policy estimates
-- add up.
CREATE VIEW avengers.shadow_comparison AS
SELECT d.route_id, d.policy_name, d.at, d.clustering_id, d.cluster, d.served_model, d.served_top,
       d.model AS shadow_model, d.model IS NOT DISTINCT FROM d.served_model AS agrees,
       d.model IS NOT DISTINCT FROM d.served_top AS agrees_greedy,
       d.score AS shadow_score, d.served_score, d.expected_cost AS shadow_cost, d.served_cost,
       d.served_propensity, f.score AS reward,
       s.agrees AS sample_agrees, s.score AS sample_score, s.cost AS sample_cost,
       s.route_id IS NOT NULL AS sampled,
       CASE WHEN f.score IS NOT NULL AND d.served_propensity > 0 THEN
         f.score * ((d.model IS NOT DISTINCT FROM d.served_model)::integer / d.served_propensity
                    - 1) END AS ips_term,
       CASE WHEN f.score IS NOT NULL AND d.served_propensity > 0 THEN
         coalesce(d.score, 0)
         + (d.model IS NOT DISTINCT FROM d.served_model)::integer / d.served_propensity
           * (f.score - coalesce(d.score, 0))
         - f.score END AS dr_term
FROM avengers.shadow_decisions d
LEFT JOIN avengers.route_log r ON r.route_id = d.route_id
LEFT JOIN LATERAL (
  SELECT avg(fb.score) AS score
  FROM avengers.feedback fb JOIN avengers.models m ON m.id = fb.model_id
  WHERE fb.route_id = d.route_id AND m.name = coalesce(r.answer_model, d.served_model)
) AS f ON true
LEFT JOIN avengers.shadow_samples s ON s.route_id = d.route_id;
COMMENT ON VIEW avengers.shadow_comparison IS
  'Per shadowed request: the served and the shadow decision, their expected quality and cost, the served answer''s feedback (reward), the sampled shadow answer, and each request''s term of the inverse-propensity and doubly-robust estimates of (shadow value - served value).';
COMMENT ON COLUMN avengers.shadow_comparison.route_id IS 'The request.';
COMMENT ON COLUMN avengers.shadow_comparison.policy_name IS 'The shadow policy.';
COMMENT ON COLUMN avengers.shadow_comparison.at IS 'When the shadow decision was computed.';
COMMENT ON COLUMN avengers.shadow_comparison.clustering_id IS 'The shadow policy''s clustering.';
COMMENT ON COLUMN avengers.shadow_comparison.cluster IS 'The request''s nearest cluster there.';
COMMENT ON COLUMN avengers.shadow_comparison.served_model IS 'The model the served decision asked first.';
COMMENT ON COLUMN avengers.shadow_comparison.served_top IS 'The served policy''s greedy choice.';
COMMENT ON COLUMN avengers.shadow_comparison.shadow_model IS 'The shadow policy''s choice.';
COMMENT ON COLUMN avengers.shadow_comparison.agrees IS 'The shadow chose the model that was asked.';
COMMENT ON COLUMN avengers.shadow_comparison.agrees_greedy IS 'The shadow chose the served policy''s greedy choice.';
COMMENT ON COLUMN avengers.shadow_comparison.shadow_score IS 'Expected quality of the shadow''s choice (its routing score).';
COMMENT ON COLUMN avengers.shadow_comparison.served_score IS 'Expected quality of the served model (its routing score).';
COMMENT ON COLUMN avengers.shadow_comparison.shadow_cost IS 'Expected cost of the request on the shadow''s choice.';
COMMENT ON COLUMN avengers.shadow_comparison.served_cost IS 'Expected cost of the request on the served model.';
COMMENT ON COLUMN avengers.shadow_comparison.served_propensity IS 'Probability the served model had of going first.';
COMMENT ON COLUMN avengers.shadow_comparison.reward IS 'Mean feedback score of the served answer (NULL: none).';
COMMENT ON COLUMN avengers.shadow_comparison.sample_agrees IS 'The sampled shadow answer agrees with the served one (NULL: not sampled or not comparable).';
COMMENT ON COLUMN avengers.shadow_comparison.sample_score IS 'A grader''s score of the sampled shadow answer.';
COMMENT ON COLUMN avengers.shadow_comparison.sample_cost IS 'What the sampled shadow answer cost.';
COMMENT ON COLUMN avengers.shadow_comparison.sampled IS 'The shadow model was asked.';
COMMENT ON COLUMN avengers.shadow_comparison.ips_term IS 'reward x (1[shadow = asked] / propensity - 1): its mean is the inverse-propensity estimate of shadow value - served value.';
COMMENT ON COLUMN avengers.shadow_comparison.dr_term IS 'shadow_score + 1[shadow = asked] / propensity x (reward - shadow_score) - reward: its mean is the doubly-robust estimate of shadow value - served value.';

-- The comparison per shadow policy, overall (cluster NULL) and per cluster of its clustering,
-- since a time.
CREATE FUNCTION avengers.shadow_summary(since timestamptz DEFAULT '-infinity')
RETURNS TABLE (
  policy_name text, cluster integer, requests bigint, agreement double precision,
  agreement_greedy double precision, shadow_quality double precision,
  served_quality double precision, shadow_cost double precision, served_cost double precision,
  rewarded bigint, served_reward double precision, ips double precision, ips_se double precision,
  dr double precision, dr_se double precision, support bigint, disagreeing_rewarded bigint,
  unknown_propensity bigint, sampled bigint, sample_agreement double precision,
  sample_scored bigint, sample_difference double precision, sample_spend double precision)
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT c.policy_name, c.cluster, count(*), avg(c.agrees::integer),
         avg(c.agrees_greedy::integer), avg(c.shadow_score), avg(c.served_score),
         avg(c.shadow_cost), avg(c.served_cost),
         count(c.reward), avg(c.reward),
         avg(c.ips_term), stddev_samp(c.ips_term) / sqrt(count(c.ips_term)),
         avg(c.dr_term), stddev_samp(c.dr_term) / sqrt(count(c.dr_term)),
         count(*) FILTER (WHERE c.reward IS NOT NULL AND c.agrees AND NOT c.agrees_greedy),
         count(*) FILTER (WHERE c.reward IS NOT NULL AND NOT c.agrees_greedy),
         count(*) FILTER (WHERE c.reward IS NOT NULL AND c.served_propensity IS NULL),
         count(*) FILTER (WHERE c.sampled), avg(c.sample_agrees::integer),
         count(c.sample_score) FILTER (WHERE c.reward IS NOT NULL),
         avg(c.sample_score - c.reward), coalesce(sum(c.sample_cost), 0)
  FROM avengers.shadow_comparison c
  WHERE c.at >= since
  GROUP BY GROUPING SETS ((c.policy_name), (c.policy_name, c.cluster))
  ORDER BY 1, 2 NULLS FIRST;
END;
COMMENT ON FUNCTION avengers.shadow_summary(timestamptz) IS
  'The shadow comparison since a time, per shadow policy overall (cluster NULL) and per cluster: agreement, both policies'' expected quality and cost on the same requests, the inverse-propensity and doubly-robust estimates of (shadow - served) value with their standard errors, the support behind them (rewarded requests where exploration asked the shadow''s choice against the served greedy one), and the sampled answers'' agreement, observed difference and spend. SELECT * FROM avengers.shadow_summary(now() - interval ''7 days'').';

CREATE VIEW avengers.shadow_agreement AS
SELECT s.policy_name, s.cluster, s.requests, s.agreement
FROM avengers.shadow_summary() s;
COMMENT ON VIEW avengers.shadow_agreement IS
  'How often the shadow policy chose the model that was asked, per shadow policy overall (cluster NULL) and per cluster of its clustering, over every stored shadow decision.';
COMMENT ON COLUMN avengers.shadow_agreement.policy_name IS 'The shadow policy.';
COMMENT ON COLUMN avengers.shadow_agreement.cluster IS 'Cluster of the shadow''s clustering (NULL: all).';
COMMENT ON COLUMN avengers.shadow_agreement.requests IS 'Shadowed requests.';
COMMENT ON COLUMN avengers.shadow_agreement.agreement IS 'Share of them where the shadow chose the model asked.';
