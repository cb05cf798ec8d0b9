"""One query per text and split: a text in both the calibration and the test split of a dataset
is kept as two queries, one in each, instead of being merged into whichever row came first.

The key is deferrable so that a replay that re-draws the splits (in a transaction it rolls back)
may put both copies of such a text on one side for a while.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from alembic import op
from sqlalchemy import text

from avengers_store.errors import StoreStateError

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE avengers.queries DROP CONSTRAINT queries_dataset_id_content_hash_key;
ALTER TABLE avengers.queries ADD CONSTRAINT queries_dataset_split_text_key
  UNIQUE (dataset_id, split, content_hash) DEFERRABLE INITIALLY IMMEDIATE;
COMMENT ON CONSTRAINT queries_dataset_split_text_key ON avengers.queries IS
  'One query per normalised text within a dataset and split: duplicates within a split merge; a text in both splits is one query in each.';
COMMENT ON TABLE avengers.queries IS
  'Calibration and test queries. Identical texts within a dataset and split are one row (content_hash); a text in both splits is one row in each.';
COMMENT ON COLUMN avengers.queries.content_hash IS
  'sha256 of the normalised text; unique per dataset and split, so duplicates within a split merge.';
"""

DOWNGRADE = r"""
ALTER TABLE avengers.queries DROP CONSTRAINT queries_dataset_split_text_key;
ALTER TABLE avengers.queries ADD CONSTRAINT queries_dataset_id_content_hash_key
  UNIQUE (dataset_id, content_hash);
COMMENT ON TABLE avengers.queries IS
  'Calibration and test queries. Identical texts within a dataset are one row (content_hash).';
COMMENT ON COLUMN avengers.queries.content_hash IS
  'sha256 of the normalised text; unique per dataset so duplicates merge.';
"""

SHARED_TEXTS = """
SELECT d.name, count(*) FROM (
  SELECT dataset_id FROM avengers.queries GROUP BY dataset_id, content_hash HAVING count(*) > 1
) AS twice JOIN avengers.datasets d ON d.id = twice.dataset_id
GROUP BY d.name ORDER BY d.name
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    # Revision 0001 holds one query per text and dataset: merging the two queries of a text
    # would drop one split's row and its outcomes, so refuse instead and say which datasets.
    shared = op.get_bind().execute(text(SHARED_TEXTS)).fetchall()
    if shared:
        listed = ", ".join(f"{name} ({count})" for name, count in shared)
        raise StoreStateError(
            f"cannot downgrade below 0003: texts stored in both splits of a dataset: {listed}. "
            "Revision 0001 keeps one query per text; remove those datasets (`avengers dataset "
            "remove NAME`) or reload them without the shared texts first"
        )
    op.execute(DOWNGRADE)
