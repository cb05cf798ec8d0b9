"""No tracked file names an absolute path of the machine it was written on: bench, docs and
examples run from any checkout (`.venv/bin/python`, `../shared/data`), not from one machine's."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# First folders of an absolute path that belong to one machine or one user: a checkout, a home,
# a scratch, temporary or mounted folder, a locally installed tool. System locations
# (/usr/bin, /usr/lib/postgresql, /var/lib) are the same everywhere and pass.
MACHINE_ROOTS = frozenset(
    ["work", "root", "home", "Users", "tmp", "mnt", "media", "scratch", "private", "srv", "opt"]
)
# Folders that put a path inside one installation's virtualenv, wherever it lives.
VENV_PARTS = {".venv", "venv", "virtualenvs", "site-packages"}

# An absolute path starts at "/" not preceded by a path, URL or variable character, so
# `.venv/bin/python`, `https://host/home/x` and `$HOME/x` are not absolute paths here.
ABSOLUTE = re.compile(r"(?<![\w.~/$@})\\-])/[\w.@+-]+(?:/[\w.@+-]+)*/?")
WINDOWS_HOME = re.compile(r"\b[A-Za-z]:\\(?:Users|Documents and Settings)\\[^\s\\]+")


def _path(*parts: str) -> str:
    # Paths are assembled from parts so that this file does not itself name a machine path.
    return "/" + "/".join(parts)


# Absolute paths that are right where they are, by file: each is the same on every machine.
ALLOWED = {
    # The Hugging Face cache inside the vLLM container image, a named volume's mount point.
    "docker-compose.yml": {_path("root", ".cache", "huggingface")},
}

SKIPPED_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}


def machine_paths(text: str) -> list[str]:
    """The absolute paths in ``text`` that only make sense on one machine."""
    found = []
    for match in ABSOLUTE.finditer(text):
        path = match.group().rstrip("/.")
        parts = path.strip("/").split("/")
        if (
            parts[0] in MACHINE_ROOTS
            or parts[:2] == ["usr", "local"]
            or any(part in VENV_PARTS for part in parts)
        ):
            found.append(path)
    found.extend(m.group() for m in WINDOWS_HOME.finditer(text))
    return found


def tracked_files() -> list[Path]:
    """The files git tracks; without git (an unpacked archive), every file but build output."""
    if shutil.which("git") and (ROOT / ".git").exists():
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
        return [ROOT / name for name in listed.split("\0") if name]
    return [
        p
        for p in ROOT.rglob("*")
        if p.is_file()
        and not SKIPPED_DIRS.intersection(p.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in p.parts)
    ]


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file (Parquet, NumPy, PNG)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _path(*parts: str) -> str:
    # Examples are assembled from parts so that this file does not itself name a machine path.
    return "/" + "/".join(parts)


@pytest.mark.parametrize(
    "line",
    [
        _path("work", "venv", "bin", "python") + " bench/run_all.py --big",
        "avengers load-table " + _path("work", "shared", "data", "routerdc_7models", "t.parquet"),
        "export AVENGERS_HOME=" + _path("tmp", "eval-rdc"),
        "(see " + _path("home", "alice", "avengers-store", "README.md") + ")",
        _path("Users", "bob", "src") + "/x.py",
        _path("usr", "local", "lib", "python3.11", "site-packages", "avengers_store"),
        _path("data", "ci", ".venv", "bin", "python") + " -m pytest",
        "C:" + "\\Users\\carol\\avengers-store",
    ],
)
def test_detects_a_machine_path(line):
    assert machine_paths(line), line


@pytest.mark.parametrize(
    "line",
    [
        ".venv/bin/python bench/run_all.py --big",
        "avengers load-table ../shared/data/routerdc_7models/routerdc_7models.parquet",
        'export AVENGERS_HOME="$(mktemp -d)"',
        "PG15_BIN = Path(" + repr(_path("usr", "lib", "postgresql", "15", "bin")) + ")",
        'env={"PATH": "/usr/bin:/bin"}',
        "- pgdata:/var/lib/postgresql/data",
        "#!/usr/bin/env bash",
        "see https://github.com/home/tmp/work and postgresql://postgres:@/avengers?host=x",
        "~/.local/share/avengers-store or $XDG_DATA_HOME/avengers-store",
        "sql/030_routing.sql and avengers_store/calibration/fit.py",
    ],
)
def test_leaves_portable_and_system_paths_alone(line):
    assert machine_paths(line) == []


def test_no_tracked_file_names_a_machine_path():
    files = tracked_files()
    assert any(p.name == "README.md" for p in files)
    offenders = []
    for path in files:
        if not path.is_file():
            continue
        text = text_of(path)
        if text is None:
            continue
        name = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(text.splitlines(), 1):
            for found in machine_paths(line):
                if found not in ALLOWED.get(name, set()):
                    offenders.append(f"{name}:{number}: {found}")
    assert offenders == [], "use paths relative to the checkout:\n" + "\n".join(offenders)


def test_every_allowed_path_is_still_there():
    # An allowance outlives its reason when the path goes away: then it should go too.
    for name, paths in ALLOWED.items():
        assert set(machine_paths((ROOT / name).read_text())) >= paths, name
