"""Shared pieces of the benchmarks: a throwaway store, synthetic data, timers, percentiles and the
result line.

Where the store lives: ``AVENGERS_DATABASE_URL`` names a server (it needs pgvector and CREATEDB);
otherwise an embedded server under ``AVENGERS_BENCH_HOME`` (started if needed and left running,
so ``run_all.py`` starts one server for every script), else under a fresh temporary home that is
stopped and removed at exit. Each script works in a fresh database that it drops at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from avengers_store.calibration import embedding_spaces
from avengers_store.calibration.query_vectors import store_vectors
from avengers_store.ingest.outcomes import OutcomeRow, upsert_outcomes
from avengers_store.ingest.text_identity import content_hash
from avengers_store.store import config, connections, embedded
from avengers_store.testing import shared_data, throwaway_database, unit_rows
from avengers_store.testing.postgres import temporary_server

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
SHARED_DATA = shared_data()
DIM = 384
SPACE = "all-MiniLM-L6-v2"  # the default embedder's space; vectors here are synthetic
HOME_ENV = "AVENGERS_BENCH_HOME"


# --- where the store lives ---------------------------------------------------------------------


@contextmanager
def server() -> Iterator[str]:
    """Admin URL (database ``postgres``) of the server the benchmarks use."""
    configured = config.database_url()
    if configured is not None:
        yield make_conninfo(configured, dbname="postgres")
        return
    shared_home = os.environ.get(HOME_ENV)
    if shared_home:
        yield make_conninfo(embedded.start(Path(shared_home)), dbname="postgres")
        return
    with temporary_server("avengers-bench-") as url:
        yield url


@contextmanager
def fresh_database(name: str) -> Iterator[str]:
    """URL of a new database migrated to head (``schema.upgrade``), dropped afterwards."""
    with (
        server() as admin,
        throwaway_database(admin, migrate=True, prefix=f"avengers_bench_{name}") as url,
    ):
        yield url


def describe_server(url: str) -> dict[str, str]:
    with connections.connect(url, vector=False) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        vector = connections.pgvector_version(conn)[0]
    host = conninfo_to_dict(url).get("host") or ""
    return {
        "postgres": version,
        "pgvector": vector or "",
        "transport": "unix socket" if host.startswith("/") or not host else "tcp",
    }


# --- synthetic data ----------------------------------------------------------------------------


def blob_vectors(
    rng: np.random.Generator, centres: np.ndarray, n: int, spread: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, their blob) scattered around unit ``centres``, like embeddings of topics."""
    labels = rng.integers(0, len(centres), n)
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    step = 65536
    for start in range(0, n, step):
        lab = labels[start : start + step]
        noise = rng.standard_normal((len(lab), centres.shape[1]), dtype=np.float32)
        noise *= spread / np.sqrt(centres.shape[1])
        block = centres[lab] + noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + step] = block
    return out, labels


def active_space(conn: psycopg.Connection, embedder: str = SPACE, dim: int = DIM) -> int:
    # The default embedder's own params, so the client can rebuild it for text queries.
    space = embedding_spaces.get_or_create_space(
        conn, embedder, dim, {"max_seq_length": 128, "normalize": True}
    )
    return embedding_spaces.activate_space(conn, space.id).id


def add_queries(
    conn: psycopg.Connection, dataset: str, n: int, split: str = "calibration"
) -> np.ndarray:
    """A dataset of ``n`` synthetic queries (COPY; setup, not measured); their ids in order."""
    dataset_id = conn.execute(
        "INSERT INTO avengers.datasets (name, source) VALUES (%s, 'synthetic') RETURNING id",
        (dataset,),
    ).fetchone()[0]
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY avengers.queries (dataset_id, external_id, text, split, content_hash) FROM STDIN"
        ) as copy,
    ):
        buffer: list[str] = []
        for i in range(n):
            text = f"{dataset} synthetic query {i}"
            buffer.append(f"{dataset_id}\t{i}\t{text}\t{split}\t{content_hash(text)}\n")
            if len(buffer) >= 20_000:
                copy.write("".join(buffer))
                buffer.clear()
        copy.write("".join(buffer))
    rows = conn.execute(
        "SELECT id FROM avengers.queries WHERE dataset_id = %s ORDER BY id", (dataset_id,)
    ).fetchall()
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))


def add_models(conn: psycopg.Connection, n: int, prefix: str = "model") -> list[int]:
    rows = conn.execute(
        """INSERT INTO avengers.models (name, endpoint, served_name)
           SELECT format('%%s-%%s', %s::text, i), 'http://127.0.0.1:9/v1', format('m%%s', i)
           FROM generate_series(1, %s) AS i RETURNING id""",
        (prefix, n),
    ).fetchall()
    return [r[0] for r in rows]


def outcome_rows(
    rng: np.random.Generator,
    query_ids: np.ndarray,
    model_ids: Sequence[int],
    blobs: np.ndarray,
    source: str = "synthetic",
) -> Iterator[OutcomeRow]:
    """0/1 outcomes whose success rate depends on (blob, model), so profiles differ by cluster."""
    skill = rng.uniform(0.2, 0.9, (int(blobs.max()) + 1, len(model_ids)))
    for j, model_id in enumerate(model_ids):
        wins = rng.random(len(query_ids)) < skill[blobs, j]
        for qid, win in zip(query_ids.tolist(), wins.tolist(), strict=True):
            yield OutcomeRow(qid, model_id, 1.0 if win else 0.0, source=source)


@dataclass(frozen=True)
class SyntheticStore:
    space_id: int
    query_ids: np.ndarray
    vectors: np.ndarray
    blobs: np.ndarray
    centres: np.ndarray
    model_ids: list[int]


