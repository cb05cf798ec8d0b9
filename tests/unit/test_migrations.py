"""Shipped migrations are frozen: databases have run them, so an edit would never reach those."""

from __future__ import annotations

import hashlib
from pathlib import Path

VERSIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"

# One row per shipped migration. A new migration gets its row when it is added.
SHIPPED = {
    "0001_profile_store.py": "8bf321a890307e8728876a4a77d655c5b979150bac9e8c6a762237bdb9386edd",
    "0002_gateway.py": "12531ff4d6457924954eb908e965699eaa8298a6d4aa36e7a17b7fd0d2fedb3b",
    "0005_loop.py": "d246634cac1598fc94cd05ebedc000a3af854ed85a5a5e39069cd0e5c8e734c9",
}


def _digests() -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(VERSIONS.glob("*.py"))
        if p.name != "__init__.py"
    }


def test_shipped_migrations_are_unchanged():
    found = _digests()
    edited = sorted(name for name, digest in SHIPPED.items() if found.get(name) != digest)
    assert edited == [], f"shipped migrations changed or missing: {edited}; add a new revision"


def test_every_migration_is_listed():
    unlisted = sorted(set(_digests()) - set(SHIPPED))
    assert unlisted == [], f"add {unlisted} to SHIPPED with its sha256"
