"""``load_table``: a wide table as datasets, queries and outcomes in one transaction."""

from __future__ import annotations

import json
import math

import duckdb
import pytest
from avengers_store.cli.main import cli
from click.testing import CliRunner

from avengers_store.errors import InputError, NotFound
from avengers_store.ingest import datasets
from avengers_store.ingest.wide_tables import load_table
from avengers_store.store import connections
from avengers_store.testing import ROUTERDC, table_counts, write_rows

NAN = float("nan")
ROWS = [
    # bench, split, question, acc|a, acc|b
    ("alg", "train", "Solve x+1=2.", 1.0, 0.0),
    ("alg", "train", "Solve x+2=5.", 0.5, NAN),
    ("alg", "test", "Solve x+3=9.", 0.0, 1.0),
    ("alg", "train", "Solve  x+1=2. ", 0.0, 1.0),  # duplicate of row 0 after normalising
    ("alg", "extra", "Unused row.", 1.0, 1.0),
    ("poem", "train", "Write a haiku.", 0.3, 0.9),
    ("poem", "test", "Write a limerick.", NAN, NAN),
    ("ood", "ood_test", "Unseen one.", 1.0, 0.0),
    ("ood", "ood_test", "Unseen two.", 0.0, 0.0),
]
COLUMNS = ("bench", "split", "question", "acc|a", "acc|b")
SPLIT_MAP = {"train": "calibration", "test": "test", "ood_test": "test", "extra": "skip"}
SPLIT_MAP_FLAG = "train=calibration,test=test,ood_test=test,extra=skip"  # the CLI's form


def table_rows(rows=ROWS) -> list[dict]:
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows]


def outcomes_by_text(url: str, dataset: str) -> dict[tuple[str, str], tuple[float, int]]:
    with connections.connect(url) as c:
        rows = c.execute(
            """SELECT q.text, m.name, o.score, o.samples FROM avengers.outcomes o
               JOIN avengers.queries q ON q.id = o.query_id
               JOIN avengers.datasets d ON d.id = q.dataset_id
               JOIN avengers.models m ON m.id = o.model_id WHERE d.name = %s""",
            (dataset,),
        ).fetchall()
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def test_load_wide_table(db_url, tmp_path):
    path = write_rows(tmp_path / "wide.parquet", table_rows())
    report = load_table(
        path,
        dataset_col="bench",
        text_col="question",
        split_col="split",
        split_map=SPLIT_MAP,
        ood_splits=["ood_test"],
        outcome_prefix="acc|",
        task_type="text",
        dataset_task_types={"alg": "math"},
        url=db_url,
    )
    assert report.rows_read == 9 and report.rows_skipped == {"split=extra": 1}
    assert report.datasets_created == 3 and report.queries_inserted == 7
    assert report.merged_duplicates == 1
    assert report.models_created == ("a", "b")
    # 8 loaded rows x 2 models = 16 cells, 3 NaN; rows 0 and 3 pool into one query per model.
    assert report.not_evaluated == 3 and report.outcomes_written == 11
    by_name = {d.name: d for d in report.datasets}
    assert by_name["ood"].is_ood and not by_name["alg"].is_ood and not by_name["poem"].is_ood
    assert (by_name["alg"].calibration, by_name["alg"].test) == (2, 1)

    alg = outcomes_by_text(db_url, "alg")
    assert alg[("Solve x+1=2.", "a")] == (0.5, 2)  # mean of 1.0 and 0.0, samples summed
    assert alg[("Solve x+1=2.", "b")] == (0.5, 2)
    assert alg[("Solve x+2=5.", "a")] == (0.5, 1)
    assert ("Solve x+2=5.", "b") not in alg  # NaN: not evaluated, not 0
    assert outcomes_by_text(db_url, "poem") == {
        ("Write a haiku.", "a"): (0.3, 1),
        ("Write a haiku.", "b"): (0.9, 1),
    }
    with connections.connect(db_url) as c:
        tasks = dict(
            c.execute(
                """SELECT d.name, array_agg(DISTINCT q.task_type) FROM avengers.queries q
                   JOIN avengers.datasets d ON d.id = q.dataset_id GROUP BY d.name"""
            ).fetchall()
        )
        meta = c.execute(
            "SELECT metadata FROM avengers.queries WHERE text = 'Solve x+1=2.'"
        ).fetchone()[0]
    assert tasks == {"alg": ["math"], "poem": ["text"], "ood": ["text"]}
    assert meta == {"source_file": str(path.resolve()), "source_row": 0, "merged_rows": [3]}
    ds = datasets.get_dataset("alg", url=db_url)
    assert ds.metadata["source_file_rows"] == 9 and ds.metadata["source_file"] == str(
        path.resolve()
    )

    with pytest.raises(InputError, match="already in the store"):
        load_table(path, dataset_col="bench", text_col="question", split_col="split",
                   split_map=SPLIT_MAP, outcome_prefix="acc|", url=db_url)  # fmt: skip
    again = load_table(path, dataset_col="bench", text_col="question", split_col="split",
                       split_map=SPLIT_MAP, outcome_prefix="acc|", dataset_prefix="v2/",
                       url=db_url)  # fmt: skip
    assert {d.name for d in again.datasets} == {"v2/alg", "v2/poem", "v2/ood"}
    assert again.models_created == ()


