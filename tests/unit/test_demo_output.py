"""`avengers demo`'s closing lines run as printed, and it says whether its selection is applied."""

from __future__ import annotations

import os
import sys

from avengers_store.cli import demo


def test_applied_says_no_and_how_when_the_pool_is_wider():
    line = demo._applied(("a", "b"), ("a", "b", "c"), 2, ".venv/bin/avengers")
    assert line.startswith("applied:    no: the routes and the replay below use all 3 active")
    assert "`.venv/bin/avengers models select --budget 2 --apply`" in line


def test_applied_says_yes_when_the_pool_is_the_selection():
    assert demo._applied(("a", "b"), ("b", "a"), 2, "avengers").startswith("applied:    yes")


def test_command_name_is_the_path_run_when_avengers_is_not_on_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "avengers"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(sys, "argv", [str(script)])
    assert demo._command_name() == os.path.join("venv", "bin", "avengers")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert demo._command_name() == "avengers"
