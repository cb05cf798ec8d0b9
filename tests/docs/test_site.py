"""The documentation site builds with `mkdocs build --strict`, and strict really fails on a
broken link or anchor; the generated references are current; README stays short and points into
the site; the gateway page names every endpoint, body field and header the gateway has."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from avengers_store.gateway import headers, protocol
from avengers_store.testing import REPO

DOCS = REPO / "docs"
GATEWAY_SOURCES = REPO / "avengers_store" / "gateway"


def build(root: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml")]
        + ["-d", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def site_copy(tmp_path: Path) -> Path:
    """mkdocs.yml, docs/ and the package (for the API page) in a folder of their own."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy2(REPO / "mkdocs.yml", root / "mkdocs.yml")
    shutil.copytree(DOCS, root / "docs")
    (root / "avengers_store").symlink_to(REPO / "avengers_store")
    return root


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    result = build(REPO, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-4000:]
    pages = {
        p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("*.html")
    }
    for page in (
        "quickstart/index.html",
        "reference/cli/index.html",
        "reference/python/index.html",
    ):
        assert page in pages
    api = (tmp_path / "site" / "reference" / "python" / "index.html").read_text()
    assert "AvengersClient" in api and "route_many" in api  # mkdocstrings read the docstrings


@pytest.mark.slow
@pytest.mark.parametrize(
    "breakage",
    [
        ("quickstart.md", "\n[a broken anchor](gateway.md#no-such-heading)\n"),
        ("quickstart.md", "\n[a broken link](no-such-page.md)\n"),
        ("quickstart.md", "\n[a broken in-page anchor](#nowhere)\n"),
        ("quickstart.md", "\n[a good anchor](gateway.md#errors)\n"),
    ],
    ids=["anchor", "page", "in-page anchor", "control: a good anchor"],
)
def test_strict_build_fails_on_a_broken_link(tmp_path, breakage):
    root = site_copy(tmp_path)
    page, text = breakage
    with (root / "docs" / page).open("a") as f:
        f.write(text)
    result = build(root, tmp_path / "site")
    if "good" in text:
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        assert result.returncode != 0
        assert "WARNING" in result.stderr


def test_sql_reference_is_current(db_url):
    from tools import sql_reference

    page = sql_reference.render_url(db_url)
    assert "(no comment)" not in page
    assert (DOCS / "reference" / "sql.md").read_text(encoding="utf-8") == page, (
        "docs/reference/sql.md is stale: run `python -m tools.sql_reference --write`"
    )


def test_sql_reference_names_every_view_and_function(db_url):
    import psycopg

    page = (DOCS / "reference" / "sql.md").read_text(encoding="utf-8")
    with psycopg.connect(db_url) as conn:
        names = [
            r[0]
            for r in conn.execute(
                """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = 'avengers' AND c.relkind IN ('v', 'm')
                   UNION SELECT p.proname FROM pg_proc p
                   JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'avengers'"""
            )
        ]
    assert len(names) > 30
    assert [n for n in names if f"### avengers.{n}\n" not in page] == []


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150
    block = lines[lines.index("```bash") + 1 : lines.index("```bash") + 3]
    assert [line.split("#")[0].strip() for line in block] == ["make demo", "make test"]


def test_readme_links_resolve():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert local, "README links into the docs"
    assert [t for t in local if not (REPO / t).exists()] == []


# --- the gateway page against the gateway --------------------------------------------------


def gateway_page() -> str:
    return (DOCS / "gateway.md").read_text(encoding="utf-8")


def test_gateway_page_names_every_endpoint():
    app = (GATEWAY_SOURCES / "app.py").read_text(encoding="utf-8")
    routes = re.findall(r'Route\("([^"]+)"', app)
    assert len(routes) >= 7
    page = gateway_page()
    assert [r for r in routes if f"`{r}`" not in page and f" {r}`" not in page] == []


@pytest.mark.parametrize(
    "model",
    [protocol.ChatCompletionRequest, protocol.RouteRequest, protocol.FeedbackRequest],
    ids=lambda m: m.__name__,
)
def test_gateway_page_names_every_body_field(model):
    page = gateway_page()
    missing = [name for name in model.model_fields if f"`{name}`" not in page]
    assert missing == []


def test_gateway_page_names_every_header():
    sources = "\n".join(p.read_text(encoding="utf-8") for p in GATEWAY_SOURCES.glob("*.py"))
    names = set(re.findall(r'"(x-avengers-[a-z-]+)"', sources))
    names |= set(re.findall(r'"(x-[a-z]+-[a-z-]+)"', sources))
    assert {"x-avengers-route-id", "x-avengers-expected-cost", "x-session-id"} <= names
    assert headers.decision_headers.__doc__  # the module the headers come from
    page = gateway_page()
    assert sorted(n for n in names if f"`{n}`" not in page) == []


def test_gateway_page_names_every_error_status():
    sources = "\n".join(p.read_text(encoding="utf-8") for p in GATEWAY_SOURCES.glob("*.py"))
    statuses = {int(s) for s in re.findall(r"GatewayError\(\s*(\d{3})", sources)}
    statuses |= {400}  # bad_request()
    assert {400, 404, 429, 502, 503, 504} <= statuses
    page = gateway_page()
    assert sorted(s for s in statuses if f"| {s} " not in page) == []
