"""The built wheel carries what an installed `avengers` needs besides Python code."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_sql_migrations_and_demo_data(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("avengers_store-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        *(f"avengers_store/sql/{p.name}" for p in (ROOT / "sql").glob("*.sql")),
        *(
            f"avengers_store/migrations/versions/{p.name}"
            for p in (ROOT / "migrations/versions").glob("*.py")
        ),
        "avengers_store/migrations/env.py",
        "avengers_store/migrations/script.py.mako",
        "avengers_store/cli/main.py",
        "avengers_store/data/llmrouter_sample.parquet",
        "avengers_store/data/llmrouter_sample_minilm.npy",
        "avengers_store/data/LICENSE_upstream_MIT.txt",
    }
    assert expected - names == set()
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "avengers = avengers_store.cli.main:main" in text
