"""Loading a wide research table (one row per query, one outcome column per model) as datasets,
queries and outcomes in one transaction."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg

from avengers_store.arguments import as_list, as_string_map, check_name, shown_column
from avengers_store.errors import InputError
from avengers_store.ingest.datasets import (
    SKIP,
    DatasetSpec,
    DatasetSummary,
    check_fraction,
    check_split_map,
    ingest_queries,
    map_splits,
    normalize_task_type,
)
from avengers_store.ingest.model_pool import model_ids
from avengers_store.ingest.outcomes import OutcomeRow, upsert_outcomes
from avengers_store.ingest.readers import read_table
from avengers_store.store import connections
from avengers_store.store.refresh import refresh_profiles


@dataclass(frozen=True)
class LoadReport:
    path: str
    rows_read: int
    rows_loaded: int
    rows_skipped: dict[str, int]
    datasets: tuple[DatasetSummary, ...]
    queries_inserted: int
    merged_duplicates: int
    in_both_splits: int
    models: tuple[str, ...]
    models_created: tuple[str, ...]
    outcomes_written: int
    not_evaluated: int
    seconds: float

    @property
    def datasets_created(self) -> int:
        return len(self.datasets)


def load_table(
    path: str | Path,
    *,
    dataset_col: str,
    text_col: str,
    split_col: str | None = None,
    split_map: Mapping[str, str] | None = None,
    ood_splits: Sequence[str] = (),
    outcome_prefix: str,
    id_col: str | None = None,
    answer_col: str | None = None,
    task_type: str | None = None,
    task_type_col: str | None = None,
    task_type_map: Mapping[str, str] | None = None,
    dataset_task_types: Mapping[str, str] | None = None,
    calibration_fraction: float = 0.7,
    seed: int = 42,
    create_models: bool = True,
    replace: bool = False,
    dataset_prefix: str = "",
    url: str | None = None,
    conn: psycopg.Connection | None = None,
) -> LoadReport:
    """Datasets, queries and outcomes from one wide table, in one transaction.

    Each distinct value of ``dataset_col`` becomes a dataset. ``split_col`` values are mapped by
    ``split_map`` to calibration, test or skip (skipped rows are counted in the report; a value
    missing from the map is an error); without ``split_col`` each dataset draws a seeded split.
    A dataset whose rows all come from an ``ood_splits`` value is out-of-distribution.

    Task type of a row: ``dataset_task_types[dataset]``, else ``task_type_map[row's
    task_type_col]`` (or the value itself), else ``task_type``, else ``text``.

    Outcomes: every column ``<outcome_prefix><model>``; empty/NaN = not evaluated (no row),
    values outside [0, 1] are an error naming the row and column. Duplicate texts within a dataset
    and split become one query whose outcomes average its rows'; a text in both splits is a query
    in each, with its own row's outcomes. Profiles are refreshed before commit.

    ``dataset_prefix`` is put before every dataset name (e.g. ``llmrouter/``) so two tables that
    share benchmark names can live in one store; ``dataset_task_types`` keys are the column's
    values, without it. ``replace`` reloads datasets that already exist.
    """
    started = time.perf_counter()
    split_map = as_string_map(split_map, "split_map") or {}
    task_type_map = as_string_map(task_type_map, "task_type_map") or {}
    dataset_task_types = as_string_map(dataset_task_types, "dataset_task_types") or {}
    ood = set(as_list(ood_splits, "ood_splits", str) or ())
    if not outcome_prefix:
        raise InputError("must not be empty (e.g. 'acc|')", location="outcome_prefix")
    if split_col is None:
        check_fraction(calibration_fraction)
        if split_map:
            raise InputError("is only used with a split column", location="split_map")
    mapping = check_split_map(split_map)
    if split_col is not None and not mapping:
        raise InputError(
            "a split column needs a split map: say which of its values are calibration, test "
            "or skip",
            location="split_map",
        )
    unknown_ood = sorted(ood - set(mapping)) if split_col else sorted(ood)
    if unknown_ood:
        raise InputError(
            f"{', '.join(unknown_ood)}: not a split value of the split map"
            + ("" if split_col else " (there is no split column)"),
            location="ood_splits",
        )
    default_task = normalize_task_type(task_type, "task_type") if task_type else "text"
    per_value = {k: normalize_task_type(v, "task_type_map") for k, v in task_type_map.items()}
    per_dataset = {
        k: normalize_task_type(v, "dataset_task_types") for k, v in dataset_task_types.items()
    }
    if task_type_map and not task_type_col:
        raise InputError("is only used with a task type column", location="task_type_map")

    probe = read_table(path, [dataset_col])
    outcome_cols = [
        c for c in probe.columns if c.startswith(outcome_prefix) and len(c) > len(outcome_prefix)
    ]
    if not outcome_cols:
        raise InputError(
            f"no column starts with the outcome prefix {outcome_prefix!r}; the file has: "
            + ", ".join(repr(c) for c in probe.columns),
            location=str(probe.path),
        )
    table = read_table(
        path, [dataset_col, text_col, split_col, id_col, answer_col, task_type_col, *outcome_cols]
    )
    n = table.n_rows
    names = table.labels(dataset_col, required=True)
    for i, name in enumerate(names):
        check_name(dataset_prefix + name, "dataset", table.where(i, dataset_col))
    texts = table.texts(text_col)
    unknown_ds = sorted(set(per_dataset) - set(names))
    if unknown_ds:
        raise InputError(
            f"names dataset(s) not in column {dataset_col!r} of {table.path}: "
            f"{', '.join(unknown_ds)}; the file has {', '.join(sorted(set(names)))}",
            location="dataset_task_types",
        )

    # Splits and skipped rows.
    skipped: dict[str, int] = {}
    splits = None
    raw_splits: list[str | None] = [None] * n
    if split_col is not None:
        raw_splits = table.labels(split_col)
        splits = map_splits(table, split_col, mapping)
        for i, s in enumerate(splits):
            if s == SKIP:
                key = f"{split_col}={raw_splits[i]}"
                skipped[key] = skipped.get(key, 0) + 1

    # Task types per row.
    row_values = table.labels(task_type_col) if task_type_col else [None] * n
    value_task: dict[str | None, str] = {}
    task_types: list[str] = []
    for i in range(n):
        task = per_dataset.get(names[i])
        if task is None:
            value = row_values[i]
            if value is None:
                task = default_task
            else:
                task = value_task.get(value)
                if task is None:
                    task = (
                        per_value[value]
                        if value in per_value
                        else normalize_task_type(value, table.where(i, task_type_col))
                    )
                    value_task[value] = task
        task_types.append(task)

    # Outcome cells: validated before anything is written.
    scores = {c: table.unit_scores(c, "outcome") for c in outcome_cols}

    rows_by_dataset: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        if splits is None or splits[i] != SKIP:
            rows_by_dataset.setdefault(dataset_prefix + name, []).append(i)
    if not rows_by_dataset:
        raise InputError("no rows left to load (every row was skipped)", location=str(table.path))
    options = {
        "loader": "load-table",
        "dataset_col": dataset_col,
        "text_col": text_col,
        "outcome_prefix": outcome_prefix,
        **({"split_col": split_col, "split_map": mapping} if split_col else {}),
    }
    specs = [
        DatasetSpec(
            name=name,
            rows=rows,
            is_ood=bool(ood) and all(raw_splits[i] in ood for i in rows),
            split_seed=None if split_col else seed,
            calibration_fraction=None if split_col else calibration_fraction,
            options=options,
        )
        for name, rows in rows_by_dataset.items()
    ]
    model_names = [c[len(outcome_prefix) :] for c in outcome_cols]
    for column, model in zip(outcome_cols, model_names, strict=True):
        check_name(model, "model", shown_column(table.path, column))
    answers = (
        [None if v is None else str(v) for v in table.values(answer_col)] if answer_col else None
    )
    external_ids = table.labels(id_col) if id_col else None
    source = f"load-table:{table.path}"

    with connections.connection(url, conn=conn) as c:
        before = {r[0] for r in c.execute("SELECT name FROM avengers.models")}
        ids = model_ids(c, model_names, create=create_models)
        summaries, row_query = ingest_queries(
            c,
            table,
            specs,
            texts=texts,
            task_types=task_types,
            external_ids=external_ids,
            answers=answers,
            splits=splits,
            replace=replace,
        )
        kept = np.flatnonzero(row_query >= 0)
        not_evaluated = 0

        def outcome_rows():
            nonlocal not_evaluated
            for column, name in zip(outcome_cols, model_names, strict=True):
                model_id = ids[name]
                values = scores[column]
                for i in kept.tolist():
                    value = float(values[i])
                    if math.isnan(value):
                        not_evaluated += 1
                        continue
                    yield OutcomeRow(int(row_query[i]), model_id, value, source=source)

        written = upsert_outcomes(c, outcome_rows())
        refresh_profiles(c)
    return LoadReport(
        path=str(table.path),
        rows_read=n,
        rows_loaded=int(kept.size),
        rows_skipped=skipped,
        datasets=tuple(summaries),
        queries_inserted=sum(s.queries for s in summaries),
        merged_duplicates=sum(s.merged_rows for s in summaries),
        in_both_splits=sum(s.in_both_splits for s in summaries),
        models=tuple(model_names),
        models_created=tuple(m for m in model_names if m not in before),
        outcomes_written=written,
        not_evaluated=not_evaluated,
        seconds=round(time.perf_counter() - started, 3),
    )
