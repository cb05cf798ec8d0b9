"""API keys that may read the console only (avengers keys create NAME --console-only).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE avengers.api_keys ADD COLUMN console_only boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN avengers.api_keys.console_only IS 'The key opens the console''s read-only pages (/console) and nothing else: the API refuses it (403).';
"""

DOWNGRADE = r"""
ALTER TABLE avengers.api_keys DROP COLUMN console_only;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
