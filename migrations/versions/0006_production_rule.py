"""The production update rule's change threshold per clustering version, and the propensity of
each routed request in the route log (the probability its model had of being chosen, for
off-policy estimates of other routing policies from the same log).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE avengers.clusterings
  ADD COLUMN change_threshold double precision NOT NULL DEFAULT 3
    CHECK (change_threshold > 0 AND change_threshold <> 'Infinity');
COMMENT ON COLUMN avengers.clusterings.change_threshold IS 'z-score above which a model''s production outcomes, compared with those of the other models of its clusters, say the model changed, over all its clusters or in one: its calibration mean then moves by the measured change (avengers.production_evidence).';

ALTER TABLE avengers.route_log
  ADD COLUMN propensity double precision CHECK (propensity > 0 AND propensity <= 1);
COMMENT ON COLUMN avengers.route_log.propensity IS 'The probability the answering model had of being chosen for this request under the routing policy that chose it (1: no exploration could have chosen another); NULL: not recorded.';
"""

DOWNGRADE = r"""
ALTER TABLE avengers.route_log DROP COLUMN propensity;
ALTER TABLE avengers.clusterings DROP COLUMN change_threshold;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
