"""The production counted at each refresh (avengers.production_history): a model routed nearly
alone is called changed only when its own outcomes after some past refresh differ from those
before it, and the update rule reads that split from here. The change threshold's comment says
so.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE avengers.production_history (
  clustering_id integer NOT NULL,
  at            timestamptz NOT NULL,
  cluster       integer NOT NULL,
  model_id      integer NOT NULL REFERENCES avengers.models (id) ON DELETE CASCADE,
  n             integer NOT NULL CHECK (n >= 0),
  decayed_n     double precision NOT NULL CHECK (decayed_n >= 0),
  decayed_sum   double precision NOT NULL CHECK (decayed_sum >= 0),
  PRIMARY KEY (clustering_id, model_id, at, cluster),
  FOREIGN KEY (clustering_id, cluster) REFERENCES avengers.centroids (clustering_id, cluster) ON DELETE CASCADE
);
CREATE INDEX production_history_at_idx ON avengers.production_history (clustering_id, at);
COMMENT ON TABLE avengers.production_history IS 'The served production outcomes (production_profiles) as of each of the latest refreshes of a clustering version, kept by avengers.refresh_production: the points where the update rule splits a model''s production into before and after, to tell a model that changed from traffic it was never calibrated on. Cleared when the version''s production is recounted.';
COMMENT ON COLUMN avengers.production_history.clustering_id IS 'Clustering version.';
COMMENT ON COLUMN avengers.production_history.at IS 'The refresh: the time its decayed sums refer to (production_profiles.as_of then).';
COMMENT ON COLUMN avengers.production_history.cluster IS 'Cluster index.';
COMMENT ON COLUMN avengers.production_history.model_id IS 'Model.';
COMMENT ON COLUMN avengers.production_history.n IS 'Feedback rows counted in the cell by then.';
COMMENT ON COLUMN avengers.production_history.decayed_n IS 'Their decayed count at `at`.';
COMMENT ON COLUMN avengers.production_history.decayed_sum IS 'Their decayed score sum at `at`.';
COMMENT ON COLUMN avengers.clusterings.change_threshold IS 'z-score a model''s production outcomes must pass, with the same sign, both against the other models of its clusters and against its own calibration, over all its clusters or in one, for the model to count as changed; a model routed nearly alone (too little feedback on the others to compare with): against its own calibration and, after one of the past refreshes, against its own outcomes before it. Its calibration mean then moves by the measured change (avengers.production_evidence).';
"""

DOWNGRADE = r"""
DROP TABLE avengers.production_history;
COMMENT ON COLUMN avengers.clusterings.change_threshold IS 'z-score a model''s production outcomes must pass, with the same sign, both against the other models of its clusters and against its own calibration, over all its clusters or in one, for the model to count as changed: its calibration mean then moves by the measured change (avengers.production_evidence).';
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
