"""Per-query outcomes of models: the bulk upsert everything writes through, and file imports.

A missing outcome means "not evaluated" and is never stored as 0: NaN and empty cells write no row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg

from avengers_store.arguments import check_name, shown_column
from avengers_store.errors import InputError
from avengers_store.ingest.datasets import get_dataset, query_lookup
from avengers_store.ingest.model_pool import model_ids
from avengers_store.ingest.readers import Table, read_table, row_label
from avengers_store.ingest.text_identity import content_hash
from avengers_store.store import connections, driver_errors
from avengers_store.store.queries import query
from avengers_store.store.refresh import refresh_profiles

SHOWN_OFFENDERS = 5
# Column names tried, in order, when the caller names none.
TEXT_COLUMNS = ("text", "query", "question")
ID_COLUMNS = ("query_id", "external_id", "id")
OPTIONAL_COLUMNS = {
    "samples": "samples",
    "answer": "answer",
    "tokens_in": "tokens_in",
    "tokens_out": "tokens_out",
    "cost": "cost",
    "latency_ms": "latency_ms",
}


@dataclass(frozen=True)
class OutcomeRow:
    query_id: int
    model_id: int
    score: float
    samples: int = 1
    answer: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost: float | None = None
    latency_ms: float | None = None
    source: str | None = None


def _check(row: OutcomeRow) -> None:
    where = f"outcome of query {row.query_id} for model {row.model_id}"
    try:
        score = float(row.score)
    except (TypeError, ValueError):
        score = math.nan
    if not 0.0 <= score <= 1.0:
        raise InputError(f"score must be in [0, 1], got {row.score!r}", location=where)
    if row.samples < 1:
        raise InputError(f"samples must be >= 1, got {row.samples!r}", location=where)


def _text(value: str | None) -> str:
    if value is None:
        return "\\N"
    return (
        str(value)
        .replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def _num(value, cast) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\\N"
    return repr(cast(value))


def upsert_outcomes(conn: psycopg.Connection, rows: Iterable[OutcomeRow]) -> int:
    """Insert or replace outcomes (key: query, model) inside the caller's transaction.

    Rows for the same query and model within one call are pooled first: the score is their mean
    weighted by samples, samples are summed (so merged duplicate queries count once). Profiles are
    not refreshed: call ``store.refresh.refresh_profiles(conn)`` once after the last batch. Returns the
    number of (query, model) rows written.
    """
    if conn.autocommit:
        # The staging table lives until commit: give it a transaction to live in.
        with conn.transaction():
            return _upsert(conn, rows)
    return _upsert(conn, rows)


def _upsert(conn: psycopg.Connection, rows: Iterable[OutcomeRow]) -> int:
    conn.execute(query("ingest", "stage_outcomes"))
    conn.execute("TRUNCATE avengers_outcomes_in")
    n_in = 0
    buffer: list[str] = []
    with (
        conn.cursor() as cur,
        cur.copy(
            """COPY avengers_outcomes_in (query_id, model_id, score, samples, answer, tokens_in,
                                      tokens_out, cost, latency_ms, source) FROM STDIN"""
        ) as copy,
    ):
        # COPY text lines built here: several times faster than write_row for 100k+ rows.
        for row in rows:
            _check(row)
            buffer.append(
                f"{int(row.query_id)}\t{int(row.model_id)}\t{float(row.score)!r}\t"
                f"{int(row.samples)}\t{_text(row.answer)}\t{_num(row.tokens_in, int)}\t"
                f"{_num(row.tokens_out, int)}\t{_num(row.cost, float)}\t"
                f"{_num(row.latency_ms, float)}\t{_text(row.source)}\n"
            )
            n_in += 1
            if len(buffer) >= 10_000:
                copy.write("".join(buffer))
                buffer.clear()
        if buffer:
            copy.write("".join(buffer))
    if n_in == 0:
        return 0
    try:
        written = conn.execute(query("ingest", "upsert_outcomes")).rowcount
    except psycopg.Error as exc:
        driver_errors.reraise(exc)
    conn.execute("TRUNCATE avengers_outcomes_in")
    return written


@dataclass(frozen=True)
class ImportReport:
    path: str
    dataset: str
    shape: str
    rows_read: int
    outcomes_written: int
    not_evaluated: int
    models: tuple[str, ...]
    models_created: tuple[str, ...] = field(default_factory=tuple)


def import_outcomes(
    path: str | Path,
    *,
    dataset: str,
    wide_prefix: str | None = None,
    id_col: str | None = None,
    text_col: str | None = None,
    model_col: str = "model",
    score_col: str = "score",
    answer_col: str | None = None,
    samples_col: str | None = None,
    tokens_in_col: str | None = None,
    tokens_out_col: str | None = None,
    cost_col: str | None = None,
    latency_col: str | None = None,
    create_models: bool = False,
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> ImportReport:
    """Import outcomes of the queries of ``dataset`` from a file, in one transaction.

    Long shape (default): one row per query and model, columns ``model`` and ``score`` plus
    optional ``answer``, ``samples``, ``tokens_in``, ``tokens_out``, ``cost``, ``latency_ms``
    (used when present; the ``*_col`` arguments rename them). Wide shape (``wide_prefix``): one
    row per query, one score column ``<prefix><model>`` per model.

    Queries are matched by ``id_col`` (the id given when the dataset was added) or ``text_col``
    (same normalised text); with neither, the first of ``text``/``query``/``question``, then
    ``query_id``/``external_id``/``id`` present in the file. Scores must be in [0, 1]; empty or
    NaN cells are "not evaluated" and write nothing. Re-importing replaces earlier outcomes of the
    same query and model. Profiles are refreshed in the same transaction.
    """
    if id_col and text_col:
        raise InputError("match by an id column or by a text column, not both", location="id_col")
    table = read_table(path)
    key_col, by_id = _key_column(table, id_col, text_col)
    source = f"import:{table.path}"
    with connections.connection(url, conn=conn) as c:
        ds = get_dataset(dataset, conn=c)
        lookup = query_lookup(c, ds.id, by_id=by_id)
        keys = table.labels(key_col) if by_id else table.values(key_col)
        query_ids = _resolve_queries(table, key_col, keys, lookup, by_id=by_id)
        before = set(r[0] for r in c.execute("SELECT name FROM avengers.models").fetchall())
        if wide_prefix is not None:
            rows, models, skipped = _wide_rows(
                table, wide_prefix, query_ids, c, create_models, source
            )
            shape = "wide"
        else:
            rows, models, skipped = _long_rows(
                table,
                query_ids,
                c,
                create_models,
                source,
                model_col=model_col,
                score_col=score_col,
                extra={
                    "answer": answer_col,
                    "samples": samples_col,
                    "tokens_in": tokens_in_col,
                    "tokens_out": tokens_out_col,
                    "cost": cost_col,
                    "latency_ms": latency_col,
                },
            )
            shape = "long"
        written = upsert_outcomes(c, rows)
        refresh_profiles(c)
    return ImportReport(
        path=str(table.path),
        dataset=dataset,
        shape=shape,
        rows_read=table.n_rows,
        outcomes_written=written,
        not_evaluated=skipped,
        models=tuple(models),
        models_created=tuple(m for m in models if m not in before),
    )


def _key_column(table: Table, id_col: str | None, text_col: str | None) -> tuple[str, bool]:
    if id_col:
        table.require(id_col)
        return id_col, True
    if text_col:
        table.require(text_col)
        return text_col, False
    for name in TEXT_COLUMNS:
        if name in table.columns:
            return name, False
    for name in ID_COLUMNS:
        if name in table.columns:
            return name, True
    raise InputError(
        "cannot tell which column names the query: pass `text_col` or `id_col`; the file has: "
        + ", ".join(repr(c) for c in table.columns),
        location=str(table.path),
    )


def _resolve_queries(
    table: Table,
    key_col: str,
    keys: Sequence,
    lookup: dict[str, tuple[int, ...] | None],
    *,
    by_id: bool,
) -> list[tuple[int, ...]]:
    """Per file row, the queries its outcomes belong to (two for a text in both splits)."""
    out: list[tuple[int, ...]] = []
    unknown: list[str] = []
    n_unknown = 0
    for i, key in enumerate(keys):
        if key is None or (isinstance(key, str) and not key.strip()):
            raise InputError("the query is missing", location=table.where(i, key_col))
        if not by_id and not isinstance(key, str):
            raise InputError(
                f"expected text, found {type(key).__name__} {key!r}",
                location=table.where(i, key_col),
            )
        lookup_key = key if by_id else content_hash(key)
        qid = lookup.get(lookup_key)
        if qid is None and lookup_key in lookup:
            raise InputError(
                f"id {key!r} names several queries of the dataset: match by text (`text_col`)",
                location=table.where(i, key_col),
            )
        if qid is None:
            n_unknown += 1
            if len(unknown) < SHOWN_OFFENDERS:
                shown = key if len(key) <= 60 else key[:57] + "..."
                unknown.append(f"{row_label(i)}: {shown!r}")
            out.append(())
        else:
            out.append(qid)
    if n_unknown:
        what = "id" if by_id else "text"
        raise InputError(
            f"{n_unknown} row(s) name a query (by {what} in column {key_col!r}) that is not in "
            f"the dataset: "
            + "; ".join(unknown)
            + (" ..." if n_unknown > len(unknown) else "")
            + ". Add the queries first (`avengers dataset add`) or check the dataset name",
            location=str(table.path),
        )
    return out


def _wide_rows(
    table: Table,
    prefix: str,
    query_ids: list[tuple[int, ...]],
    conn: psycopg.Connection,
    create_models: bool,
    source: str,
) -> tuple[list[OutcomeRow], list[str], int]:
    columns = [c for c in table.columns if c.startswith(prefix) and len(c) > len(prefix)]
    if not columns:
        raise InputError(
            f"no column starts with {prefix!r}; the file has: "
            + ", ".join(repr(c) for c in table.columns),
            location=str(table.path),
        )
    names = [c[len(prefix) :] for c in columns]
    for column, name in zip(columns, names, strict=True):
        check_name(name, "model", shown_column(table.path, column))
    scores = {c: table.unit_scores(c) for c in columns}
    ids = model_ids(conn, names, create=create_models)
    rows: list[OutcomeRow] = []
    skipped = 0
    for column, name in zip(columns, names, strict=True):
        values = scores[column]
        model_id = ids[name]
        for i, value in enumerate(values.tolist()):
            if math.isnan(value):
                skipped += 1
                continue
            rows.extend(OutcomeRow(q, model_id, value, source=source) for q in query_ids[i])
    return rows, names, skipped


def _long_rows(
    table: Table,
    query_ids: list[tuple[int, ...]],
    conn: psycopg.Connection,
    create_models: bool,
    source: str,
    *,
    model_col: str,
    score_col: str,
    extra: dict[str, str | None],
) -> tuple[list[OutcomeRow], list[str], int]:
    table.require(model_col, score_col)
    for key, column in extra.items():
        if column is not None:
            table.require(column)
        elif OPTIONAL_COLUMNS[key] in table.columns:
            extra[key] = OPTIONAL_COLUMNS[key]
    models = table.labels(model_col, required=True)
    for i, name in enumerate(models):
        check_name(name, "model", table.where(i, model_col))
    scores = table.unit_scores(score_col)
    answers = (
        [None if v is None else str(v) for v in table.values(extra["answer"])]
        if extra["answer"]
        else None
    )
    numeric = {
        key: table.numbers(extra[key])
        for key in ("samples", "tokens_in", "tokens_out", "cost", "latency_ms")
        if extra[key]
    }
    for key, values in numeric.items():
        bad = np.flatnonzero(values < (1 if key == "samples" else 0))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"{key} must be >= {1 if key == 'samples' else 0}, got {float(values[i])!r}",
                location=table.where(i, extra[key]),
            )
    names = list(dict.fromkeys(models))
    ids = model_ids(conn, names, create=create_models)

    def num(key: str, i: int, cast=float):
        values = numeric.get(key)
        if values is None or math.isnan(values[i]):
            return None
        return cast(values[i])

    rows: list[OutcomeRow] = []
    skipped = 0
    for i, score in enumerate(scores.tolist()):
        if math.isnan(score):
            skipped += 1
            continue
        rows.extend(
            OutcomeRow(
                query_id=query_id,
                model_id=ids[models[i]],
                score=score,
                samples=num("samples", i, int) or 1,
                answer=answers[i] if answers else None,
                tokens_in=num("tokens_in", i, int),
                tokens_out=num("tokens_out", i, int),
                cost=num("cost", i),
                latency_ms=num("latency_ms", i),
                source=source,
            )
            for query_id in query_ids[i]
        )
    return rows, names, skipped
