"""The public imports users write keep working, whatever the layout underneath."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PUBLIC = {
    "avengers_store": [
        "AvengersClient",
        "AsyncAvengersClient",
        "AvengersError",
        "evaluate",
        "__version__",
    ],
    "avengers_store.errors": [
        "AvengersError",
        "ConfigurationError",
        "ConnectionFailed",
        "ExtensionMissing",
        "SchemaOutOfDate",
        "InputError",
        "NotFound",
        "StoreStateError",
        "EndpointError",
        "AllEndpointsFailed",
    ],
    "avengers_store.routing": [
        "AVENGERS",
        "PAPER",
        "METHODS",
        "Candidate",
        "RouteDecision",
        "RoutingMethod",
        "Policy",
        "decide",
        "routing_method",
    ],
    "avengers_store.calibration.clusterings": ["store_partition", "activate_clustering"],
    "avengers_store.calibration.fit": ["partition", "fit_labels", "fit_stratified"],
    "avengers_store.calibration.reclustering": ["recluster"],
    "avengers_store.answering.chat": ["ChatClient", "Endpoint"],
    "avengers_store.answering.async_chat": ["AsyncChatClient"],
    "avengers_store.answering.strategies": [
        "Answer",
        "answer",
        "answer_many",
        "aanswer",
        "answer_plan",
    ],
    "avengers_store.answering.prompts": ["PromptSet"],
    "avengers_store.evaluation.replay": ["evaluate"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import(module):
    loaded = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(loaded, name)]
    assert missing == []


def test_top_level_import_is_lazy_and_complete():
    # A fresh interpreter: importing the package alone must not pull in torch or the client.
    code = (
        "import sys, avengers_store as a; "
        "assert 'torch' not in sys.modules and 'avengers_store.client' not in sys.modules; "
        "from avengers_store import AvengersClient, evaluate; "
        "print(AvengersClient.__module__, evaluate.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["avengers_store.client", "avengers_store.evaluation.replay"]
