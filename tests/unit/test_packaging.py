"""The released package works as installed, not only as a checkout: the sdist and the wheel
built from it carry every module and data file, and the wheel installed into a fresh venv
(working directory elsewhere, nothing of the checkout on sys.path) imports every module and runs
`avengers --help`, `avengers demo --json` and `avengers serve` up to a 200 from /health.

The wheel's dependencies come from requirements/runtime.txt (the runtime lock alone, so a
module that needs a test-only package fails here). Installing them takes a minute or two, so
they are installed once per lock into a cache folder keyed on the lock's hash
(``$AVENGERS_TEST_CACHE`` or ``~/.cache/avengers-store``) and the fresh venv reads them from
there with ``site.addsitedir``; the venv itself, the build and the install are new every run.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from avengers_store.testing import REPO, free_port

ROOT = REPO
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
# The four folders the wheel is made of, as (folder in the checkout, package in the wheel).
SOURCES = {
    "avengers_store": "avengers_store",
    "cli": "avengers_store/cli",
    "sql": "avengers_store/sql",
    "migrations": "avengers_store/migrations",
}
# Files of those folders that are for readers of the checkout only.
NOT_SHIPPED = {"sql/README.md", "migrations/README.md"}
# Modules that are scripts run by another program, not imported: alembic loads these itself.
NOT_IMPORTED = ("avengers_store.migrations.env", "avengers_store.migrations.versions.")
# A build script for the bundled sample; it needs pandas, which the package does not.
BUILD_SCRIPTS = ("avengers_store.data.make_demo_sample",)

pytestmark = pytest.mark.slow


# Tracked files and new ones not ignored: what a clean clone has once they are committed.
GIT_FILES = ("git", "ls-files", "--cached", "--others", "--exclude-standard")


def tracked_files() -> list[str]:
    """The files of the four folders that a clean clone has."""
    out = subprocess.run(
        [*GIT_FILES, *SOURCES], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line not in NOT_SHIPPED]


def in_wheel(path: str) -> str:
    folder, _, rest = path.partition("/")
    return f"{SOURCES[folder]}/{rest}"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel): `python -m build` makes the sdist, then the wheel from the unpacked sdist,
    so a file missing from the sdist is missing from the wheel too."""
    out = tmp_path_factory.mktemp("dist")
    # A copy of the tracked files, so build folders and egg-info never land in the checkout.
    source = out / "source"
    files = subprocess.run(
        [*GIT_FILES, "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        target = source / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name.decode()).is_file():
            shutil.copy2(ROOT / name.decode(), target)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = out.glob("avengers_store-*.tar.gz")
    (wheel,) = out.glob("avengers_store-*.whl")
    return sdist, wheel


def test_wheel_holds_every_tracked_file_of_the_package(built):
    _, wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {in_wheel(p) for p in tracked_files()}
    assert expected - names == set()
    assert "avengers_store/production/feedback.py" in names  # a subpackage once left out
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "avengers = avengers_store.cli.main:main" in text


def test_sdist_holds_every_tracked_file_of_the_package(built):
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {*tracked_files(), "pyproject.toml", "setup.py", "README.md"} - names == set()


def test_a_new_subpackage_is_found_without_a_list(tmp_path):
    """setup.py finds packages by walking the folders: a folder added later is shipped."""
    spec = importlib.util.spec_from_file_location("setup_under_test", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "avengers_store.production" in module.packages()
    for folder in SOURCES:
        (tmp_path / folder).mkdir()
    (tmp_path / "cli" / "plugins").mkdir()
    (tmp_path / "cli" / "plugins" / "extra.py").write_text("X = 1\n")
    (tmp_path / "avengers_store" / "later" / "deeper").mkdir(parents=True)
    (tmp_path / "avengers_store" / "later" / "deeper" / "__init__.py").write_text("")
    found = module.packages(tmp_path)
    assert {"avengers_store.cli.plugins", "avengers_store.later.deeper"} <= set(found)


# --- the wheel, installed ------------------------------------------------------------------


def cache_root() -> Path:
    configured = os.environ.get("AVENGERS_TEST_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "avengers-store"


def locked_dependencies() -> Path:
    """A folder with requirements/runtime.txt installed (pip --target), one per lock content;
    made once, under a file lock so two runs at once do not both install."""
    digest = hashlib.sha256(RUNTIME_LOCK.read_bytes()).hexdigest()[:16]
    root = cache_root() / "wheel-test"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"deps-{digest}"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            partial = root / f"deps-{digest}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--require-hashes",
                    "--target",
                    str(partial),
                    "-r",
                    str(RUNTIME_LOCK),
                ],
                check=True,
                capture_output=True,
                timeout=1200,
            )
            partial.rename(target)
            for old in root.glob("deps-*"):
                if old != target and not old.name.endswith(".partial"):
                    shutil.rmtree(old, ignore_errors=True)
    return target


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory) -> dict:
    """A fresh venv with the wheel installed; its dependencies read from the cached folder."""
    _, wheel = built
    deps = locked_dependencies()
    work = tmp_path_factory.mktemp("installed")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "locked_deps.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        + ["--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    cwd = work / "elsewhere"
    cwd.mkdir()
    # Not under pytest's 0700 folders: the embedded server runs as its own user when we are root.
    home = Path(tempfile.mkdtemp(prefix="avengers-wheel-"))
    home.chmod(0o755)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(work),
        "AVENGERS_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "LANG": "C.UTF-8",
    }
    yield {"venv": venv, "python": python, "cwd": cwd, "env": env, "purelib": Path(purelib)}
    subprocess.run(
        [str(venv / "bin" / "avengers"), "db", "stop"], cwd=cwd, env=env, capture_output=True
    )
    shutil.rmtree(home, ignore_errors=True)


