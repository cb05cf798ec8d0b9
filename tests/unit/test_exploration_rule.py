"""Targeted exploration: who is plausible, what the draw chooses, and propensities that are the
exact frequencies of the choices."""

from __future__ import annotations

import math

import pytest

from avengers_store.errors import InputError
from avengers_store.production import exploration_rule as rule

# Leader 0.70 on 200 outcomes; 0.68 on 150 is plausible, 0.40 on 300 is not, 0.55 on 3 is.
MEANS = [0.70, 0.68, 0.40, 0.55]
COUNTS = [200.0, 150.0, 300.0, 3.0]


def test_plausible_candidates_are_those_that_could_beat_the_leader():
    assert rule.plausible(MEANS, COUNTS, 0.2) == (1, 3)
    # The overlap is the chance of beating the leader: 0.68 vs 0.70 is about 0.34.
    sd = math.hypot(rule.posterior_sd(0.68, 150), rule.posterior_sd(0.70, 200))
    chance = 0.5 * math.erfc((0.70 - 0.68) / sd / math.sqrt(2))
    assert rule.plausible(MEANS[:2], COUNTS[:2], chance - 1e-6) == (1,)
    assert rule.plausible(MEANS[:2], COUNTS[:2], chance + 1e-6) == ()
    assert rule.plausible(MEANS, COUNTS, 0.0) == (1, 2, 3)  # everyone, at overlap 0
    assert rule.plausible(MEANS[:1], COUNTS[:1]) == ()


def test_propensities_are_the_frequencies_of_the_draw():
    share, overlap = 0.1, 0.2
    grid = 20_000
    counts = [0] * len(MEANS)
    for i in range(grid):
        counts[rule.choose(MEANS, COUNTS, (i + 0.5) / grid, share, overlap).index] += 1
    expected = rule.propensities(MEANS, COUNTS, share, overlap)
    assert expected == pytest.approx([0.9, 0.05, 0.0, 0.05])
    assert [c / grid for c in counts] == pytest.approx(expected, abs=1 / grid)
    for i in range(0, grid, 997):
        choice = rule.choose(MEANS, COUNTS, (i + 0.5) / grid, share, overlap)
        assert choice.propensity == pytest.approx(expected[choice.index])
        assert choice.explored == (choice.index != 0)


def test_no_plausible_rival_means_no_exploration():
    far = [0.9, 0.1]
    assert rule.choose(far, [500.0, 500.0], 0.0, 0.5).propensity == 1.0
    assert rule.propensities(far, [500.0, 500.0], 0.5) == [1.0, 0.0]
    assert rule.choose(MEANS, COUNTS, 0.0, share=0.0).index == 0


def test_the_hash_uniform_is_reproducible_and_spread():
    draws = [rule.hash_uniform(42, str(i)) for i in range(2000)]
    assert draws == [rule.hash_uniform(42, str(i)) for i in range(2000)]
    assert all(0.0 <= u < 1.0 for u in draws)
    assert abs(sum(draws) / len(draws) - 0.5) < 0.03
    assert rule.hash_uniform(42, "7") != rule.hash_uniform(43, "7")
    assert rule.plausibility_gap(0.2) == pytest.approx(0.8416, abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "location"),
    [
        ({"share": 1.5}, "exploration_share"),
        ({"overlap": 1.0}, "exploration_overlap"),
        ({"u": 1.0}, "u"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, location):
    args = {"means": MEANS, "counts": COUNTS, "u": 0.5, **kwargs}
    with pytest.raises(InputError) as caught:
        rule.choose(**args)
    assert caught.value.location == location