@pytest.mark.parametrize(
    "cell, message",
    [
        ({"acc|b": 1.5}, r"data row 6 column 'acc\|b': outcome 1.5 is outside \[0, 1\]"),
        ({"split": "dev"}, r"data row 6 column 'split': split value 'dev' is not in the split map"),
        ({"question": None}, r"data row 6 column 'question': text is missing"),
    ],
)
def test_one_bad_row_changes_nothing(db_url, tmp_path, cell, message):
    rows = table_rows()
    rows[5].update(cell)
    path = write_rows(tmp_path / "bad.jsonl", rows)
    before = table_counts(db_url)
    with pytest.raises(InputError, match=message) as err:
        load_table(path, dataset_col="bench", text_col="question", split_col="split",
                   split_map=SPLIT_MAP, outcome_prefix="acc|", dataset_prefix="bad/",
                   url=db_url)  # fmt: skip
    assert str(path.resolve()) in str(err.value)
    assert table_counts(db_url) == before


def test_unterminated_quote_in_a_large_csv_loads_nothing(db_url, tmp_path):
    path = tmp_path / "big.csv"
    lines = [f"alg,train,Question number {i}?,1,0\n" for i in range(30_000)]
    lines.insert(20_000, 'alg,train,"Where does this quote end?,1,0\n')
    path.write_text("bench,split,question,acc|a,acc|b\n" + "".join(lines))
    before = table_counts(db_url)
    with pytest.raises(InputError, match=r"data row 20001 \(line 20002\): .*quote") as err:
        load_table(path, dataset_col="bench", text_col="question", split_col="split",
                   split_map=SPLIT_MAP, outcome_prefix="acc|", dataset_prefix="big/",
                   url=db_url)  # fmt: skip
    assert str(err.value).startswith(str(path.resolve()))
    assert table_counts(db_url) == before


def test_a_nul_character_loads_nothing(db_url, tmp_path):
    rows = table_rows()
    rows[2]["question"] = "Solve x+3=9.\x00"
    path = write_rows(tmp_path / "nul.parquet", rows)
    before = table_counts(db_url)
    with pytest.raises(InputError, match=r"data row 3 column 'question': .*NUL"):
        load_table(path, dataset_col="bench", text_col="question", split_col="split",
                   split_map=SPLIT_MAP, outcome_prefix="acc|", dataset_prefix="nul/",
                   url=db_url)  # fmt: skip
    assert table_counts(db_url) == before


