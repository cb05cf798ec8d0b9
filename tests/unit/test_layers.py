"""Imports run one way: a module imports only from its own layer or the layers below it, in
the order docs/concepts.md#layers states. The import graph is read with ``ast`` (imports at
module level and inside functions alike), so a late import cannot hide an upward one."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The folders of the wheel's Python code, by import name (setup.py installs cli/ inside the
# package).
PACKAGES = {"avengers_store": REPO / "avengers_store", "avengers_store.cli": REPO / "cli"}

# Lowest first. A module's layer is the first prefix of its name listed here.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "avengers_store.errors",
            "avengers_store.arguments",
            "avengers_store.figures",
            "avengers_store.upstream_http",
            "avengers_store.redaction",
            "avengers_store.flows",
        ),
    ),
    ("store", ("avengers_store.store",)),
    ("ingest", ("avengers_store.ingest",)),
    ("calibration", ("avengers_store.calibration",)),
    ("routing", ("avengers_store.routing",)),
    ("answering", ("avengers_store.answering",)),
    # Shadow routing decides and samples live traffic beside the served policy.
    ("production", ("avengers_store.production", "avengers_store.shadow")),
    ("evaluation", ("avengers_store.evaluation",)),
    (
        "clients",
        (
            "avengers_store.client_core",
            "avengers_store.client",
            "avengers_store.async_client",
            "avengers_store.client_pools",
            # The package's front door re-exports the clients and the replay.
            "avengers_store",
        ),
    ),
    # Test support: real databases, stores, scripted servers; never the gateway or the CLI.
    ("testing", ("avengers_store.testing",)),
    # The console is served by the gateway and reads its keys: one floor.
    ("gateway", ("avengers_store.gateway", "avengers_store.console")),
    # The demo's own command sits with the demo; cli/main.py loads commands by name.
    ("demo", ("avengers_store.demo", "avengers_store.cli.demo")),
    ("cli", ("avengers_store.cli",)),
    # The bundled sample's build script, run by hand, imports no part of the package.
    ("data", ("avengers_store.data",)),
]
ORDER = ["base", "store", "ingest", "calibration", "routing", "answering", "production",
         "evaluation", "clients", "testing", "gateway", "cli", "demo", "data"]  # fmt: skip


def layer_of(module: str) -> str | None:
    """The layer of a module of the package (None: not the package's). The most specific
    prefix wins, so ``avengers_store.cli.demo`` is the demo's and ``avengers_store`` alone is
    the front door's."""
    matches = [
        (len(prefix), name)
        for name, prefixes in LAYERS
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1] if matches else None


def modules(packages: dict[str, Path] = PACKAGES) -> dict[str, Path]:
    """Every module of the packages, by import name."""
    found = {}
    for name, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((name, *parts))] = path
    return found


def imports(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, module imported) for every import in the file, at any depth; ``from p import x``
    counts as importing ``p.x`` when that is a module, else ``p``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in known else base))
    return list(dict.fromkeys(found))


def violations(packages: dict[str, Path] = PACKAGES, root: Path = REPO) -> list[str]:
    """``file:line module (layer) imports name (layer)`` for each import of a higher layer."""
    found = modules(packages)
    known = set(found)
    out = []
    for module, path in found.items():
        own = layer_of(module)
        for line, name in imports(module, path, known):
            theirs = layer_of(name)
            if own is None or theirs is None or ORDER.index(theirs) <= ORDER.index(own):
                continue
            where = path.relative_to(root) if path.is_relative_to(root) else path
            out.append(f"{where}:{line} {module} ({own}) imports {name} ({theirs})")
    return out


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) is None] == []
    assert sorted(name for name, _ in LAYERS) == sorted(ORDER)


def test_no_module_imports_from_a_higher_layer():
    assert violations() == []


def test_test_support_imports_neither_the_cli_nor_the_gateway():
    support = {m: p for m, p in modules().items() if layer_of(m) == "testing"}
    assert support, "no test support modules found"
    bad = [
        f"{module} imports {name}"
        for module, path in support.items()
        for _, name in imports(module, path, set(modules()))
        if layer_of(name) in ("gateway", "cli", "demo")
    ]
    assert bad == []


def test_the_check_sees_upward_imports_at_any_depth(tmp_path):
    """A late import inside a function, a relative one and ``from package import module`` are
    each found and named."""
    pkg = tmp_path / "avengers_store"
    for folder in ("ingest", "calibration", "store"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "calibration" / "profiles.py").write_text("")
    (pkg / "ingest" / "outcomes.py").write_text(
        "from avengers_store.store import config\n"
        "def load():\n"
        "    from avengers_store.calibration import profiles\n"
    )
    (pkg / "ingest" / "readers.py").write_text("from ..calibration.profiles import x\n")
    found = violations({"avengers_store": pkg}, tmp_path)
    assert found == [
        "avengers_store/ingest/outcomes.py:3 avengers_store.ingest.outcomes (ingest) imports "
        "avengers_store.calibration.profiles (calibration)",
        "avengers_store/ingest/readers.py:1 avengers_store.ingest.readers (ingest) imports "
        "avengers_store.calibration.profiles (calibration)",
    ]
