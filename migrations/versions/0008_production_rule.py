"""The production update rule's change threshold per clustering version
(avengers.production_evidence).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE avengers.clusterings
  ADD COLUMN change_threshold double precision NOT NULL DEFAULT 3
    CHECK (change_threshold > 0 AND change_threshold <> 'Infinity');
COMMENT ON COLUMN avengers.clusterings.change_threshold IS 'z-score above which a model''s production outcomes, compared with those of the other models of its clusters, say the model changed, over all its clusters or in one: its calibration mean then moves by the measured change (avengers.production_evidence).';
"""

DOWNGRADE = r"""
ALTER TABLE avengers.clusterings DROP COLUMN change_threshold;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
