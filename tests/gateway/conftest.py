"""Fixtures of the gateway tests: a store whose two clusters are centred on real
all-MiniLM-L6-v2 embeddings of an arithmetic and a literature question, so the gateway embeds
and routes real text; three models (``alpha`` leads cluster 0, ``bravo`` cluster 1, ``charlie``
trails both) whose endpoints each test sets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from avengers_store.testing import set_endpoints, two_topic_store


@pytest.fixture(scope="module")
def store(db_url) -> str:
    return two_topic_store(
        db_url,
        {
            "alpha": [[1, 1, 1], [0, 0, 1]],
            "bravo": [[0, 1, 1], [1, 1, 1]],
            "charlie": [[0, 0, 1], [0, 0, 1]],
        },
    )


@pytest.fixture
def endpoints(store) -> Iterator[None]:
    yield
    set_endpoints(store, alpha=None, bravo=None, charlie=None)
