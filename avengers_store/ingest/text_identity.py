"""Text identity: the normal form two texts must share to count as the same query."""

from __future__ import annotations

import hashlib
import unicodedata


def normalize_text(text: str) -> str:
    """NFC, whitespace runs folded to one space, ends stripped. Case is kept: it can matter."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def content_hash(text: str) -> str:
    """sha256 hex of the normalised text: the per-dataset identity of a query."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()
