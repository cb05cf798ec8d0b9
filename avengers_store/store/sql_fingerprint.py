"""The fingerprint of the ``sql/`` definitions: what they define, not how they are written.

Comments (``--`` and ``/* */``, also inside dollar-quoted function bodies, never inside string
literals), whitespace, ``COMMENT ON`` statements and the ``avengers.comment_columns`` calls that
comment columns do not count, so editing them does not make a
client's revision check fail; ``db upgrade`` compares the full text and still applies them.
Hand-written because SQL tokenizers (sqlparse, pygments) read a dollar-quoted PL/pgSQL body as one
string literal and leave the comments inside it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from functools import lru_cache

_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"[A-Za-z0-9_$\u0080-\U0010ffff]+")
_DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_OPERATOR_CHARS = frozenset("+-*/<>=~!@#%^&|`?")
# Separates the tokens of a dollar-quoted body inside the one token that stands for it.
_BODY_SEPARATOR = "\x1f"


def tokens(text: str) -> list[str]:
    """The tokens of ``text`` without comments or whitespace. A string literal or quoted
    identifier is one token as written; a dollar-quoted body is one token holding its own
    tokens, so a ``;`` inside it never ends a statement."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i = _SPACE.match(text, i).end()
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            i = _block_comment_end(text, i)
        elif ch == "'":
            end = _quoted_end(text, i, "'", backslashes=_is_escape_prefix(out, text, i))
            out.append(text[i:end])
            i = end
        elif ch == '"':
            end = _quoted_end(text, i, '"', backslashes=False)
            out.append(text[i:end])
            i = end
        elif ch == "$" and (quote := _DOLLAR_QUOTE.match(text, i)) and not _follows_word(text, i):
            tag = quote.group()
            close = text.find(tag, quote.end())
            body_end = n if close < 0 else close
            body = tokens(text[quote.end() : body_end])
            out.append(tag + _BODY_SEPARATOR.join(body) + tag)
            i = n if close < 0 else close + len(tag)
        elif word := _WORD.match(text, i):
            out.append(word.group())
            i = word.end()
        elif ch in _OPERATOR_CHARS:
            start = i
            # An operator never contains -- or /*: they start a comment.
            while (
                i < n
                and text[i] in _OPERATOR_CHARS
                and not text.startswith("--", i)
                and not text.startswith("/*", i)
            ):
                i += 1
            out.append(text[start:i])
        else:
            out.append(ch)
            i += 1
    return out


def _block_comment_end(text: str, i: int) -> int:
    # PostgreSQL block comments nest.
    depth, i, n = 0, i, len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def _quoted_end(text: str, i: int, quote: str, *, backslashes: bool) -> int:
    """Index just past the literal opened at ``i`` (doubled quotes, and backslash escapes in
    E'' strings, stay inside it)."""
    j, n = i + 1, len(text)
    while j < n:
        ch = text[j]
        if backslashes and ch == "\\":
            j += 2
        elif ch == quote:
            if text.startswith(quote, j + 1):
                j += 2
            else:
                return j + 1
        else:
            j += 1
    return n


def _is_escape_prefix(out: list[str], text: str, i: int) -> bool:
    return bool(out) and out[-1] in ("E", "e") and i > 0 and text[i - 1] in "Ee"


def _follows_word(text: str, i: int) -> bool:
    # A $ right after an identifier character belongs to the identifier (e.g. a$b$), not a quote.
    return i > 0 and _WORD.fullmatch(text[i - 1]) is not None


def statements(text: str) -> list[list[str]]:
    """``text``'s statements as token lists (split at each top-level ``;``), empty ones left out."""
    found: list[list[str]] = [[]]
    for token in tokens(text):
        if token == ";":
            found.append([])
        else:
            found[-1].append(token)
    return [s for s in found if s]


# sql/005_column_comments.sql: the sql/ files comment columns with this procedure.
_COMMENT_COLUMNS = ["CALL", "avengers", ".", "comment_columns"]


def is_comment_statement(statement: list[str]) -> bool:
    """``COMMENT ON ...``, or ``CALL avengers.comment_columns(...)``: comments either way."""
    head = [t.upper() for t in statement[:2]]
    return head == ["COMMENT", "ON"] or [head[0], *statement[1:4]] == _COMMENT_COLUMNS


def fingerprint(files: Iterable[tuple[str, str]]) -> str:
    """SHA-256 of the definitions in ``(name, text)`` files, in order: their tokens, without
    comments, whitespace, ``COMMENT ON`` statements (and column-comment calls) or file names."""
    return _fingerprint(tuple(text for _, text in files))


@lru_cache(maxsize=16)
def _fingerprint(texts: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        for statement in statements(text):
            if not is_comment_statement(statement):
                digest.update(_BODY_SEPARATOR.join(statement).encode() + b"\x1e")
    return digest.hexdigest()


def text_hash(files: Iterable[tuple[str, str]]) -> str:
    """SHA-256 of the files exactly as written, names included: any edit changes it."""
    digest = hashlib.sha256()
    for name, text in files:
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()
