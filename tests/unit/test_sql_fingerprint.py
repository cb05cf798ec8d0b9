"""The sql/ fingerprint ignores comments, whitespace and COMMENT ON texts, and nothing else."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from avengers_store.store import schema
from avengers_store.store.sql_fingerprint import fingerprint, statements, text_hash, tokens

SQL = Path(__file__).resolve().parents[2] / "sql"


def _files(directory: Path) -> list[tuple[str, str]]:
    return [(p.name, p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.sql"))]


def _reworded(text: str) -> str:
    """Comments added everywhere (also inside function bodies), indentation changed, and every
    COMMENT ON text and column comment reworded: nothing a client depends on."""
    text = "/* added /* nested */ block comment */\n-- an added line comment\n" + text
    text = text.replace("AS $$\n", "AS $$\n  -- a comment inside a PL/pgSQL body\n")
    text = text.replace("BEGIN ATOMIC\n", "BEGIN ATOMIC\n  /* inside an SQL-standard body */\n")
    text = text.replace("\n  ", "\n\t    ").replace(" AS\n", "   AS  -- trailing\n")
    text = re.sub(
        r"CALL avengers\.comment_columns\([^$]*\$\$.*?\$\$",
        lambda call: call.group(0).replace(": ", ": Reworded: "),
        text,
        flags=re.S,
    )
    return re.sub(r"(COMMENT ON [^;]*? IS\s*')", r"\1Reworded: ", text)


def test_the_installed_files_are_the_repository_files():
    assert schema.sql_files() == _files(SQL)


def test_comment_only_edits_of_a_copy_keep_the_fingerprint(tmp_path):
    copy = tmp_path / "sql"
    shutil.copytree(SQL, copy)
    for path in copy.glob("*.sql"):
        path.write_text(_reworded(path.read_text(encoding="utf-8")), encoding="utf-8")
    original, edited = _files(SQL), _files(copy)
    assert [t for _, t in original] != [t for _, t in edited]
    assert any("-- a comment inside a PL/pgSQL body" in t for _, t in edited)
    assert any("inside an SQL-standard body" in t for _, t in edited)
    assert any("clustering_id: Reworded: " in t for _, t in edited)
    assert fingerprint(edited) == fingerprint(original) == schema.sql_hash()
    assert text_hash(edited) != text_hash(original)  # upgrade still applies the edit


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("SELECT 'a -- b' FROM t", "SELECT 'a' FROM t"),  # a string literal is not a comment
        ("SELECT 'a /* b */'", "SELECT 'a '"),
        ("SELECT E'it\\'s -- x'", "SELECT E'it\\'s'"),  # backslash escapes in E'' strings
        ('SELECT "a -- b" FROM t', 'SELECT "a" FROM t'),  # nor is a quoted identifier
        ("CREATE FUNCTION f() AS $$ SELECT 1 $$", "CREATE FUNCTION f() AS $$ SELECT 2 $$"),
        ("AS $q$ RAISE '-- %', x; $q$", "AS $q$ RAISE '', x; $q$"),  # literal inside a body
        ("SELECT a - -b", "SELECT a --b"),
        ("COMMENT ON VIEW v IS 'x'; SELECT 1", "COMMENT ON VIEW v IS 'x'; SELECT 2"),
        ("CALL avengers.refresh('a')", "CALL avengers.refresh('b')"),  # other calls count
    ],
)
def test_what_changes_the_fingerprint(before, after):
    assert fingerprint([("a.sql", before)]) != fingerprint([("a.sql", after)])


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("SELECT a<->b FROM t", "SELECT a <-> b\n  FROM t -- why"),
        ("SELECT 1 /* a /* nested */ comment */ + 2", "SELECT 1 + 2"),
        ("AS $$ BEGIN x := 1; -- set\n END $$", "AS $$\nBEGIN\n  x := 1;\nEND\n$$"),
        ("AS $f$ SELECT 1 /* c */ $f$", "AS $f$SELECT 1$f$"),
        ("SELECT 1; COMMENT ON VIEW v IS 'old';", "SELECT 1;\nCOMMENT ON VIEW v IS 'new text';"),
        (
            "SELECT 1; CALL avengers.comment_columns('avengers.v', $$a: old$$);",
            "SELECT 1;\nCALL avengers.comment_columns('avengers.v', $$\na: new text\n$$);",
        ),
    ],
)
def test_what_does_not(before, after):
    assert fingerprint([("a.sql", before)]) == fingerprint([("b.sql", after)])


def test_tokens_keep_literals_whole_and_bodies_apart():
    assert tokens("SELECT 'it''s -- here', \"a\"\"b\" -- gone\n") == [
        "SELECT",
        "'it''s -- here'",
        ",",
        '"a""b"',
    ]
    # A ; inside a dollar-quoted body does not end the statement around it.
    found = statements("CREATE FUNCTION f() AS $$ BEGIN x := 1; END $$; SELECT $1")
    assert len(found) == 2 and found[1] == ["SELECT", "$1"]
    # An unterminated body or comment runs to the end instead of failing.
    assert tokens("SELECT $$ a") == ["SELECT", "$$a$$"]
    assert tokens("SELECT 1 /* open") == ["SELECT", "1"]