def test_seeded_split_without_split_column_and_option_errors(db_url, tmp_path):
    rows = [{"ds": "s", "q": f"query {i}", "score|m": i / 20} for i in range(20)]
    path = write_rows(tmp_path / "nosplit.csv", rows)
    with pytest.raises(NotFound, match="unknown model.*'m'"):
        load_table(path, dataset_col="ds", text_col="q", outcome_prefix="score|",
                   create_models=False, url=db_url)  # fmt: skip
    report = load_table(path, dataset_col="ds", text_col="q", outcome_prefix="score|",
                        calibration_fraction=0.75, seed=3, url=db_url)  # fmt: skip
    assert (report.datasets[0].calibration, report.datasets[0].test) == (15, 5)
    ds = datasets.get_dataset("s", url=db_url)
    assert (ds.split_seed, ds.calibration_fraction) == (3, 0.75)
    for kwargs, message, location in [
        ({"outcome_prefix": "nope|"}, "no column starts with", str(path.resolve())),
        ({"outcome_prefix": "score|", "ood_splits": ["ood"]}, "ood: not a split value", "ood_splits"),
        ({"outcome_prefix": "score|", "dataset_task_types": {"zzz": "math"}},
         "not in column 'ds'", "dataset_task_types"),
        ({"outcome_prefix": "score|", "task_type": "poetry"}, "unknown task type", "task_type"),
    ]:  # fmt: skip
        with pytest.raises(InputError, match=message) as err:
            load_table(path, dataset_col="ds", text_col="q", url=db_url, **kwargs)
        assert err.value.location == location


def test_cli_load_table(cli_env, tmp_path):
    path = write_rows(tmp_path / "cli.parquet", table_rows())
    result = CliRunner().invoke(
        cli,
        ["load-table", str(path), "--dataset-col", "bench", "--text-col", "question",
         "--split-col", "split", "--split-map", SPLIT_MAP_FLAG, "--ood-split", "ood_test",
         "--outcome-prefix", "acc|", "--dataset-task-type", "alg=math,poem=text",
         "--dataset-prefix", "cli/", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["queries_inserted"] == 7 and report["outcomes_written"] == 11
    text = CliRunner().invoke(
        cli,
        ["load-table", str(path), "--dataset-col", "bench", "--text-col", "question",
         "--split-col", "split", "--split-map", SPLIT_MAP_FLAG, "--outcome-prefix", "acc|",
         "--dataset-prefix", "cli2/"],
    )  # fmt: skip
    assert "1 duplicate rows merged" in text.output and "skipped 1 with split=extra" in text.output
    assert "Example:" in CliRunner().invoke(cli, ["load-table", "--help"]).output


@pytest.mark.skipif(not (ROUTERDC / "routerdc_7models.parquet").exists(), reason="no shared data")
def test_real_routerdc_slice(db_url, tmp_path):
    path = tmp_path / "routerdc_slice.parquet"
    source = ROUTERDC / "routerdc_7models.parquet"
    duckdb.sql(
        f"COPY (SELECT * FROM '{source}' WHERE benchmark IN ('humaneval', 'mbpp')) "
        f"TO '{path}' (FORMAT parquet)"
    )
    report = load_table(
        path,
        dataset_col="benchmark",
        text_col="question",
        split_col="split",
        split_map={
            "train": "calibration",
            "test": "test",
            "ood_test": "test",
            "extra_train": "skip",
            "extra_test": "skip",
        },  # fmt: skip
        ood_splits=["ood_test"],
        outcome_prefix="acc|",
        dataset_task_types={"humaneval": "code", "mbpp": "code"},
        dataset_prefix="real/",
        url=db_url,
    )
    by_name = {d.name: d for d in report.datasets}
    assert (by_name["real/humaneval"].calibration, by_name["real/humaneval"].test) == (115, 49)
    assert by_name["real/mbpp"].is_ood and by_name["real/mbpp"].calibration == 0
    assert by_name["real/mbpp"].queries + by_name["real/mbpp"].merged_rows == 500
    assert report.outcomes_written == 7 * report.queries_inserted
    assert len(report.models) == 7 and not math.isnan(report.seconds)
