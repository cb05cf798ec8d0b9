"""Datasets and their queries: loading a file of queries, the seeded calibration/test split,
merging duplicate texts, listing and removing.

Identity of a query within a dataset and split is ``text_identity.content_hash`` of its text: rows
of one split with the same normalised text become one query that keeps the id and answer of its
first row; the file rows merged into it are listed in ``queries.metadata['merged_rows']``. A text
in both splits (benchmarks have a few) stays one query in each, so neither split loses a row; the
load reports how many texts that is (``DatasetSummary.in_both_splits``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import class_row

from avengers_store.arguments import as_string_map, check_name
from avengers_store.errors import InputError, NotFound
from avengers_store.ingest.readers import Table, read_table
from avengers_store.ingest.text_identity import content_hash
from avengers_store.store import connections
from avengers_store.store.queries import query
from avengers_store.store.refresh import refresh_profiles

TASK_TYPES = ("math", "multiple_choice", "code", "text")
TASK_TYPE_ALIASES = {"mc": "multiple_choice", "multiple-choice": "multiple_choice"}
SPLITS = ("calibration", "test")
SKIP = "skip"
DEFAULT_SPLIT_MAP = {"train": "calibration", "calibration": "calibration", "test": "test"}


@dataclass(frozen=True)
class Dataset:
    id: int
    name: str
    category: str | None
    is_ood: bool
    split_seed: int | None
    calibration_fraction: float | None
    source: str | None
    added_at: dt.datetime
    metadata: dict[str, Any]
    n_queries: int
    n_calibration: int
    n_test: int


@dataclass(frozen=True)
class DatasetSummary:
    """What one load did to one dataset."""

    name: str
    id: int
    is_ood: bool
    rows: int
    queries: int
    calibration: int
    test: int
    merged_rows: int
    in_both_splits: int = 0


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset to create from some rows of a file."""

    name: str
    rows: Sequence[int]
    is_ood: bool = False
    category: str | None = None
    split_seed: int | None = None
    calibration_fraction: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AddReport:
    path: str
    dataset: DatasetSummary
    rows_read: int
    rows_skipped: dict[str, int]
    seconds: float


def normalize_task_type(value: str, where: str) -> str:
    task = TASK_TYPE_ALIASES.get(value.strip().lower(), value.strip().lower())
    if task not in TASK_TYPES:
        raise InputError(
            f"unknown task type {value!r}: use one of {', '.join(TASK_TYPES)} (or mc)",
            location=where,
        )
    return task


def check_fraction(calibration_fraction: float) -> None:
    if not 0.0 < calibration_fraction < 1.0:
        raise InputError(
            f"calibration fraction must be between 0 and 1 (exclusive), got {calibration_fraction!r}",
            location="calibration_fraction",
        )


def check_split_map(split_map: Mapping[str, str], parameter: str = "split_map") -> dict[str, str]:
    """Each split value's target, lower-cased; a target other than calibration, test or skip is
    an ``InputError`` at ``parameter``."""
    out = {}
    for key, target in as_string_map(split_map, parameter).items():
        target = target.strip().lower()
        if target not in (*SPLITS, SKIP):
            raise InputError(
                f"{key}={target!r}: a split maps to calibration, test or skip", location=parameter
            )
        out[key] = target
    return out


def map_splits(
    table: Table, split_col: str, split_map: Mapping[str, str], option: str = "the split map"
) -> list[str]:
    """Per row: calibration, test or skip. A value not in the map is an error naming it."""
    values = table.labels(split_col)
    out: list[str] = []
    for i, value in enumerate(values):
        if value is None:
            raise InputError("the split is missing", location=table.where(i, split_col))
        target = split_map.get(value)
        if target is None:
            seen = sorted({v for v in values if v is not None})
            raise InputError(
                f"split value {value!r} is not in {option} ({_show_map(split_map)}); the column "
                f"holds {', '.join(seen)}: map each to calibration, test or skip",
                location=table.where(i, split_col),
            )
        out.append(target)
    return out


