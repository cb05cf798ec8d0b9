"""Redaction of upstream text: configured keys and credential shapes are taken out of a body
however it is cut into pieces, and every HTTP client that calls an upstream is made by
``avengers_store.redaction`` (the one place their text enters)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from avengers_store import redaction
from avengers_store.redaction import Redactor, redact, redact_bytes, remember

KEY = "Zq9!odd-key#with$symbols%42"  # a configured key with characters a token has not
TOKEN_KEY = "ab12CD34ef56GH78ij90"  # a plain one, shaped like no known prefix
remember(KEY)
remember(TOKEN_KEY)

PIECES = st.sampled_from(
    [
        KEY,
        TOKEN_KEY,
        json.dumps(KEY)[1:-1],
        "Bearer ",
        "bearer\t",
        "Authorization: Bearer abcdefgh12345678",
        "sk-proj-0123456789abcdef",
        "avk-AAAABBBBCCCCDDDD",
        "task-abcdefghijk",
        " ",
        "\n",
        '"',
        "{",
        "x",
        "data: ",
        "é",
    ]
)
TEXTS = st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=24).map("".join)


def feed_in_pieces(data: bytes, cuts: list[int]) -> bytes:
    redactor = Redactor()
    out, last = b"", 0
    for at in sorted({min(c, len(data)) for c in cuts}):
        out += redactor.feed(data[last:at])
        last = at
    return out + redactor.feed(data[last:]) + redactor.finish()


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(TEXTS, st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_a_body_cut_anywhere_is_redacted_as_the_whole(text, cuts):
    data = text.encode("utf-8", "surrogatepass")
    out = feed_in_pieces(data, cuts)
    assert out == redact_bytes(data)
    for secret in (KEY, TOKEN_KEY, json.dumps(KEY)[1:-1]):
        assert secret.encode() not in out


def test_what_is_taken_out_and_what_is_left():
    assert redact(f"not json; key={TOKEN_KEY}") == "not json; key=***"
    assert redact("got Authorization: Bearer xyzxyzxyz123") == "got Authorization: Bearer ***"
    assert redact("use sk-live-1234567890 here") == "use *** here"
    assert redact("the task-abcdefghijk runs") == "the task-abcdefghijk runs"  # not a key
    assert redact("a short sk-1 or Bearer abc") == "a short sk-1 or Bearer abc"


def test_a_streamed_answer_is_redacted_word_by_word(scripted_server):
    """A real stream through the transport: the key, sent as one event of its own, comes out
    masked, and every other event comes through whole."""
    scripted_server.answers("m", f"the key is {TOKEN_KEY} and more")
    body = {"model": "m", "messages": [{"role": "user", "content": "key?"}], "stream": True}
    url = scripted_server.base_url + "/chat/completions"
    with (
        redaction.sync_client(timeout=10) as client,
        client.stream("POST", url, json=body) as response,
    ):
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    words = [
        json.loads(line[6:])["choices"][0]["delta"].get("content")
        for line in lines
        if json.loads(line[6:])["choices"]
    ]
    assert "".join(w or "" for w in words) == "the key is *** and more"


def test_every_upstream_http_client_is_made_by_redaction():
    """No other module makes an httpx client or calls httpx.get/post: an upstream's text can
    only arrive through the redacting transport (test support, which polls its own loopback
    servers, aside)."""
    package = Path(redaction.__file__).parent
    made = re.compile(r"httpx\.(Client|AsyncClient|post|get|stream|request)\(")
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "redaction.py"
        and path.relative_to(package).parts[0] != "testing"
        and made.search(path.read_text())
    ]
    assert offenders == []
