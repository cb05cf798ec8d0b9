"""Route-log rows the store could not take, kept on local disk until it can.

One append-only file per process (``route-log-<pid>-<tag>.jsonl`` in the spool directory), one
JSON row per line, each batch written and ``fsync``'d before the rows count as kept. The process
holds an exclusive ``flock`` on its own file while it runs, so a file whose lock can be taken
belongs to a process that has exited (or was killed): its rows are replayed by the next process
that looks, and the file removed. Replaying is idempotent (``avengers.log_routes`` skips a route id
already stored), so a row written to the store and to the spool alike is stored once.

The spool is bounded: past ``max_bytes`` an ``append`` raises ``SpoolFull`` and keeps nothing of
that batch. A line cut short by a crash mid-write is skipped on replay (and counted): the batch
it belonged to was never reported kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from avengers_store.answering import route_log
from avengers_store.errors import AvengersError
from avengers_store.store import config

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
SPOOL_DIR_NAME = "route-log-spool"
_PREFIX = "route-log-"


def default_directory() -> Path:
    """``$AVENGERS_HOME/route-log-spool``."""
    return config.home() / SPOOL_DIR_NAME


class SpoolFull(AvengersError):
    """The spool holds ``max_bytes`` already: the rows were not kept."""


def encode(row: Mapping[str, Any]) -> bytes:
    """One route-log row (``route_log.entry``) as a line of JSON."""
    out = route_log.plain(dict(row))
    # Kept with the time it was answered, not the time it is replayed.
    out["at"] = out.get("at") or datetime.now(UTC).isoformat()
    return json.dumps(out, separators=(",", ":")).encode("utf-8") + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """The row ``encode`` wrote, ready for ``route_log.statement``."""
    row = json.loads(line)
    if not isinstance(row, dict) or "route_id" not in row:
        raise ValueError("not a route-log row")
    uuid.UUID(str(row["route_id"]))  # a torn line may still parse: its id must be whole
    return row


class RouteLogSpool:
    """This process's spool file in ``directory`` (created on first use, mode 0700), at most
    ``max_bytes`` long; ``bytes`` and ``rows`` say what it holds now."""

    def __init__(self, directory: Path | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.path = self.directory / f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._fd: int | None = None
        self.bytes = 0
        self.rows = 0
        self.torn = 0  # lines skipped on replay (cut short by a crash)
        self._refused = False

    @property
    def full(self) -> bool:
        """No room left: the last rows offered did not fit (until the spool is replayed)."""
        return self._refused or self.bytes >= self.max_bytes

    def _open(self) -> int:
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)  # ours while this process lives
            self._fd = fd
        return self._fd

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write ``rows`` at the end of the file and fsync it: kept once this returns."""
        data = b"".join(encode(r) for r in rows)
        if self.bytes + len(data) > self.max_bytes:
            self._refused = True
            raise SpoolFull(
                f"the route-log spool {self.path} holds {self.bytes:,} of {self.max_bytes:,} "
                f"bytes: {len(rows)} row(s) could not be kept"
            )
        fd = self._open()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        self.bytes += len(data)
        self.rows += len(rows)

    def pending(self) -> list[Path]:
        """Spool files with rows to replay: this process's own (if it holds any) and those of
        processes that have exited."""
        found = [self.path] if self.rows else []
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.glob(f"{_PREFIX}*.jsonl")):
            if path != self.path and self._orphaned(path):
                found.append(path)
        return found

    @staticmethod
    def _orphaned(path: Path) -> bool:
        """Whether no live process holds ``path`` (its writer exited or was killed)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # releases the probe's lock too
        return True

    def read(self, path: Path) -> list[dict[str, Any]]:
        """The rows in ``path``; lines that do not decode (cut by a crash) are skipped."""
        rows = []
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(decode(line))
                except (ValueError, KeyError, TypeError) as exc:
                    self.torn += 1
                    log.warning("route-log spool %s line %d skipped: %s", path, number, exc)
        return rows

    def replayed(self, path: Path) -> None:
        """``path``'s rows are in the store: empty this process's file, remove another's."""
        if path == self.path:
            if self._fd is not None:
                os.ftruncate(self._fd, 0)
                os.fsync(self._fd)
            self.bytes = 0
            self.rows = 0
            self._refused = False
            return
        path.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the file; an empty one is removed, one with rows stays for the next start."""
        if self._fd is None:
            return
        if not self.rows:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None
