"""Graders per task type against real reference formats (GSM8K, MATH, MMLU, QA, MBPP, HumanEval)."""

from __future__ import annotations

import pytest

from avengers_store.answering.grading import grade, reference_tests, run_tests
from avengers_store.errors import ConfigurationError


@pytest.mark.parametrize(
    ("answer", "reference", "score"),
    [
        (r"... so \boxed{72}", "Natalia sold 48/2 = 24 clips.\n#### 72", 1.0),
        ("The answer is 72.", "#### 72", 1.0),
        ("The answer is 71.", "#### 72", 0.0),
        (r"\boxed{0.5}", r"So the probability is $\boxed{\frac{1}{2}}$.", 1.0),
        (r"\boxed{\dfrac{1}{2}}", "1/2", 1.0),
        ("1,000", "1000", 1.0),
        (r"\boxed{\sqrt{2}}", r"$\boxed{\sqrt 2}$", 1.0),  # not numeric: normalised LaTeX
        (r"\boxed{\sqrt{3}}", r"\boxed{\sqrt{2}}", 0.0),
        ("no idea", "#### 5", 0.0),
        ("", "#### 5", 0.0),
        (None, "#### 5", 0.0),
    ],
)
def test_math(answer, reference, score):
    assert grade("math", answer, reference) == score


@pytest.mark.parametrize(
    ("answer", "reference", "score"),
    [
        ("Answer: B", "B", 1.0),
        ("(b)... Answer: (B)", "(B)", 1.0),
        ("Answer: C", "B", 0.0),
        ("I am not sure", "B", 0.0),
    ],
)
def test_multiple_choice(answer, reference, score):
    assert grade("multiple_choice", answer, reference) == score


@pytest.mark.parametrize(
    ("answer", "reference", "score"),
    [
        ("Answer: Sammy Davis Jr.", "Sammy Davis, Jr", 1.0),
        ("It is held in Bayreuth, Germany.", "bayreuth germany", 1.0),  # containment
        ("Answer: Munich", "bayreuth germany", 0.0),
        ("Answer: Paris", '["Paris", "City of Light"]', 1.0),  # aliases
        ("Answer: Parisian", "Paris", 0.0),  # containment is on word boundaries
    ],
)
def test_text_match(answer, reference, score):
    assert grade("text", answer, reference) == score


def test_text_f1():
    assert grade("text", "Answer: bayreuth", "bayreuth germany", metric="f1") == pytest.approx(
        2 / 3
    )
    with pytest.raises(ConfigurationError, match="metric"):
        grade("text", "x", "x", metric="bleu")


GOOD = "```python\ndef add(a, b):\n    return a + b\n```"
BAD = "```python\ndef add(a, b):\n    return a - b\n```"
MBPP_TESTS = "['assert add(1, 2) == 3', 'assert add(0, 0) == 0']"
HUMANEVAL_TESTS = "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate(2, 3) == 5\n"


def test_code_without_tests_is_normalised_exact_match():
    reference = "def add(a, b):\n    # sum\n    return a + b\n"
    assert grade("code", GOOD, reference) == 1.0
    assert grade("code", BAD, reference) == 0.0


def test_code_tests_are_not_run_unless_asked():
    assert reference_tests(MBPP_TESTS) == "assert add(1, 2) == 3\nassert add(0, 0) == 0"
    assert grade("code", GOOD, MBPP_TESTS) == 0.0


@pytest.mark.parametrize("tests", [MBPP_TESTS, HUMANEVAL_TESTS])
def test_code_tests_executed_in_a_subprocess(tests):
    assert grade("code", GOOD, tests, execute=True) == 1.0
    assert grade("code", BAD, tests, execute=True) == 0.0


def test_code_execution_has_a_timeout_and_an_isolated_directory():
    assert not run_tests("while True:\n    pass", "assert True", timeout=1.0)
    assert run_tests("import os", "assert os.listdir('.') == ['candidate.py']")
    assert run_tests("import os", "assert 'AVENGERS_DATABASE_URL' not in os.environ")
