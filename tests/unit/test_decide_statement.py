"""Which statement routes one query: avengers.decide, prepared, where the connection keeps
prepared statements; avengers.decide_many (its plan kept by the server) where it does not."""

from __future__ import annotations

import numpy as np

from avengers_store.routing import Policy
from avengers_store.routing.decide import statement


def test_one_query_is_decide_prepared_or_decide_many_unprepared():
    vector = [0.5, 0.5, 0.0, 0.0]
    kept = statement([vector], Policy(), seeds=[7])
    assert "avengers.decide(" in kept.sql and kept.prepare is True
    plain = statement([vector], Policy(), seeds=[7], prepared=False)
    assert "avengers.decide_many(" in plain.sql and not plain.prepare
    assert plain.location == "query vector"
    # The same query and seed either way.
    assert np.array_equal(plain.params[0].matrix[0], np.asarray(vector, dtype=np.float32))
    assert plain.params[-1].values.tolist() == [7]