def build_store(
    conn: psycopg.Connection,
    *,
    n_queries: int,
    n_blobs: int,
    n_models: int = 8,
    scored: int | None = None,
    seed: int = 0,
    spread: float = 0.6,
) -> SyntheticStore:
    """Calibration queries with vectors around ``n_blobs`` topics, models, and outcomes of every
    model on the first ``scored`` queries (all by default). Inside the caller's transaction."""
    rng = np.random.default_rng(seed)
    space_id = active_space(conn)
    centres = unit_rows(rng, n_blobs, DIM)
    vectors, blobs = blob_vectors(rng, centres, n_queries, spread)
    query_ids = add_queries(conn, "calibration", n_queries)
    step = 100_000
    for start in range(0, n_queries, step):
        store_vectors(
            conn, space_id, query_ids[start : start + step], vectors[start : start + step]
        )
    model_ids = add_models(conn, n_models)
    scored = n_queries if scored is None else min(scored, n_queries)
    upsert_outcomes(conn, outcome_rows(rng, query_ids[:scored], model_ids, blobs[:scored]))
    return SyntheticStore(space_id, query_ids, vectors, blobs, centres, model_ids)


def install_clustering(
    conn: psycopg.Connection, space_id: int, query_ids: np.ndarray, part, *, algorithm: str
) -> int:
    """Store a computed partition (``fit.partition``) as a new version and serve it: the
    library's ``store_partition``, the write half of ``recluster`` without the fit."""
    from avengers_store.calibration.clusterings import store_partition

    stored = store_partition(
        conn, space_id, query_ids, part, algorithm=algorithm, seed=0, params={"synthetic": True}
    )
    return stored.id


def serve_k(
    conn: psycopg.Connection,
    store: SyntheticStore,
    k: int,
    seed: int = 0,
    *,
    fit: bool | None = None,
) -> tuple[int, str]:
    """Serve a k-cluster version of the calibration set. With ``fit`` (default: k <= 256) through
    the library's re-cluster; otherwise (where a full K-means fit takes minutes, or the clustering
    is only setup) through one K-means step from k calibration vectors as seeds, stored with the
    same write path and activated with the same CALL avengers.activate_clustering."""
    from avengers_store.calibration import fit as fitting
    from avengers_store.calibration import reclustering

    if fit if fit is not None else k <= 256:
        found = reclustering.recluster(k=k, seed=seed, conn=conn)
        return found.id, f"reclustering.recluster (kmeans, k={k})"
    rng = np.random.default_rng(seed + k)
    seeds = store.vectors[rng.choice(len(store.vectors), k, replace=False)]
    labels, _ = fitting.nearest_centroids(store.vectors, seeds)
    part = fitting.partition(store.vectors, labels)
    cid = install_clustering(conn, store.space_id, store.query_ids, part, algorithm="kmeans")
    return cid, "one K-means step from k calibration vectors + CALL avengers.activate_clustering"


# --- measuring ---------------------------------------------------------------------------------


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def percentile(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def summary_us(samples_s: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 / mean of durations given in seconds, in microseconds."""
    us = np.asarray(samples_s, dtype=np.float64) * 1e6
    return {
        "p50_us": round(float(np.percentile(us, 50)), 1),
        "p90_us": round(float(np.percentile(us, 90)), 1),
        "p99_us": round(float(np.percentile(us, 99)), 1),
        "mean_us": round(float(us.mean()), 1),
        "n": int(len(us)),
    }


def interleaved(
    fns: dict[str, Callable[[int], object]], n: int, warmup: int = 50
) -> dict[str, list[float]]:
    """Time each function ``n`` times, round-robin (a, b, c, a, b, c, ...), so that machine noise
    falls on all of them alike. ``fn(i)`` gets the iteration number."""
    for i in range(warmup):
        for fn in fns.values():
            fn(i)
    times: dict[str, list[float]] = {name: [] for name in fns}
    clock = time.perf_counter
    for i in range(n):
        for name, fn in fns.items():
            t0 = clock()
            fn(i)
            times[name].append(clock() - t0)
    return times


def settle(url: str) -> None:
    """VACUUM (ANALYZE) the freshly built store before timing: otherwise autovacuum starts on the
    new tables during the first minute of measurements and takes one of the two cores."""
    with connections.connect(url, autocommit=True, vector=False) as conn:
        conn.execute("VACUUM (ANALYZE)")


def freeze_setup_heap() -> None:
    """Move every object alive now out of the garbage collector's view (``gc.freeze``). Called
    after setup, before timing: the store build imports scikit-learn and the scripts keep
    thousands of prepared inputs, and each full collection the timed code triggers would
    otherwise rescan all of it (-20% on batch routing here) — a cost of this process's heap, not
    of the router."""
    gc.collect()
    gc.freeze()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# --- reporting ---------------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def environment() -> dict[str, object]:
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        # The store is built from the working tree: name library files that differ from HEAD.
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "status",
                "--porcelain",
                "--",
                "avengers_store",
                "sql",
                "migrations",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
        modified = sorted(line[3:] for line in dirty if line.strip())
    except (OSError, subprocess.SubprocessError):
        commit, modified = "", []
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "commit": commit,
        "uncommitted_library_files": modified,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg": load,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def say(line: str = "") -> None:
    print(line, flush=True)


def finish(name: str, figures: dict[str, object], *, write: bool = True) -> None:
    """Write ``bench/results/<name>.json`` and print the figures as the last line, one JSON
    object, so runs can be compared across commits."""
    record = {"bench": name, **figures, "env": environment()}
    line = json.dumps(record, sort_keys=False, default=_plain)
    if write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(
            json.dumps(record, indent=2, default=_plain) + "\n", encoding="utf-8"
        )
    sys.stdout.flush()
    print(line, flush=True)


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
