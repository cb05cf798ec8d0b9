-- Production outcomes: feedback on routed requests (avengers.feedback), counted per clustering
-- version, cluster and model beside the calibration profiles, never mixed into them.
--
-- Decay: a feedback row observed at time t weighs 0.5 ^ ((T - t) / half_life) at time T
-- (half_life per clustering). avengers.production_stats keeps, per cell, the raw count and sum
-- and the decayed sums as of the cell's latest row (as_of); adding rows rescales the cell's sums
-- to the new as_of and adds theirs, removing rows subtracts theirs, so each feedback row costs
-- O(1) cell updates and calibration outcomes are never re-read. What routing serves
-- (production_profiles) decays every cell of the active clustering to one time: the later of
-- now() and its newest feedback (so rows stamped ahead of the clock, as a replay's are, never
-- weigh more than 1).
--
-- Where a feedback row counts (production_cells): in the clustering and cluster that routed the
-- request, and, when the query's vector was logged (route_vectors), in the nearest cluster of
-- the active clustering if that is another version of the same embedding space. Triggers keep
-- those cells current; any other version is rebuilt from the feedback table when it is
-- activated (avengers.rebuild_production), or when its half_life changes.

CREATE FUNCTION avengers.decay(since timestamptz, until timestamptz, half_life interval)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN exp(least(700.0, greatest(-700.0,
         -ln(2.0) * extract(epoch FROM (until - since))::double precision
         / extract(epoch FROM half_life)::double precision)));
COMMENT ON FUNCTION avengers.decay(timestamptz, timestamptz, interval) IS
  'Weight at `until` of an outcome observed at `since`: 0.5 ^ ((until - since) / half_life).';

CREATE FUNCTION avengers.production_cells(routes uuid[], target integer DEFAULT NULL)
RETURNS TABLE (route_id uuid, clustering_id integer, cluster integer)
LANGUAGE sql STABLE
BEGIN ATOMIC
  WITH r AS (
    SELECT l.route_id, l.clustering_id, l.cluster
    FROM avengers.route_log l
    WHERE l.route_id = ANY (routes)
  ),
  other AS (
    SELECT k.id, k.space_id
    FROM avengers.clusterings k
    WHERE k.id = coalesce(target, (SELECT a.id FROM avengers.active_clustering a))
  )
  SELECT r.route_id, r.clustering_id, r.cluster
  FROM r
  WHERE r.cluster IS NOT NULL AND (target IS NULL OR r.clustering_id = target)
  UNION ALL
  SELECT r.route_id, o.id, n.cluster
  FROM r
  JOIN avengers.route_vectors v ON v.route_id = r.route_id
  JOIN other o ON o.space_id = v.space_id AND o.id IS DISTINCT FROM r.clustering_id
  CROSS JOIN LATERAL (
    SELECT c.cluster FROM avengers.centroids c
    WHERE c.clustering_id = o.id
    ORDER BY c.centroid <-> l2_normalize(v.embedding), c.cluster
    LIMIT 1) AS n;
END;
COMMENT ON FUNCTION avengers.production_cells(uuid[], integer) IS
  'The (clustering, cluster) cells feedback on these routes counts in: the route''s own, and the nearest cluster of `target` (default: the active clustering) when the route''s vector was logged in its space. With `target`, only cells of that clustering.';