def _show_map(mapping: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in mapping.items()) or "empty"


def seeded_split(hashes: Sequence[str], calibration_fraction: float, seed: int) -> list[str]:
    """Split distinct queries: order by content hash, permute with ``default_rng(seed)``, take the
    first ``round(n * fraction)`` (at least one of each split when n >= 2) for calibration.
    The same seed and set of texts always give the same split, whatever the file order."""
    check_fraction(calibration_fraction)
    n = len(hashes)
    order = sorted(range(n), key=lambda i: hashes[i])
    n_cal = round(n * calibration_fraction)
    if n >= 2:
        n_cal = min(max(n_cal, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    out = ["test"] * n
    for position in perm[:n_cal]:
        out[order[position]] = "calibration"
    return out


@dataclass
class _Query:
    content_hash: str
    row: int
    text: str
    external_id: str | None
    answer: str | None
    task_type: str
    split: str | None
    merged_rows: list[int] = field(default_factory=list)
    merged_ids: list[str] = field(default_factory=list)


def ingest_queries(
    conn: psycopg.Connection,
    table: Table,
    specs: Sequence[DatasetSpec],
    *,
    texts: Sequence[str],
    task_types: Sequence[str],
    external_ids: Sequence[str | None] | None = None,
    answers: Sequence[str | None] | None = None,
    splits: Sequence[str] | None = None,
    replace: bool = False,
) -> tuple[list[DatasetSummary], np.ndarray]:
    """Create each dataset of ``specs`` with its rows' queries (COPY), in the caller's transaction.

    ``splits`` gives each file row's split; without it each dataset draws a seeded split (its
    spec's ``split_seed`` and ``calibration_fraction``). Returns the summaries and, per file row,
    the id of the query it became (-1 for rows of no dataset).
    """
    names = [s.name for s in specs]
    existing = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM avengers.datasets WHERE name = ANY(%s) ORDER BY name", (names,)
        )
    ]
    if existing and not replace:
        raise InputError(
            f"dataset(s) already in the store: {', '.join(existing)}. Remove them first "
            "(`avengers datasets remove NAME`) or pass `replace` to reload them"
        )
    if existing:
        conn.execute("DELETE FROM avengers.datasets WHERE name = ANY(%s)", (existing,))

    source_file = str(table.path)
    row_query = np.full(table.n_rows, -1, dtype=np.int64)
    summaries: list[DatasetSummary] = []
    for spec in specs:
        # Keyed by (split, text): a text in both splits is a query in each. Without a split
        # column the split is drawn per distinct text, so every text is one query.
        queries: dict[tuple[str | None, str], _Query] = {}
        for i in spec.rows:
            h = content_hash(texts[i])
            split = splits[i] if splits is not None else None
            q = queries.get((split, h))
            ext = external_ids[i] if external_ids is not None else None
            if q is None:
                queries[(split, h)] = _Query(
                    content_hash=h,
                    row=i,
                    text=texts[i],
                    external_id=ext,
                    answer=answers[i] if answers is not None else None,
                    task_type=task_types[i],
                    split=split,
                )
            else:
                q.merged_rows.append(i)
                if ext is not None and ext != q.external_id:
                    q.merged_ids.append(ext)
        merged = list(queries.values())
        if splits is None:
            drawn = seeded_split(
                [q.content_hash for q in merged],
                spec.calibration_fraction if spec.calibration_fraction is not None else 0.7,
                spec.split_seed if spec.split_seed is not None else 42,
            )
            for q, split in zip(merged, drawn, strict=True):
                q.split = split
        dataset_id = conn.execute(
            """INSERT INTO avengers.datasets
                 (name, category, is_ood, split_seed, calibration_fraction, source, metadata)
               VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb) RETURNING id""",
            (
                spec.name,
                spec.category,
                spec.is_ood,
                spec.split_seed if splits is None else None,
                spec.calibration_fraction if splits is None else None,
                source_file,
                json.dumps(
                    {
                        "source_file": source_file,
                        "source_file_rows": table.n_rows,
                        **dict(spec.options),
                    }
                ),
            ),
        ).fetchone()[0]
        _copy_queries(conn, dataset_id, merged, source_file)
        ids = {
            (split, h): qid
            for split, h, qid in conn.execute(
                "SELECT split, content_hash, id FROM avengers.queries WHERE dataset_id = %s",
                (dataset_id,),
            ).fetchall()
        }
        for q in merged:
            qid = ids[(q.split, q.content_hash)]
            row_query[q.row] = qid
            for i in q.merged_rows:
                row_query[i] = qid
        n_cal = sum(q.split == "calibration" for q in merged)
        calibration_texts = {q.content_hash for q in merged if q.split == "calibration"}
        summaries.append(
            DatasetSummary(
                name=spec.name,
                id=dataset_id,
                is_ood=spec.is_ood,
                rows=len(spec.rows),
                queries=len(merged),
                calibration=n_cal,
                test=len(merged) - n_cal,
                merged_rows=len(spec.rows) - len(merged),
                in_both_splits=sum(
                    q.split == "test" and q.content_hash in calibration_texts for q in merged
                ),
            )
        )
    return summaries, row_query


