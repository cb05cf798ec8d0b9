"""Package discovery for setuptools: ``avengers_store`` and the three top-level folders installed
inside it (``cli/`` as ``avengers_store.cli``, ``sql/`` as ``avengers_store.sql``, ``migrations/``
as ``avengers_store.migrations``). Every folder under them is a package (data folders need no
``__init__.py``), so a module or subpackage added later reaches the wheel without a list to
update; everything else about the project is in pyproject.toml."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

ROOT = Path(__file__).parent
# Import name -> folder in the checkout.
PACKAGE_DIRS = {
    "avengers_store": "avengers_store",
    "avengers_store.cli": "cli",
    "avengers_store.sql": "sql",
    "avengers_store.migrations": "migrations",
}


def packages(root: Path = ROOT) -> list[str]:
    """Every package of the wheel, by import name."""
    found = []
    for name, folder in PACKAGE_DIRS.items():
        subs = find_namespace_packages(str(root / folder), exclude=["*__pycache__*"])
        found += [name, *(f"{name}.{sub}" for sub in subs)]
    return sorted(set(found))


# setuptools runs this file as __main__; a test imports it to call packages() on a tree.
if __name__ == "__main__":
    setup(packages=packages(), package_dir=PACKAGE_DIRS)
