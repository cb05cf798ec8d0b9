"""Closing the loop: feedback per route id, production outcomes per cluster and model (decayed),
logged query vectors, calibration distance statistics for OOD detection, and the per-clustering
settings of all three.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-20
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE avengers.clusterings
  ADD COLUMN production_weight double precision NOT NULL DEFAULT 1
    CHECK (production_weight >= 0 AND production_weight <> 'Infinity'),
  ADD COLUMN half_life interval NOT NULL DEFAULT '14 days' CHECK (half_life > interval '0'),
  ADD COLUMN exploration text NOT NULL DEFAULT 'off'
    CHECK (exploration IN ('off', 'thompson', 'epsilon')),
  ADD COLUMN exploration_share double precision NOT NULL DEFAULT 0.05
    CHECK (exploration_share >= 0 AND exploration_share <= 1),
  ADD COLUMN ood_quantile double precision NOT NULL DEFAULT 0.99
    CHECK (ood_quantile > 0 AND ood_quantile < 1);
COMMENT ON COLUMN avengers.clusterings.production_weight IS 'How much one production outcome (feedback) counts in the served score against one calibration outcome, before decay. 0: the static router, calibration only.';
COMMENT ON COLUMN avengers.clusterings.half_life IS 'Half-life of production outcomes: a feedback row counts half as much after this long. Changing it rebuilds avengers.production_stats of the clustering.';
COMMENT ON COLUMN avengers.clusterings.exploration IS 'Exploration policy of the router: off (always the best-scored model), thompson (rank candidates by a draw from each one''s Beta posterior) or epsilon (a random candidate first for a share of requests).';
COMMENT ON COLUMN avengers.clusterings.exploration_share IS 'epsilon: the share of requests that go to a random candidate.';
COMMENT ON COLUMN avengers.clusterings.ood_quantile IS 'A query is out of distribution when its distance to the nearest centroid, in units of that cluster''s median calibration distance, exceeds this quantile of the calibration queries'' own (see avengers.cluster_distances).';

CREATE TABLE avengers.cluster_distances (
  clustering_id integer NOT NULL,
  cluster       integer NOT NULL,
  n             integer NOT NULL CHECK (n >= 0),
  mean          double precision,
  median        double precision,
  p95           double precision,
  max           double precision,
  scale         double precision CHECK (scale >= 0),
  ood_distance  double precision CHECK (ood_distance >= 0),
  PRIMARY KEY (clustering_id, cluster),
  FOREIGN KEY (clustering_id, cluster) REFERENCES avengers.centroids (clustering_id, cluster) ON DELETE CASCADE
);
COMMENT ON TABLE avengers.cluster_distances IS 'Distances of each cluster''s calibration queries to its centroid, written when a clustering is stored (and when first activated, or its ood_quantile changes): what routing compares a query''s distance with to call it out of distribution.';
COMMENT ON COLUMN avengers.cluster_distances.clustering_id IS 'Clustering version.';
COMMENT ON COLUMN avengers.cluster_distances.cluster IS 'Cluster index.';
COMMENT ON COLUMN avengers.cluster_distances.n IS 'Calibration queries assigned to the cluster.';
COMMENT ON COLUMN avengers.cluster_distances.mean IS 'Mean Euclidean distance of those queries to the centroid.';
COMMENT ON COLUMN avengers.cluster_distances.median IS 'Median distance.';
COMMENT ON COLUMN avengers.cluster_distances.p95 IS '95th percentile of the distances.';
COMMENT ON COLUMN avengers.cluster_distances.max IS 'Largest distance.';
COMMENT ON COLUMN avengers.cluster_distances.scale IS 'The unit novelty is measured in: the median distance, or the clustering''s median distance when the cluster has fewer than 5 queries or a median of 0.';
COMMENT ON COLUMN avengers.cluster_distances.ood_distance IS 'scale times the clustering''s ood_quantile of every calibration query''s distance / scale: a query farther than this from the centroid is out of distribution (novelty = distance / ood_distance > 1).';

CREATE TABLE avengers.feedback (
  id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  route_id uuid NOT NULL REFERENCES avengers.route_log (route_id) ON DELETE CASCADE,
  source   text NOT NULL DEFAULT 'user' CHECK (length(btrim(source)) > 0),
  model_id integer NOT NULL REFERENCES avengers.models (id) ON DELETE CASCADE,
  score    double precision NOT NULL CHECK (score >= 0 AND score <= 1),
  at       timestamptz NOT NULL DEFAULT now(),
  UNIQUE (route_id, source)
);
CREATE INDEX feedback_at_idx ON avengers.feedback (at);
CREATE INDEX feedback_model_idx ON avengers.feedback (model_id);
COMMENT ON TABLE avengers.feedback IS 'Production outcomes: a score for the answer of one routed request (route_log.route_id), by source. A second row from the same source replaces the first. Record with avengers.record_feedback(...) or `avengers feedback import`.';
COMMENT ON COLUMN avengers.feedback.id IS 'Surrogate key.';
COMMENT ON COLUMN avengers.feedback.route_id IS 'The request (route_log.route_id; x-avengers-route-id, Answer.route_id).';
COMMENT ON COLUMN avengers.feedback.source IS 'Who scored it (user, a grader, an import); one row per route and source.';
COMMENT ON COLUMN avengers.feedback.model_id IS 'The model scored: one the request sampled (by default the one whose answer was returned).';
COMMENT ON COLUMN avengers.feedback.score IS 'Outcome in [0,1], as calibration outcomes.';
COMMENT ON COLUMN avengers.feedback.at IS 'When the outcome was observed: what its decay counts from.';

CREATE TABLE avengers.production_stats (
  clustering_id integer NOT NULL,
  cluster       integer NOT NULL,
  model_id      integer NOT NULL REFERENCES avengers.models (id) ON DELETE CASCADE,
  n             integer NOT NULL CHECK (n >= 0),
  score_sum     double precision NOT NULL,
  decayed_n     double precision NOT NULL CHECK (decayed_n >= 0),
  decayed_sum   double precision NOT NULL CHECK (decayed_sum >= 0),
  as_of         timestamptz NOT NULL,
  PRIMARY KEY (clustering_id, cluster, model_id),
  FOREIGN KEY (clustering_id, cluster) REFERENCES avengers.centroids (clustering_id, cluster) ON DELETE CASCADE
);
COMMENT ON TABLE avengers.production_stats IS 'Feedback aggregated per clustering version, cluster and model, kept current row by row by triggers on avengers.feedback (each feedback row updates its cells in O(1); calibration outcomes are never re-read). A route counts in its own clustering and, when its vector was logged, in the active one.';
COMMENT ON COLUMN avengers.production_stats.clustering_id IS 'Clustering version.';
COMMENT ON COLUMN avengers.production_stats.cluster IS 'Cluster index.';
COMMENT ON COLUMN avengers.production_stats.model_id IS 'Model.';
COMMENT ON COLUMN avengers.production_stats.n IS 'Feedback rows counted.';
COMMENT ON COLUMN avengers.production_stats.score_sum IS 'Sum of their scores (undecayed).';
COMMENT ON COLUMN avengers.production_stats.decayed_n IS 'Sum over the rows of 0.5 ^ ((as_of - at) / half_life): the effective count at as_of.';
COMMENT ON COLUMN avengers.production_stats.decayed_sum IS 'The same sum of score * 0.5 ^ ((as_of - at) / half_life).';
COMMENT ON COLUMN avengers.production_stats.as_of IS 'The time the decayed sums refer to (the latest feedback counted).';

CREATE TABLE avengers.route_vectors (
  route_id   uuid PRIMARY KEY REFERENCES avengers.route_log (route_id) ON DELETE CASCADE,
  space_id   integer NOT NULL REFERENCES avengers.embedding_spaces (id) ON DELETE CASCADE,
  embedding  vector NOT NULL,
  query_text text
);
CREATE INDEX route_vectors_space_idx ON avengers.route_vectors (space_id);
COMMENT ON TABLE avengers.route_vectors IS 'Embeddings of routed queries, kept only when the client asks (log_vectors): feedback on them then counts in later clustering versions, and `avengers recluster --with-production` fits on them too.';
COMMENT ON COLUMN avengers.route_vectors.route_id IS 'The request (route_log.route_id).';
COMMENT ON COLUMN avengers.route_vectors.space_id IS 'Embedding space of the vector.';
COMMENT ON COLUMN avengers.route_vectors.embedding IS 'The query''s embedding as routed.';
COMMENT ON COLUMN avengers.route_vectors.query_text IS 'The query text, only when the client was asked to keep it too (log_texts); NULL otherwise.';

ALTER TABLE avengers.route_log
  ADD COLUMN answer_model text,
  ADD COLUMN novelty double precision CHECK (novelty >= 0),
  ADD COLUMN ood boolean,
  ADD COLUMN ood_policy text,
  ADD COLUMN exploration text,
  ADD COLUMN explored boolean;
COMMENT ON COLUMN avengers.route_log.answer_model IS 'The model whose sample gave the returned answer (feedback without a model scores it).';
COMMENT ON COLUMN avengers.route_log.novelty IS 'Distance to the nearest centroid / that cluster''s ood_distance (avengers.cluster_distances); above 1: out of distribution.';
COMMENT ON COLUMN avengers.route_log.ood IS 'Whether the query was out of distribution (novelty > 1); NULL when the clustering has no distance statistics.';
COMMENT ON COLUMN avengers.route_log.ood_policy IS 'What an out-of-distribution query got: flag (routed as usual), best-overall (the best calibration model) or widen (Model-Switch over the top models).';
COMMENT ON COLUMN avengers.route_log.exploration IS 'The clustering''s exploration policy when the request was routed (thompson or epsilon); NULL: off.';
COMMENT ON COLUMN avengers.route_log.explored IS 'True when exploration put another model first than the best-scored one (exploration, not exploitation).';

-- Distance statistics of the clusterings stored before this revision, by the rule of
-- avengers.store_distance_profile (sql/) as of this revision, at the default ood_quantile.
WITH d AS (
  SELECT a.clustering_id, a.cluster, a.distance::double precision AS d
  FROM avengers.assignments a
  WHERE a.distance IS NOT NULL
),
per AS (
  SELECT d.clustering_id, d.cluster, count(*)::integer AS n, avg(d.d) AS mean,
         percentile_cont(0.5) WITHIN GROUP (ORDER BY d.d) AS median,
         percentile_cont(0.95) WITHIN GROUP (ORDER BY d.d) AS p95, max(d.d) AS max
  FROM d GROUP BY d.clustering_id, d.cluster
),
overall AS (
  SELECT d.clustering_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY d.d) AS median
  FROM d GROUP BY d.clustering_id
),
scaled AS (
  SELECT c.clustering_id, c.cluster, coalesce(p.n, 0) AS n, p.mean, p.median, p.p95, p.max,
         CASE WHEN p.n >= 5 AND p.median > 0 THEN p.median ELSE o.median END AS scale
  FROM avengers.centroids c
  JOIN overall o ON o.clustering_id = c.clustering_id
  LEFT JOIN per p ON p.clustering_id = c.clustering_id AND p.cluster = c.cluster
),
threshold AS (
  SELECT d.clustering_id, percentile_cont(0.99) WITHIN GROUP (ORDER BY d.d / s.scale) AS ratio
  FROM d JOIN scaled s ON s.clustering_id = d.clustering_id AND s.cluster = d.cluster
  WHERE s.scale > 0
  GROUP BY d.clustering_id
)
INSERT INTO avengers.cluster_distances
  (clustering_id, cluster, n, mean, median, p95, max, scale, ood_distance)
SELECT s.clustering_id, s.cluster, s.n, s.mean, s.median, s.p95, s.max, s.scale,
       s.scale * t.ratio
FROM scaled s LEFT JOIN threshold t ON t.clustering_id = s.clustering_id;
"""

DOWNGRADE = r"""
ALTER TABLE avengers.route_log
  DROP COLUMN explored, DROP COLUMN exploration, DROP COLUMN ood_policy, DROP COLUMN ood,
  DROP COLUMN novelty, DROP COLUMN answer_model;
DROP TABLE avengers.route_vectors;
DROP TABLE avengers.production_stats;
DROP TABLE avengers.feedback;
DROP TABLE avengers.cluster_distances;
ALTER TABLE avengers.clusterings
  DROP COLUMN ood_quantile, DROP COLUMN exploration_share, DROP COLUMN exploration,
  DROP COLUMN half_life, DROP COLUMN production_weight;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