def run(installed: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args),
        cwd=installed["cwd"],
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_nothing_of_the_checkout_is_importable(installed):
    probe = (
        "import json, sys, avengers_store, avengers_store.cli;"
        "print(json.dumps([sys.path, avengers_store.__file__, avengers_store.cli.__file__]))"
    )
    result = run(installed, str(installed["python"]), "-c", probe)
    assert result.returncode == 0, result.stderr
    path, package, cli = json.loads(result.stdout)
    assert not [p for p in path if p and Path(p).resolve().is_relative_to(ROOT)]
    assert Path(package).is_relative_to(installed["purelib"])
    assert Path(cli).is_relative_to(installed["purelib"])


def test_every_module_imports(installed):
    probe = f"""
import importlib, json, pkgutil, avengers_store
skip, scripts = {NOT_IMPORTED!r}, {BUILD_SCRIPTS!r}
names, failed = ["avengers_store"], {{}}
for info in pkgutil.walk_packages(avengers_store.__path__, "avengers_store."):
    if info.name.startswith(skip) or info.name in scripts:
        continue
    names.append(info.name)
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed[info.name] = repr(exc)
print(json.dumps([names, failed]))
"""
    result = run(installed, str(installed["python"]), "-c", probe)
    assert result.returncode == 0, result.stderr
    names, failed = json.loads(result.stdout)
    assert failed == {}
    expected = {
        in_wheel(p)[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        for p in tracked_files()
        if p.endswith(".py")
    }
    expected = {n for n in expected if not n.startswith(NOT_IMPORTED) and n not in BUILD_SCRIPTS}
    assert expected - set(names) == set()
    assert len(names) > 100


def test_avengers_help(installed):
    result = run(installed, "avengers", "--help")
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "demo" in result.stdout


def test_avengers_demo_then_serve(installed):
    demo = run(installed, "avengers", "demo", "--json", timeout=600)
    assert demo.returncode == 0, demo.stderr
    out = json.loads(demo.stdout)
    assert out["datasets"] == 14 and len(out["routed"]) == 5
    assert out["replay"]["routed"] > out["replay"]["best_single"]["score"] - 5
    port = free_port()
    server = subprocess.Popen(
        ["avengers", "serve", "--port", str(port)],
        cwd=installed["cwd"],
        env=installed["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code
                break
            except httpx.TransportError:
                time.sleep(0.25)
        assert status == 200, (status, server.poll())
    finally:
        server.terminate()
        try:
            output, _ = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    # uvicorn ends by re-raising the SIGTERM it handled, after a clean shutdown.
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output


# --- the locks -----------------------------------------------------------------------------


def pins(lock: Path) -> dict[str, str]:
    """name -> pinned version of a pip-compile lock file."""
    from packaging.utils import canonicalize_name

    found = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")) and "==" in line:
            name, _, version = line.split(" ")[0].partition("==")
            found[canonicalize_name(name)] = version
    return found


@pytest.mark.parametrize(
    ("lock", "extras"), [("runtime.txt", ()), ("dev.txt", ("test", "docs"))], ids=str
)
def test_lock_pins_every_dependency_within_pyproject_s_range(lock, extras):
    """A dependency added to pyproject.toml without `make lock`, or a range the lock no longer
    meets, fails here rather than as a pip error on CI's fresh machine."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pinned = pins(ROOT / "requirements" / lock)
    problems = []
    for req in wanted:
        version = pinned.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req} -> {version}")
    assert problems == [], f"run `make lock`: {problems}"
    for line in (ROOT / "requirements" / lock).read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            assert line.rstrip().endswith("\\"), f"{lock}: {line} has no hashes"
