"""The production loop's settings per clustering version: the update rule's change threshold
(avengers.production_evidence) and targeted exploration (its overlap; the policy allowed).

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
    CHECK (change_threshold > 0 AND change_threshold <> 'Infinity'),
  ADD COLUMN exploration_overlap double precision NOT NULL DEFAULT 0.2
    CHECK (exploration_overlap >= 0 AND exploration_overlap < 1),
  ALTER COLUMN exploration_share SET DEFAULT 0.02,
  DROP CONSTRAINT clusterings_exploration_check,
  ADD CONSTRAINT clusterings_exploration_check
    CHECK (exploration IN ('off', 'thompson', 'epsilon', 'targeted'));
COMMENT ON COLUMN avengers.clusterings.change_threshold IS 'z-score above which a model''s production outcomes, compared with those of the other models of its clusters, say the model changed, over all its clusters or in one: its calibration mean then moves by the measured change (avengers.production_evidence).';
COMMENT ON COLUMN avengers.clusterings.exploration IS 'Exploration policy of the router: off (always the best-ranked model), targeted (for a share of requests, one of the candidates that could plausibly be best, with exact propensities), thompson (rank candidates by a draw from each one''s Beta posterior) or epsilon (a random candidate first for a share of requests).';
COMMENT ON COLUMN avengers.clusterings.exploration_share IS 'targeted and epsilon: the share of requests that may go to another candidate than the best-ranked (targeted: at most that share, only where another is plausible).';
COMMENT ON COLUMN avengers.clusterings.exploration_overlap IS 'targeted: a candidate is plausible when its chance of beating the leader (normal approximation of both posteriors) is at least this.';
"""

DOWNGRADE = r"""
UPDATE avengers.clusterings SET exploration = 'off' WHERE exploration = 'targeted';
ALTER TABLE avengers.clusterings
  DROP CONSTRAINT clusterings_exploration_check,
  ADD CONSTRAINT clusterings_exploration_check
    CHECK (exploration IN ('off', 'thompson', 'epsilon')),
  ALTER COLUMN exploration_share SET DEFAULT 0.05,
  DROP COLUMN exploration_overlap,
  DROP COLUMN change_threshold;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
