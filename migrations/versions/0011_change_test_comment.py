"""The change threshold's column comment says what the update rule's change test asks now: the
model's production outcomes against the other models of its clusters and against its own
calibration, both past the threshold with the same sign.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = r"""
COMMENT ON COLUMN avengers.clusterings.change_threshold IS 'z-score a model''s production outcomes must pass, with the same sign, both against the other models of its clusters and against its own calibration, over all its clusters or in one, for the model to count as changed: its calibration mean then moves by the measured change (avengers.production_evidence).';
"""

DOWNGRADE = r"""
COMMENT ON COLUMN avengers.clusterings.change_threshold IS 'z-score above which a model''s production outcomes, compared with those of the other models of its clusters, say the model changed, over all its clusters or in one: its calibration mean then moves by the measured change (avengers.production_evidence).';
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