def _copy_queries(
    conn: psycopg.Connection, dataset_id: int, queries: Sequence[_Query], source_file: str
) -> None:
    with (
        conn.cursor() as cur,
        cur.copy(
            """COPY avengers.queries (dataset_id, external_id, text, reference_answer, task_type,
                                      split, content_hash, metadata) FROM STDIN"""
        ) as copy,
    ):
        for q in queries:
            meta: dict[str, Any] = {"source_file": source_file, "source_row": q.row}
            if q.merged_rows:
                meta["merged_rows"] = q.merged_rows
            if q.merged_ids:
                meta["merged_external_ids"] = q.merged_ids
            copy.write_row(
                (
                    dataset_id,
                    q.external_id,
                    q.text,
                    q.answer,
                    q.task_type,
                    q.split,
                    q.content_hash,
                    json.dumps(meta),
                )
            )


def add_dataset(
    name: str,
    path: str | Path,
    *,
    text_col: str = "text",
    id_col: str | None = None,
    answer_col: str | None = None,
    task_type: str = "text",
    category: str | None = None,
    ood: bool = False,
    split_col: str | None = None,
    split_map: Mapping[str, str] | None = None,
    calibration_fraction: float = 0.7,
    seed: int = 42,
    replace: bool = False,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> AddReport:
    """Load the queries of one file as dataset ``name``, in one transaction.

    The split comes from ``split_col`` mapped by ``split_map`` (values calibration, test or skip;
    default train/calibration -> calibration, test -> test), or, without a split column, is drawn
    per dataset with ``calibration_fraction`` and ``seed`` (recorded on the dataset). A bad row
    (missing text, wrong type, unmapped split) raises ``InputError`` naming the file, row and
    column, and nothing is written.
    """
    import time

    started = time.perf_counter()
    if not name or not name.strip():
        raise InputError("a dataset name must not be blank", location="name")
    check_name(name, "dataset", "name")
    split_map = as_string_map(split_map, "split_map")
    mapping = check_split_map(split_map or DEFAULT_SPLIT_MAP)
    task = normalize_task_type(task_type, "task_type")
    if split_col is None:
        check_fraction(calibration_fraction)
        if split_map:
            raise InputError("is only used with a split column", location="split_map")
    table = read_table(path, [text_col, id_col, answer_col, split_col])
    texts = table.texts(text_col)
    external_ids = table.labels(id_col) if id_col else None
    answers = (
        [None if v is None else str(v) for v in table.values(answer_col)] if answer_col else None
    )
    skipped: dict[str, int] = {}
    splits = None
    rows: list[int] = list(range(table.n_rows))
    options: dict[str, Any] = {"text_col": text_col}
    if split_col is not None:
        raw = table.labels(split_col)
        splits = map_splits(table, split_col, mapping)
        rows = [i for i, s in enumerate(splits) if s != SKIP]
        for i, s in enumerate(splits):
            if s == SKIP:
                key = f"{split_col}={raw[i]}"
                skipped[key] = skipped.get(key, 0) + 1
        options.update(split_col=split_col, split_map=mapping)
    if not rows:
        raise InputError("no rows left to load (every row was skipped)", location=str(table.path))
    spec = DatasetSpec(
        name=name,
        rows=rows,
        is_ood=ood,
        category=category,
        split_seed=None if split_col else seed,
        calibration_fraction=None if split_col else calibration_fraction,
        options=options,
    )
    with connections.connection(url, conn=conn) as c:
        summaries, _ = ingest_queries(
            c,
            table,
            [spec],
            texts=texts,
            task_types=[task] * table.n_rows,
            external_ids=external_ids,
            answers=answers,
            splits=splits,
            replace=replace,
        )
        if replace:
            refresh_profiles(c)
    return AddReport(
        path=str(table.path),
        dataset=summaries[0],
        rows_read=table.n_rows,
        rows_skipped=skipped,
        seconds=round(time.perf_counter() - started, 3),
    )


_DATASET_SQL = query("ingest", "dataset_summary")


def list_datasets(
    *, url: str | None = None, conn: psycopg.Connection | None = None
) -> list[Dataset]:
    with connections.connection(url, conn=conn) as c:
        cur = c.cursor(row_factory=class_row(Dataset))
        return cur.execute(_DATASET_SQL.format(where="")).fetchall()


def get_dataset(
    name: str, *, url: str | None = None, conn: psycopg.Connection | None = None
) -> Dataset:
    with connections.connection(url, conn=conn) as c:
        cur = c.cursor(row_factory=class_row(Dataset))
        found = cur.execute(_DATASET_SQL.format(where="WHERE d.name = %s"), (name,)).fetchone()
        if found is None:
            known = [r[0] for r in c.execute("SELECT name FROM avengers.datasets ORDER BY name")]
            raise NotFound(
                f"no dataset {name!r}; "
                + (f"known datasets: {', '.join(known)}" if known else "the store has none yet")
                + " (`avengers dataset add NAME FILE` loads one)"
            )
        return found


def remove_dataset(
    name: str, *, url: str | None = None, conn: psycopg.Connection | None = None
) -> int:
    """Delete a dataset with its queries, embeddings and outcomes; returns the queries deleted.
    Profiles are refreshed (clustered queries of the dataset no longer count)."""
    with connections.connection(url, conn=conn) as c:
        ds = get_dataset(name, conn=c)
        c.execute("DELETE FROM avengers.datasets WHERE id = %s", (ds.id,))
        refresh_profiles(c)
        return ds.n_queries


def query_lookup(
    conn: psycopg.Connection, dataset_id: int, *, by_id: bool
) -> dict[str, tuple[int, ...] | None]:
    """Map from content hash (or external id) to the ids of the queries it names in one
    dataset: one query, or two when the text is in both splits (an outcome belongs to the text,
    so both get it). Ids of rows merged into another query also resolve; an external id naming
    queries of different texts maps to None (ambiguous)."""
    if not by_id:
        out: dict[str, tuple[int, ...] | None] = {}
        for h, qid in conn.execute(
            "SELECT content_hash, id FROM avengers.queries WHERE dataset_id = %s ORDER BY id",
            (dataset_id,),
        ).fetchall():
            out[h] = (*(out.get(h) or ()), qid)
        return out
    named: dict[str, dict[int, str]] = {}
    rows = conn.execute(
        query("ingest", "query_keys"),
        (dataset_id,),
    ).fetchall()
    for qid, h, ext, merged in rows:
        for key in (ext, merged):
            if key is not None:
                named.setdefault(key, {})[qid] = h
    return {
        key: tuple(queries) if len(set(queries.values())) == 1 else None
        for key, queries in named.items()
    }
