"""Shipped migrations are frozen: databases have run them, so an edit would never reach those."""

from __future__ import annotations

import hashlib
from pathlib import Path

VERSIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"

# One row per shipped migration. A new migration gets its row when it is added.
SHIPPED = {
    "0001_profile_store.py": "8bf321a890307e8728876a4a77d655c5b979150bac9e8c6a762237bdb9386edd",
    "0002_gateway.py": "12531ff4d6457924954eb908e965699eaa8298a6d4aa36e7a17b7fd0d2fedb3b",
    "0003_query_per_split.py": "5c1bee404318e144ec89ad9a6ad67543cc0af7a653ab6870a079229097540da7",
    "0004_loop.py": "2648d94272982c97b0360c11ea70dfb7057fe35474b9561110bb5aa1a92dc7dc",
    "0005_novelty.py": "8eb1c3c3922de34c804f8728cfad44a76f78e7290060708f531b134e8971453f",
    "0006_decisions.py": "9ef0d5109ae3cd0a5629e2148180347b979c61c23c500f7edcfc06887e8317ce",
    "0007_key_policies.py": "7c021534ff4ac4fdee5822738d011f15cc44fd18bb68cd0692da198a0ec79fcd",
    "0008_production_rule.py": "3a93c84f69be1112183bea33bfa8a677f94c508ae3e9f1729b33fbd366527bcf",
    "0009_console_keys.py": "a54c63db13421e02814ecbea1fe33e581c16b8ca44241ae30c9ce8bd8741b877",
    "0010_shadow.py": "62f4011f30e7db30e15abf21638119874dbc0ee16554efa7092cc8a858d5485a",
    "0011_change_test_comment.py": "fe9e5e0592b64e377ad243c84b843347e53f045e11fae6c6f255dfa441e17412",
    "0012_production_history.py": "9fca80b5746fef859f6a9421f29606f093798cbb314f49e8d7043a84c90ce3e3",
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
