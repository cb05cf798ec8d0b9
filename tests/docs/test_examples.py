"""The docs' examples run: every ```bash and ```python block of the pages below is executed, in
page order, as one bash script per page (a python block becomes `python - <<EOF`), so a shell
variable or background server set up by one block is there for the next, as for a reader
following the page in one terminal. A page's script runs from a folder laid out like a checkout
(its files linked, `.venv` pointing at the running venv, `../shared` at the public tables), in an
AVENGERS_HOME of its own; it must exit 0 under `set -euo pipefail` (so pages print the first
lines of long output with `sed -n 1,Np`, which reads to the end, not `head`). Ports 8080 and 8012 in a page are swapped for free
ones, so runs on one machine do not clash. Blocks of other languages (text, sql, json) are
output or reference and are not run.

A page that needs the public tables is skipped, saying so, where they are absent. Set
AVENGERS_DOCS_OUTPUT to a folder to keep what each page printed (to refresh the pages' output).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from avengers_store.testing import REPO, free_port, shared_data, smol_gguf

DOCS = REPO / "docs"
# page -> the AVENGERS_HOME it runs in; pages that share one continue a reader's store.
PAGES = {
    "quickstart.md": "demo",
    "calibrate.md": "calibrate",
    "route-and-answer.md": "demo",
    "gateway.md": "demo",
}
NEEDS_SHARED = {"calibrate.md"}
NEEDS_MODEL = {"quickstart.md", "route-and-answer.md", "gateway.md"}
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.S | re.M)

pytestmark = pytest.mark.slow


def blocks(page: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in order."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def script(page: str, ports: dict[str, str]) -> str:
    lines = [
        "set -euo pipefail",
        # Servers a page started in the background stop with it, even when a block fails.
        "trap 'jobs -p | xargs -r kill 2>/dev/null; wait' EXIT",
    ]
    for language, code in blocks(page):
        if language == "bash":
            lines.append(code)
        elif language == "python":
            lines.append(f"python - <<'AVENGERS_DOCS_PY'\n{code}AVENGERS_DOCS_PY")
    text = "\n".join(lines) + "\n"
    for documented, free in ports.items():
        text = text.replace(documented, free)
    return text


def test_every_page_has_examples_and_no_unknown_language():
    for page in PAGES:
        found = blocks(page)
        assert any(lang in ("bash", "python") for lang, _ in found), page
        assert {lang for lang, _ in found} <= {"bash", "python", "text", "json", "sql"}, page


def test_block_extraction_keeps_order_and_code():
    text = "a\n```bash\necho one\n```\n\n```text\nout\n```\n```python\nprint(2)\n```\n"
    found = [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]
    assert found == [("bash", "echo one\n"), ("text", "out\n"), ("python", "print(2)\n")]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A folder laid out like a checkout: every top-level entry linked, .venv the running venv,
    and ../shared the public tables where they are."""
    base = tmp_path_factory.mktemp("reader")
    root = base / "avengers-store"
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {".venv", ".git"}:
            (root / entry.name).symlink_to(entry)
    (root / ".venv").symlink_to(Path(sys.prefix))
    data = shared_data()
    if data.exists():
        (base / "shared").mkdir()
        (base / "shared" / "data").symlink_to(data)
    return root


@pytest.fixture(scope="module")
def homes():
    """One AVENGERS_HOME per store, outside pytest's 0700 folders (the embedded server runs
    as its own user)."""
    made: dict[str, Path] = {}

    def home(name: str) -> Path:
        if name not in made:
            made[name] = Path(tempfile.mkdtemp(prefix=f"avengers-docs-{name}-"))
            made[name].chmod(0o755)
        return made[name]

    yield home
    for path in made.values():
        subprocess.run(
            [str(Path(sys.prefix) / "bin" / "avengers"), "db", "stop"],
            env={**os.environ, "AVENGERS_HOME": str(path)},
            capture_output=True,
            check=False,
        )
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("page", list(PAGES))
def test_page_examples_run(page, checkout, homes, tmp_path):
    if page in NEEDS_SHARED and not (checkout.parent / "shared" / "data").exists():
        pytest.skip(f"{page} loads the public tables, not found at {shared_data()}")
    if page in NEEDS_MODEL and smol_gguf() is None:
        pytest.skip(f"{page} asks a local model: the SmolLM2 GGUF is not installed")
    ports = {"8080": str(free_port()), "8012": str(free_port())}
    path = tmp_path / page.replace(".md", ".sh")
    path.write_text(script(page, ports), encoding="utf-8")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AVENGERS_", "PG", "VIRTUAL_ENV"))
    }
    env.update(
        AVENGERS_HOME=str(homes(PAGES[page])),
        PATH=f"{Path(sys.prefix) / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
        HF_HUB_OFFLINE="1",
        MAKEFLAGS="",
    )
    result = subprocess.run(
        ["bash", str(path)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    keep = os.environ.get("AVENGERS_DOCS_OUTPUT")  # a folder to keep each page's output in
    if keep:
        Path(keep, page.replace(".md", ".out")).write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (
        f"{page} failed (exit {result.returncode}); script {path}\n"
        f"--- stdout (end)\n{result.stdout[-3000:]}\n--- stderr (end)\n{result.stderr[-3000:]}"
    )