CREATE FUNCTION avengers.production_apply(
  sign integer, routes uuid[], models integer[], scores double precision[], ats timestamptz[],
  target integer DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
  IF routes IS NULL OR cardinality(routes) = 0 THEN
    RETURN;
  END IF;
  IF sign > 0 THEN
    -- Each cell's new rows, decayed to their latest time, merged into what the cell holds:
    -- both sides rescaled to the later of the two times, then added.
    INSERT INTO avengers.production_stats AS p
      (clustering_id, cluster, model_id, n, score_sum, decayed_n, decayed_sum, as_of)
    SELECT x.clustering_id, x.cluster, x.model_id, count(*), sum(x.score),
           sum(avengers.decay(x.at, x.as_of, k.half_life)),
           sum(x.score * avengers.decay(x.at, x.as_of, k.half_life)),
           max(x.as_of)
    FROM (
      SELECT c.clustering_id, c.cluster, f.model_id, f.score, f.at,
             max(f.at) OVER (PARTITION BY c.clustering_id, c.cluster, f.model_id) AS as_of
      FROM unnest(routes, models, scores, ats) AS f(route_id, model_id, score, at)
      JOIN avengers.production_cells(routes, target) AS c ON c.route_id = f.route_id
    ) AS x
    JOIN avengers.clusterings k ON k.id = x.clustering_id
    GROUP BY x.clustering_id, x.cluster, x.model_id
    ON CONFLICT (clustering_id, cluster, model_id) DO UPDATE SET
      n = p.n + excluded.n,
      score_sum = p.score_sum + excluded.score_sum,
      decayed_n = p.decayed_n * avengers.production_rescale(p.clustering_id, p.as_of, excluded.as_of)
                  + excluded.decayed_n
                    * avengers.production_rescale(p.clustering_id, excluded.as_of, p.as_of),
      decayed_sum = p.decayed_sum
                      * avengers.production_rescale(p.clustering_id, p.as_of, excluded.as_of)
                    + excluded.decayed_sum
                      * avengers.production_rescale(p.clustering_id, excluded.as_of, p.as_of),
      as_of = greatest(p.as_of, excluded.as_of);
  ELSE
    -- Removed rows, each decayed to its cell's as_of, subtracted; an emptied cell goes.
    WITH gone AS (
      SELECT c.clustering_id, c.cluster, f.model_id, count(*) AS n, sum(f.score) AS score_sum,
             sum(avengers.decay(f.at, p.as_of, k.half_life)) AS decayed_n,
             sum(f.score * avengers.decay(f.at, p.as_of, k.half_life)) AS decayed_sum
      FROM unnest(routes, models, scores, ats) AS f(route_id, model_id, score, at)
      JOIN avengers.production_cells(routes, target) AS c ON c.route_id = f.route_id
      JOIN avengers.production_stats p
        ON p.clustering_id = c.clustering_id AND p.cluster = c.cluster AND p.model_id = f.model_id
      JOIN avengers.clusterings k ON k.id = c.clustering_id
      GROUP BY c.clustering_id, c.cluster, f.model_id
    )
    UPDATE avengers.production_stats p SET
      n = greatest(0, p.n - g.n),
      score_sum = CASE WHEN p.n > g.n THEN p.score_sum - g.score_sum ELSE 0 END,
      -- Rounding may leave a hair below zero: the sums are clamped.
      decayed_n = CASE WHEN p.n > g.n THEN greatest(0, p.decayed_n - g.decayed_n) ELSE 0 END,
      decayed_sum = CASE WHEN p.n > g.n THEN greatest(0, p.decayed_sum - g.decayed_sum) ELSE 0 END
    FROM gone g
    WHERE p.clustering_id = g.clustering_id AND p.cluster = g.cluster AND p.model_id = g.model_id;
    DELETE FROM avengers.production_stats p WHERE p.n = 0;
  END IF;
END
$$;
COMMENT ON FUNCTION avengers.production_apply(integer, uuid[], integer[], double precision[], timestamptz[], integer) IS
  'Add (sign > 0) or remove (sign < 0) feedback rows, given column by column, to or from avengers.production_stats: their cells (production_cells) rescaled and updated in place. Called by the triggers on avengers.feedback and by rebuild_production.';

CREATE FUNCTION avengers.production_rescale(
  clustering integer, as_of timestamptz, other timestamptz)
RETURNS double precision
LANGUAGE sql STABLE
BEGIN ATOMIC
  SELECT avengers.decay(as_of, greatest(as_of, other), k.half_life)
  FROM avengers.clusterings k WHERE k.id = clustering;
END;
COMMENT ON FUNCTION avengers.production_rescale(integer, timestamptz, timestamptz) IS
  'Factor that moves decayed sums of a clustering''s cell from as_of to the later of as_of and other (1 when as_of is the later).';

CREATE FUNCTION avengers.feedback_counted() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  IF TG_OP IN ('DELETE', 'UPDATE') THEN
    PERFORM avengers.production_apply(-1, array_agg(o.route_id), array_agg(o.model_id),
                                      array_agg(o.score), array_agg(o.at))
    FROM old_rows o;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    PERFORM avengers.production_apply(1, array_agg(n.route_id), array_agg(n.model_id),
                                      array_agg(n.score), array_agg(n.at))
    FROM new_rows n;
  END IF;
  RETURN NULL;
END
$$;
COMMENT ON FUNCTION avengers.feedback_counted() IS
  'Trigger function: count inserted feedback rows in avengers.production_stats, uncount deleted ones, and both for a replaced one (one call per statement).';

-- One trigger per event: a trigger with transition tables fires on one event only.
CREATE TRIGGER feedback_counted_insert
  AFTER INSERT ON avengers.feedback REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION avengers.feedback_counted();
COMMENT ON TRIGGER feedback_counted_insert ON avengers.feedback IS
  'Counts new feedback in avengers.production_stats.';
CREATE TRIGGER feedback_counted_update
  AFTER UPDATE ON avengers.feedback REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION avengers.feedback_counted();
COMMENT ON TRIGGER feedback_counted_update ON avengers.feedback IS
  'Replaces a replaced feedback row''s count in avengers.production_stats.';
CREATE TRIGGER feedback_counted_delete
  AFTER DELETE ON avengers.feedback REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION avengers.feedback_counted();
COMMENT ON TRIGGER feedback_counted_delete ON avengers.feedback IS
  'Removes deleted feedback from avengers.production_stats.';

CREATE PROCEDURE avengers.rebuild_production(clustering integer)
LANGUAGE plpgsql
AS $$
DECLARE
  routes uuid[];
  models integer[];
  scores double precision[];
  ats timestamptz[];
BEGIN
  DELETE FROM avengers.production_stats WHERE clustering_id = clustering;
  -- The history's sums were decayed the old way: its splits would compare unlike with like.
  DELETE FROM avengers.production_history WHERE clustering_id = clustering;
  -- Only feedback that can count here: routes of this version, and routes with a logged vector.
  SELECT array_agg(f.route_id), array_agg(f.model_id), array_agg(f.score), array_agg(f.at)
  INTO routes, models, scores, ats
  FROM avengers.feedback f
  WHERE EXISTS (SELECT 1 FROM avengers.route_log r
                WHERE r.route_id = f.route_id AND r.clustering_id = clustering)
     OR EXISTS (SELECT 1 FROM avengers.route_vectors v WHERE v.route_id = f.route_id);
  PERFORM avengers.production_apply(1, routes, models, scores, ats, clustering);
END
$$;
COMMENT ON PROCEDURE avengers.rebuild_production(integer) IS
  'Recount every feedback row that counts in a clustering version (its own routes, and routes whose vector was logged) into avengers.production_stats, and clear its production_history: run when the version is activated or its half_life changes.';

-- What routing and the profile views read: the active clustering's cells, decayed to one time.
CREATE MATERIALIZED VIEW avengers.production_profiles AS
WITH k AS (
  SELECT a.id, a.half_life FROM avengers.active_clustering a
),
ref AS (
  SELECT greatest(now(), max(p.as_of)) AS at
  FROM avengers.production_stats p JOIN k ON k.id = p.clustering_id
)
SELECT p.clustering_id,
       p.cluster,
       p.model_id,
       m.name                                                         AS model,
       p.n,
       p.score_sum / p.n                                              AS mean_score,
       p.decayed_n * avengers.decay(p.as_of, ref.at, k.half_life)     AS decayed_n,
       p.decayed_sum * avengers.decay(p.as_of, ref.at, k.half_life)   AS decayed_sum,
       p.decayed_sum / nullif(p.decayed_n, 0)                         AS decayed_mean,
       ref.at                                                         AS as_of
FROM avengers.production_stats p
JOIN k ON k.id = p.clustering_id
CROSS JOIN ref
JOIN avengers.models m ON m.id = p.model_id
WITH DATA;
CREATE UNIQUE INDEX production_profiles_key ON avengers.production_profiles (cluster, model_id);
COMMENT ON MATERIALIZED VIEW avengers.production_profiles IS
  'Production outcomes of the active clustering per cluster and model (avengers.production_stats decayed to as_of). Refreshed by CALL avengers.refresh_production() (cheap: clusters x models rows) and with the profiles.';
CALL avengers.comment_columns('avengers.production_profiles', $$
clustering_id: The active clustering version.
cluster: Cluster index.
model_id: Model.
model: Model name.
n: Feedback rows counted in the cell.
mean_score: Their mean score (undecayed).
decayed_n: Effective count at as_of: each row weighs 0.5 ^ (age / half_life).
decayed_sum: Decayed sum of the scores at as_of.
decayed_mean: decayed_sum / decayed_n: the mean that weighs recent feedback more.
as_of: The time everything is decayed to: the refresh time, or the newest feedback if later.
$$);

CREATE PROCEDURE avengers.record_production_history()
LANGUAGE plpgsql
AS $$
DECLARE
  active integer := (SELECT a.id FROM avengers.active_clustering a);
  oldest timestamptz;
BEGIN
  -- A refresh at the same time as the one before (no feedback newer than the clock) replaces it.
  INSERT INTO avengers.production_history AS h
    (clustering_id, at, cluster, model_id, n, decayed_n, decayed_sum)
  SELECT p.clustering_id, p.as_of, p.cluster, p.model_id, p.n, p.decayed_n, p.decayed_sum
  FROM avengers.production_profiles p
  ON CONFLICT (clustering_id, model_id, at, cluster) DO UPDATE SET
    n = excluded.n, decayed_n = excluded.decayed_n, decayed_sum = excluded.decayed_sum;
  -- The update rule scans every kept refresh for a model routed nearly alone: the 256 latest
  -- bound its cost (a replay's longest stream has about 50). The cut is found once, not per row.
  SELECT x.at INTO oldest
  FROM (SELECT DISTINCT h.at FROM avengers.production_history h
        WHERE h.clustering_id = active) AS x
  ORDER BY x.at DESC OFFSET 255 LIMIT 1;
  IF oldest IS NOT NULL THEN
    DELETE FROM avengers.production_history h WHERE h.clustering_id = active AND h.at < oldest;
  END IF;
END
$$;
COMMENT ON PROCEDURE avengers.record_production_history() IS
  'Keep production_profiles as of this refresh in avengers.production_history (the 256 latest refreshes of the active clustering): the points where the update rule splits a model''s production into before and after. Called by refresh_production.';

-- The production update rule: what production outcomes add to the calibration evidence routing
-- pools, per cell (cluster, model) of the active clustering, as an outcome sum and a count that
-- routing adds at the production weight lambda:
--   score = (sum_j w_j (S[c_j,m] + lambda * delta_sum[c_j,m]) + s * prior[m])
--         / (sum_j w_j (n[c_j,m] + lambda * delta_n[c_j,m]) + s)
-- so lambda = 0 is the static router exactly. Feedback arrives only for the model that
-- answered, chosen partly for the luck of its calibration sample: adding its feedback alone to
-- its sums pulls it toward its true mean while the unrouted models keep their lucky ones, and
-- the router swaps to models that only looked better (the winner's curse). Feedback alone also
-- cannot tell a changed model from changed traffic (harder questions lower every model of a
-- cluster). So the rule moves calibration means and never adds a calibrated model's feedback
-- to its counts. With y = decayed production mean - calibration mean per cell and
-- v = max(0.05, p(1-p)) x (1 / decayed production count + 1 / calibration count):
-- * relative residual: y minus the precision-weighted mean y of the other calibrated models
--   with feedback in the same cluster (variance v + 1 / their total precision);
-- * model change: the random-effects mean of the model's relative residuals over its clusters
--   (DerSimonian-Laird: residuals that differ from cluster to cluster count as heterogeneity),
--   applied in every cluster when |effect| > change_threshold x se and |effect| > 0.05, and the
--   random-effects mean of its own residuals passes the same test with the same sign; when the
--   comparison cannot decide (no relative residual, or |own effect| <= change_threshold x the
--   relative se: the model was routed nearly alone), the own test alone, applied when
--   |own effect| >= 0.15 and the own residuals changed in time (its own effect is then the
--   change): split at each refresh kept in production_history, the random-effects mean of the
--   residuals of what came after minus that of what came before, past change_threshold x its
--   standard error with the own effect's sign, at the refresh where it passes best;
-- * cell change: what is left of a relative residual, applied in that cell alone when it passes
--   the same test on its own;
-- * cluster change: the precision-weighted mean of what the models' changes leave of the
--   residuals, shrunk toward 0 by 100 units of precision, the same for every calibrated
--   candidate of the cluster, so it reorders none of them.
-- A cluster moved when a calibrated model's residual there passes the change test on its own
-- (|y| > change_threshold x sqrt(v) and |y| > 0.05): its feedback cannot say yet whether the
-- model or the traffic changed, so targeted exploration asks every candidate there.
-- A model with no calibration outcome in the clustering starts, in every cluster, at 2
-- pseudo-outcomes of the cluster's calibration mean (all models pooled) moved by the cluster's
-- change and by its own offset from the cluster means where it has feedback (random-effects,
-- no test), and its decayed feedback is added. The figures behind the rule and its constants
-- are in docs/evaluation.md ("The production loop"); avengers_store/production/update_rule.py
-- computes the same in Python, and a test pins the two together.
CREATE MATERIALIZED VIEW avengers.production_evidence AS
WITH k AS (
  SELECT a.id, a.change_threshold AS z, a.half_life FROM avengers.active_clustering a
),
cal AS (
  SELECT c.cluster, c.model_id, c.n::double precision AS n, c.score_sum::double precision AS s
  FROM avengers.cluster_profiles c
  WHERE c.clustering_id = (SELECT k.id FROM k)
),
prod AS (
  SELECT p.cluster, p.model_id, p.decayed_n AS a, p.decayed_sum AS b, p.n AS rows, p.as_of
  FROM avengers.production_profiles p
  WHERE p.decayed_n > 0
),
cluster_means AS (
  SELECT cal.cluster, sum(cal.s) / nullif(sum(cal.n), 0) AS mu FROM cal GROUP BY cal.cluster
),
uncalibrated AS (
  SELECT m.id AS model_id FROM avengers.models m
  WHERE NOT EXISTS (SELECT 1 FROM cal WHERE cal.model_id = m.id)
),
cells AS (
  SELECT coalesce(c.cluster, p.cluster) AS cluster, coalesce(c.model_id, p.model_id) AS model_id,
         coalesce(c.n, 0) AS n, coalesce(c.s, 0) AS s, coalesce(p.a, 0) AS a,
         coalesce(p.b, 0) AS b, coalesce(p.rows, 0) AS rows
  FROM cal c FULL JOIN prod p ON p.cluster = c.cluster AND p.model_id = c.model_id
  UNION ALL
  -- Every other cluster of a model without calibration outcomes: its starting evidence.
  SELECT ce.cluster, u.model_id, 0, 0, 0, 0, 0
  FROM uncalibrated u
  CROSS JOIN k
  JOIN avengers.centroids ce ON ce.clustering_id = k.id
  WHERE NOT EXISTS (SELECT 1 FROM prod p WHERE p.cluster = ce.cluster AND p.model_id = u.model_id)
),
residuals AS (
  SELECT x.*, coalesce(cm.mu, 0) AS mu, u.model_id IS NOT NULL AS uncalibrated,
         CASE WHEN x.n > 0 THEN x.s / x.n ELSE coalesce(cm.mu, 0) END AS expected,
         CASE WHEN x.a > 0 THEN
           x.b / x.a - CASE WHEN x.n > 0 THEN x.s / x.n ELSE coalesce(cm.mu, 0) END
         END AS y,
         CASE WHEN x.a > 0 THEN
           greatest(0.05, ((x.s + x.b + 1) / (x.n + x.a + 2))
                          * (1 - (x.s + x.b + 1) / (x.n + x.a + 2)))
           * (1 / x.a + CASE WHEN x.n > 0 THEN 1 / x.n ELSE 0 END)
         END AS v
  FROM cells x
  LEFT JOIN cluster_means cm ON cm.cluster = x.cluster
  LEFT JOIN uncalibrated u ON u.model_id = x.model_id
),
-- Per cell with feedback: the residual against the other calibrated models of its cluster.
compared AS (
  SELECT r.*, r.y - (t.swy - CASE WHEN r.uncalibrated THEN 0 ELSE r.y / r.v END)
                    / (t.sw - CASE WHEN r.uncalibrated THEN 0 ELSE 1 / r.v END) AS rel,
         r.v + 1 / (t.sw - CASE WHEN r.uncalibrated THEN 0 ELSE 1 / r.v END) AS rel_v
  FROM residuals r
  JOIN (SELECT x.cluster, sum(1 / x.v) AS sw, sum(x.y / x.v) AS swy
        FROM residuals x WHERE x.a > 0 AND NOT x.uncalibrated GROUP BY x.cluster) AS t
    ON t.cluster = r.cluster
  WHERE r.a > 0 AND NOT r.uncalibrated AND t.sw - 1 / r.v > 0
),
-- Random-effects means (DerSimonian-Laird) per model: of the relative residuals of calibrated
-- models, of the plain residuals of models without calibration outcomes ('relative'), and of
-- calibrated models' own residuals against their calibration ('own').
observed AS (
  SELECT c.model_id, 'relative' AS kind, c.rel AS y, c.rel_v AS v FROM compared c
  UNION ALL
  SELECT r.model_id, 'relative', r.y, r.v FROM residuals r WHERE r.a > 0 AND r.uncalibrated
  UNION ALL
  SELECT r.model_id, 'own', r.y, r.v FROM residuals r WHERE r.a > 0 AND NOT r.uncalibrated
),
fixed AS (
  SELECT o.model_id, o.kind, count(*) AS cells, sum(1 / o.v) AS sw, sum(1 / (o.v * o.v)) AS sw2,
         sum(o.y / o.v) / sum(1 / o.v) AS fe
  FROM observed o GROUP BY o.model_id, o.kind
),
spread AS (
  SELECT f.model_id, f.kind,
         CASE WHEN f.cells > 1 AND f.sw - f.sw2 / f.sw > 0 THEN
           greatest(0, (sum((o.y - f.fe) ^ 2 / o.v) - (f.cells - 1)) / (f.sw - f.sw2 / f.sw))
         ELSE 0 END AS tau2
  FROM fixed f JOIN observed o ON o.model_id = f.model_id AND o.kind = f.kind
  GROUP BY f.model_id, f.kind, f.cells, f.sw, f.sw2, f.fe
),
effects AS (
  SELECT s.model_id, s.kind, e.effect, e.se
  FROM spread s
  CROSS JOIN LATERAL (
    SELECT sum(o.y / (o.v + s.tau2)) / sum(1 / (o.v + s.tau2)) AS effect,
           1 / sqrt(sum(1 / (o.v + s.tau2))) AS se
    FROM observed o WHERE o.model_id = s.model_id AND o.kind = s.kind) AS e
),
-- A model changed when its relative effect passes the change test and its own residuals move
-- the same way, as significantly: the others' feedback comes from the queries routing gave
-- them, so the comparison alone can call a model changed that did not move. A model routed
-- (nearly) alone in its clusters leaves its rivals without feedback there, and the comparison
-- cannot decide (it could not pass on a change as large as its own residuals show): its own
-- test then decides alone, for a material change only (at least 0.15; the winner's curse moves
-- a routed model's own residuals by a few points) that also happened in time (below).
tests AS (
  SELECT coalesce(r.model_id, o.model_id) AS model_id, r.effect, o.effect AS own,
         u.model_id IS NOT NULL AS uncalibrated,
         coalesce(abs(r.effect) > k.z * r.se AND abs(r.effect) > 0.05
                  AND abs(o.effect) > k.z * o.se AND sign(o.effect) = sign(r.effect), false)
           AS compared_changed,
         u.model_id IS NULL
           AND coalesce(abs(o.effect) > k.z * o.se AND abs(o.effect) >= 0.15
                        AND NOT coalesce(abs(o.effect) > k.z * r.se, false), false)
           AS alone_candidate
  FROM (SELECT * FROM effects WHERE kind = 'relative') AS r
  FULL JOIN (SELECT * FROM effects WHERE kind = 'own') AS o ON o.model_id = r.model_id
  CROSS JOIN k
  LEFT JOIN uncalibrated u ON u.model_id = coalesce(r.model_id, o.model_id)
),
-- A model's own outcomes cannot tell its change from traffic it was never calibrated on, which
-- is there from the first refresh; a change of the model happens at a point of the stream. So
-- for the few models whose own test passes alone, their production is split at each refresh
-- kept in production_history: before = the sums then (decayed to now), after = the rest, the
-- rows counted deciding which cells have feedback on each side (a difference of decayed sums is
-- rarely exactly 0). Residuals and variances as above, on each side's sums.
split_cells AS (
  SELECT r.model_id, s.at, r.n, r.s, r.expected, s.direction,
         coalesce(h.n, 0) AS rows_before,
         coalesce(h.decayed_n, 0) * s.f AS a_before, coalesce(h.decayed_sum, 0) * s.f AS b_before,
         r.rows - coalesce(h.n, 0) AS rows_after,
         r.a - coalesce(h.decayed_n, 0) * s.f AS a_after,
         r.b - coalesce(h.decayed_sum, 0) * s.f AS b_after
  FROM (SELECT DISTINCT t.model_id, sign(t.own) AS direction, h.at,
               avengers.decay(h.at, (SELECT max(p.as_of) FROM prod p), k.half_life) AS f
        FROM tests t
        CROSS JOIN k
        JOIN avengers.production_history h ON h.clustering_id = k.id AND h.model_id = t.model_id
        WHERE t.alone_candidate) AS s
  JOIN residuals r ON r.model_id = s.model_id AND r.a > 0
  CROSS JOIN k
  LEFT JOIN avengers.production_history h
    ON h.clustering_id = k.id AND h.model_id = s.model_id AND h.at = s.at AND h.cluster = r.cluster
),
split_observed AS (
  SELECT x.model_id, x.at, x.direction, x.side,
         x.b / x.a - x.expected AS y,
         greatest(0.05, ((x.s + x.b + 1) / (x.n + x.a + 2)) * (1 - (x.s + x.b + 1) / (x.n + x.a + 2)))
         * (1 / x.a + CASE WHEN x.n > 0 THEN 1 / x.n ELSE 0 END) AS v
  FROM (SELECT c.model_id, c.at, c.direction, c.n, c.s, c.expected, 'before' AS side,
               c.rows_before AS rows, c.a_before AS a, c.b_before AS b
        FROM split_cells c
        UNION ALL
        SELECT c.model_id, c.at, c.direction, c.n, c.s, c.expected, 'after',
               c.rows_after, c.a_after, c.b_after
        FROM split_cells c) AS x
  WHERE x.rows > 0 AND x.a > 0
),
split_fixed AS (
  SELECT o.model_id, o.at, o.side, count(*) AS cells, sum(1 / o.v) AS sw,
         sum(1 / (o.v * o.v)) AS sw2, sum(o.y / o.v) / sum(1 / o.v) AS fe
  FROM split_observed o GROUP BY o.model_id, o.at, o.side
),
split_spread AS (
  SELECT f.model_id, f.at, f.side,
         CASE WHEN f.cells > 1 AND f.sw - f.sw2 / f.sw > 0 THEN
           greatest(0, (sum((o.y - f.fe) ^ 2 / o.v) - (f.cells - 1)) / (f.sw - f.sw2 / f.sw))
         ELSE 0 END AS tau2
  FROM split_fixed f
  JOIN split_observed o ON o.model_id = f.model_id AND o.at = f.at AND o.side = f.side
  GROUP BY f.model_id, f.at, f.side, f.cells, f.sw, f.sw2, f.fe
),
split_effects AS (
  SELECT o.model_id, o.at, o.side, min(o.direction) AS direction,
         sum(o.y / (o.v + s.tau2)) / sum(1 / (o.v + s.tau2)) AS effect,
         1 / sqrt(sum(1 / (o.v + s.tau2))) AS se
  FROM split_observed o
  JOIN split_spread s ON s.model_id = o.model_id AND s.at = o.at AND s.side = o.side
  GROUP BY o.model_id, o.at, o.side
),
-- The largest z over the splits, in the own effect's direction.
in_time AS (
  SELECT a.model_id,
         max(a.direction * (a.effect - b.effect) / sqrt(a.se ^ 2 + b.se ^ 2)) AS z
  FROM split_effects a
  JOIN split_effects b ON b.model_id = a.model_id AND b.at = a.at AND b.side = 'before'
  WHERE a.side = 'after'
  GROUP BY a.model_id
),
model_effects AS (
  SELECT t.model_id, t.effect, t.uncalibrated, t.compared_changed,
         t.alone_candidate AND coalesce(it.z > k.z, false) AS alone_changed
  FROM tests t
  CROSS JOIN k
  LEFT JOIN in_time it ON it.model_id = t.model_id
),
model_shifts AS (
  SELECT me.model_id, me.effect,
         NOT me.uncalibrated AND (me.compared_changed OR me.alone_changed) AS changed,
         CASE WHEN me.uncalibrated THEN 0
              WHEN me.compared_changed THEN me.effect
              WHEN me.alone_changed THEN t.own
              ELSE 0 END AS shift
  FROM model_effects me JOIN tests t ON t.model_id = me.model_id
),
cell_effects AS (
  SELECT c.cluster, c.model_id, c.rel - coalesce(me.shift, 0) AS left_over, c.rel_v
  FROM compared c LEFT JOIN model_shifts me ON me.model_id = c.model_id
),
shifts AS (
  SELECT r.*,
         coalesce(me.shift, 0) AS model_shift,
         coalesce(me.changed, false) AS changed,
         CASE WHEN r.uncalibrated THEN coalesce(me.effect, 0) ELSE 0 END AS offset,
         CASE WHEN abs(ce.left_over) > k.z * sqrt(ce.rel_v) AND abs(ce.left_over) > 0.05
              THEN ce.left_over ELSE 0 END AS cell_shift
  FROM residuals r
  CROSS JOIN k
  LEFT JOIN model_shifts me ON me.model_id = r.model_id
  LEFT JOIN cell_effects ce ON ce.cluster = r.cluster AND ce.model_id = r.model_id
),
-- The cluster's change: what the models' changes leave of its calibrated models' residuals;
-- and whether one of them left its calibration mean on its own.
cluster_effects AS (
  SELECT x.cluster,
         sum((x.y - x.model_shift - x.cell_shift) / x.v) / (sum(1 / x.v) + 100) AS effect,
         bool_or(abs(x.y) > k.z * sqrt(x.v) AND abs(x.y) > 0.05) AS moved
  FROM shifts x
  CROSS JOIN k
  WHERE x.a > 0 AND NOT x.uncalibrated
  GROUP BY x.cluster
)
SELECT k.id AS clustering_id, x.cluster, x.model_id, x.n AS calibration_n,
       x.s AS calibration_sum, x.a AS production_n, x.b AS production_sum,
       CASE WHEN x.uncalibrated THEN x.offset ELSE x.model_shift END AS model_effect,
       x.changed AS model_changed, x.cell_shift AS cell_effect,
       coalesce(ce.effect, 0) AS cluster_effect,
       CASE WHEN x.uncalibrated
            THEN 2 * least(1, greatest(0, x.mu + coalesce(ce.effect, 0) + x.offset)) + x.b
            ELSE least(x.n, greatest(0, x.s + x.n * (x.model_shift + x.cell_shift
                                                     + coalesce(ce.effect, 0)))) - x.s
       END AS delta_sum,
       CASE WHEN x.uncalibrated THEN 2 + x.a ELSE 0 END AS delta_n,
       coalesce(ce.moved, false) AS cluster_moved
FROM shifts x
CROSS JOIN k
LEFT JOIN cluster_effects ce ON ce.cluster = x.cluster
WITH DATA;
CREATE UNIQUE INDEX production_evidence_key ON avengers.production_evidence (cluster, model_id);
COMMENT ON MATERIALIZED VIEW avengers.production_evidence IS
  'The production update rule per cluster and model of the active clustering: what production outcomes add to the calibration outcome sum (delta_sum) and count (delta_n) that routing pools at the production weight, and why (the model''s, the cell''s and the cluster''s measured change). Refreshed by CALL avengers.refresh_production() and with the profiles.';
CALL avengers.comment_columns('avengers.production_evidence', $$
clustering_id: The active clustering version.
cluster: Cluster index.
model_id: Model.
calibration_n: Calibration outcomes of the model in the cluster (cluster_profiles.n; 0: none).
calibration_sum: Their sum (cluster_profiles.score_sum).
production_n: Decayed count of the feedback counted here (production_profiles.decayed_n; 0: none).
production_sum: Decayed sum of those feedback scores.
model_effect: The model's change against the other models of its clusters (against its own calibration when the comparison could not decide), applied in every cluster (0 unless its change test passed); for a model without calibration outcomes, its offset from the cluster means.
model_changed: The model's change test passed: |effect| > change_threshold x standard error and > 0.05, and its own residuals against its calibration moved the same way past the same threshold; or, where the comparison could not decide (the model routed nearly alone), its own residuals alone past the threshold and at least 0.15, and what came after one of the refreshes in production_history past the threshold against what came before, the same way.
cell_effect: The model's change in this cluster beyond model_effect (0 unless that cell's own test passed).
cluster_effect: Change of the cluster shared by all its candidates: what the models' changes leave of the residuals of the models with feedback here, shrunk toward 0.
delta_sum: What the cell's outcome sum gains at production weight 1 (may be negative): the calibration mean moved by the model's, the cell's and the cluster's change (clamped to [0, 1]) times the calibration count, minus the calibration sum. For a model without calibration outcomes: 2 pseudo-outcomes of the moved cluster mean plus its decayed feedback sum.
cluster_moved: A calibrated model's feedback in the cluster left its calibration mean (its own change test passed): targeted exploration compares every candidate there.
delta_n: What the cell's outcome count gains at production weight 1: 0 for a calibrated model (feedback moves its mean, not its confidence), 2 pseudo-outcomes plus the decayed feedback count for a model without calibration outcomes.
$$);
