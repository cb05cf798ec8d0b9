"""The library takes typed values: lists and mappings, never ``"a,b"`` or ``"a=b,c=d"``. A value
of the wrong shape is an InputError naming the parameter, raised before any database is used."""

from __future__ import annotations

import numpy as np
import pytest

from avengers_store.arguments import as_list, as_string_map
from avengers_store.client import AvengersClient
from avengers_store.errors import InputError
from avengers_store.evaluation.replay import evaluate
from avengers_store.ingest.datasets import add_dataset
from avengers_store.ingest.model_pool import set_active
from avengers_store.ingest.wide_tables import load_table


@pytest.fixture(autouse=True)
def no_database(monkeypatch):
    # A URL nothing answers: a check that ran after connecting would fail differently.
    monkeypatch.setenv("AVENGERS_DATABASE_URL", "postgresql://127.0.0.1:1/nothing")


def test_as_list_takes_any_sequence_of_the_kind():
    assert as_list((1, 2), "seeds", int) == [1, 2]
    assert as_list(np.array([3, 4]), "seeds", int) == [3, 4]
    assert as_list(iter(["a", "b"]), "names", str) == ["a", "b"]
    assert as_list([1, 0.5], "fractions", float) == [1.0, 0.5]
    assert as_list(None, "seeds", int) is None
    assert as_list([], "seeds", int) == []


@pytest.mark.parametrize(
    "value, kind, message",
    [
        ("42,999", int, "expected a list of integers, got str '42,999'"),
        ("alpha", str, "expected a list of strings, got str 'alpha'"),
        ({"a": 1}, int, "expected a list of integers, got dict"),
        (7, int, "expected a list of integers, got int 7"),
        (["42"], int, "got str '42' in it"),
        ([True], int, "got bool True in it"),
        ([1, "x"], float, "got str 'x' in it"),
        ([b"a"], str, "got bytes b'a' in it"),
    ],
)
def test_as_list_refuses_other_shapes(value, kind, message):
    with pytest.raises(InputError, match=message) as err:
        as_list(value, "param", kind)
    assert err.value.location == "param"


def test_as_string_map():
    assert as_string_map({"train": "calibration"}, "split_map") == {"train": "calibration"}
    assert as_string_map(None, "split_map") is None
    with pytest.raises(InputError, match="got str 'train=calibration'") as err:
        as_string_map("train=calibration", "split_map")
    assert err.value.location == "split_map"
    with pytest.raises(InputError, match="got 'train': 1") as err:
        as_string_map({"train": 1}, "split_map")
    assert err.value.location == "split_map"


WIDE = {"dataset_col": "bench", "text_col": "q", "outcome_prefix": "acc|"}


@pytest.mark.parametrize(
    "call, location",
    [
        (lambda: load_table("t.csv", **WIDE, split_col="s", split_map="train=calibration"),
         "split_map"),
        (lambda: load_table("t.csv", **WIDE, ood_splits="ood_test"), "ood_splits"),
        (lambda: load_table("t.csv", **WIDE, task_type_map="mc=multiple_choice"),
         "task_type_map"),
        (lambda: load_table("t.csv", **WIDE, dataset_task_types="gsm8k=math"),
         "dataset_task_types"),
        (lambda: add_dataset("d", "t.csv", split_col="s", split_map="train=calibration"),
         "split_map"),
        (lambda: evaluate(seeds="42,999"), "seeds"),
        (lambda: evaluate(seeds=(1,), datasets="alpha"), "datasets"),
        (lambda: evaluate(seeds=(1,), ood_macro="mbpp,ceval"), "ood_macro"),
        (lambda: evaluate(seeds=(1,), sweep_k="1,4,16"), "sweep_k"),
        (lambda: evaluate(seeds=(1,), algorithms="kmeans,ward"), "algorithms"),
        (lambda: evaluate(seeds=(1,), budgets="1,2"), "budgets"),
        (lambda: evaluate(seeds=(1,), calibration_fractions="0.5"), "calibration_fractions"),
        (lambda: evaluate(seeds=(1,), sweep_seeds="1,2"), "sweep_seeds"),
        (lambda: set_active("qwen", True), "names"),
        (lambda: AvengersClient().route_many("Who wrote Hamlet?"), "queries"),
        (lambda: AvengersClient().ask_many("What is 7*6?"), "texts"),
    ],
)  # fmt: skip
def test_a_string_where_a_list_or_mapping_belongs_names_the_parameter(call, location):
    with pytest.raises(InputError) as err:
        call()
    assert err.value.location == location


@pytest.mark.parametrize(
    "kwargs, location, message",
    [
        ({"split_map": {"train": "calibration"}}, "split_map", "only used with a split column"),
        ({"split_col": "s"}, "split_map", "a split column needs a split map"),
        ({"split_col": "s", "split_map": {"train": "dev"}}, "split_map", "train='dev'"),
        ({"split_col": "s", "split_map": {"t": "test"}, "ood_splits": ["x"]}, "ood_splits",
         "x: not a split value of the split map"),
        ({"task_type_map": {"a": "math"}}, "task_type_map", "only used with a task type column"),
        ({"task_type_col": "t", "task_type_map": {"a": "poem"}}, "task_type_map",
         "unknown task type 'poem'"),
        ({"outcome_prefix": ""}, "outcome_prefix", "must not be empty"),
        ({"calibration_fraction": 1.5}, "calibration_fraction", "between 0 and 1"),
    ],
)  # fmt: skip
def test_load_table_option_errors_name_parameters(kwargs, location, message):
    with pytest.raises(InputError, match=message) as err:
        load_table("t.csv", **{**WIDE, **kwargs})
    assert err.value.location == location
