"""Decisions record how likely their first model was: route_log.propensity, the probability the
answering model had of being asked first under the request's routing policy (what off-policy
estimates weigh feedback by).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE avengers.route_log
  ADD COLUMN propensity double precision CHECK (propensity >= 0 AND propensity <= 1);
COMMENT ON COLUMN avengers.route_log.propensity IS 'Probability the first routed model had of being asked first under the routing policy (avengers.decide): 1 without exploration, below 1 when exploration could have put another first; NULL when unknown (thompson exploration, or a request that failed before routing).';
"""

DOWNGRADE = r"""
ALTER TABLE avengers.route_log DROP COLUMN propensity;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
