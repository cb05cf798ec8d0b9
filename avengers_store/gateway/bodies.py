"""A request body read as JSON within limits: its size, its nesting depth and its text.

Anything past a limit is the request's own 400, naming where (``invalid_json``,
``invalid_unicode``; the size, ``body_too_large``, in ``Gateway.read_json``), decided before the
body reaches a handler, so no input can make the gateway raise: a 100,000-deep array is refused
by its depth, not by a RecursionError, and a lone surrogate (``"\\ud800"``, which JSON can spell
but Unicode cannot hold) is refused naming the field, not by the tokenizer of a batch it shares
with other requests.
"""

from __future__ import annotations

import json
from typing import Any

from avengers_store.gateway.errors import bad_request

# No OpenAI request nests deeper than a few levels (a message's content parts, a tool's JSON
# schema); 64 leaves room for schemas and stops a body built to exhaust the parser.
MAX_DEPTH = 64


def parse(body: bytes) -> Any:
    """The JSON value of ``body``; a 400 GatewayError for a body that is not UTF-8 JSON (NaN and
    Infinity are not JSON), nests deeper than ``MAX_DEPTH`` or holds a string that is not valid
    Unicode."""
    try:
        # JSON between systems is UTF-8 (RFC 8259); json.loads would also guess UTF-16 or -32.
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(
            f"the body is not UTF-8 (byte {exc.start}: {exc.reason})", code="invalid_json"
        ) from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise bad_request(
            f"the body nests deeper than {MAX_DEPTH} levels", code="invalid_json"
        ) from None
    except ValueError as exc:
        # ValueError covers JSONDecodeError and integers longer than Python reads (4,300 digits).
        raise bad_request(f"the body is not JSON: {exc}", code="invalid_json") from None
    # Walked only when it could fail: a lone surrogate comes only from a \u escape (strict
    # UTF-8 holds none), and a text with at most MAX_DEPTH brackets nests no deeper.
    if "\\u" in text or text.count("[") + text.count("{") > MAX_DEPTH:
        check(value)
    return value


def _no_constant(name: str) -> Any:
    # Python reads NaN and Infinity; JSON has neither, and a NaN vector or score routes nowhere.
    raise ValueError(f"{name} is not a JSON value")


def check(value: Any) -> None:
    """Walk ``value`` without recursion: depth at most ``MAX_DEPTH``, every string (keys too)
    encodable as UTF-8."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item, path)
            continue
        if not isinstance(item, dict | list):
            continue
        if depth >= MAX_DEPTH:
            raise bad_request(
                f"the body nests deeper than {MAX_DEPTH} levels (at {path or 'the top'})",
                param=path or None,
                code="invalid_json",
            )
        if isinstance(item, dict):
            for key, child in item.items():
                where = f"{path}.{key}" if path else str(key)
                _check_text(key, where)
                stack.append((child, where, depth + 1))
        else:
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # The path is shown with the offending character escaped, so the message is printable.
        where = path.encode("utf-8", "backslashreplace").decode("utf-8") or "the body"
        raise bad_request(
            f"{where}: holds {exc.object[exc.start]!a} at character {exc.start}, a lone "
            "surrogate that is not valid Unicode: send UTF-8 text",
            param=where,
            code="invalid_unicode",
        ) from None
