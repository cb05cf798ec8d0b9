"""Answer extraction and canonical forms, table by table."""

from __future__ import annotations

import pytest

from avengers_store.answering.extraction import extract, extract_answer, find_boxed, normalize_math
from avengers_store.errors import InputError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{\dfrac12}", "0.5"),
        (r"\boxed{\tfrac{3}{4}}", "0.75"),
        (r"\boxed{-\frac{3}{4}}", "-0.75"),
        ("0.5", "0.5"),
        (".50", "0.5"),
        ("1/2", "0.5"),
        ("1/3", "1/3"),
        (r"\boxed{\frac{2}{6}}", "1/3"),
        ("The total is 1,000 dollars.", "1000"),
        ("It costs $1,234.50.", "1234.5"),
        (r"\boxed{50\%}", "50"),
        ("50%", "50"),
        (r"\$18.00", "18"),
        ("3.0", "3"),
        ("12.", "12"),
        ("x = 3", "3"),
        (r"\boxed{10\text{ cm}}", "10"),
        (r"\boxed{90^\circ}", "90"),
        (r"\boxed{ 42 }", "42"),
        (r"\(42\)", "42"),
        ("7*6 = 42 is the final answer.", "42"),
        ("The final answer is 49.", "49"),
        ("temperature of -5 degrees", "-5"),
        ("7-6 leaves", "6"),  # subtraction, not a negative number
        (r"first \boxed{1} then corrected \boxed{2}", "2"),
        (r"\boxed{\sqrt{2}}", r"\sqrt{2}"),
        (r"\boxed{\left( 1, 2 \right)}", "(1,2)"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{{a}^{2}}", "{a}^{2}"),
        ("no numbers here", None),
        ("", None),
        (r"\boxed{}", None),
    ],
)
def test_math_extraction(text, expected):
    assert extract("math", text) == expected


@pytest.mark.parametrize(
    "form", ["0.5", "1/2", r"\frac{1}{2}", r"\dfrac12", r"\frac12", ".5", "0.50", r"$\frac{1}{2}$"]
)
def test_math_equivalent_forms_of_one_half(form):
    assert normalize_math(form) == "0.5"


def test_boxed_with_nested_braces():
    assert find_boxed(r"x \boxed{\frac{a}{b^{2}}} y") == r"\frac{a}{b^{2}}"
    assert find_boxed(r"\boxed 5 apples") == "5"
    assert find_boxed("none") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: B", "B"),
        ("**Answer:** D", "D"),
        ("Answer: (E)", "E"),
        ("the answer is (c)", "C"),
        ("The answer is C.", "C"),
        ("The answer is a number. Answer: B", "B"),  # "a" the article is not option A
        ("Answer: A. Wait, the correct option is C", "C"),
        ("I think A is wrong. Answer: C", "C"),
        ("B. Paris", "B"),
        ("(B)", "B"),
        ("B", "B"),
        (r"\boxed{C}", "C"),
        ("Both (A) and (D) look plausible, but (D) fits", "D"),
        ("nothing here", None),
        ("", None),
    ],
)
def test_multiple_choice_extraction(text, expected):
    assert extract("multiple_choice", text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The capital is Paris.\nAnswer: The Paris!", "paris"),
        ("Paris", "paris"),
        ("I think\n\n  the Eiffel Tower.", "eiffel tower"),
        ("answer: **Sammy Davis, Jr.**", "sammy davis jr"),
        ("  \n ", None),
    ],
)
def test_text_extraction(text, expected):
    assert extract("text", text) == expected


def test_code_extraction_normalises_comments_and_blank_lines():
    a = 'Here:\n```python\n# helper\ndef f(x):  # tail\n    return "#" + x   \n\n```\nDone'
    b = '```py\ndef f(x):\n\n    return "#" + x\n```'
    assert extract("code", a) == 'def f(x):\n    return "#" + x'
    assert extract("code", a) == extract("code", b)


def test_code_prefers_longest_python_block_and_accepts_bare_code():
    text = "```\nprint(1)\n```\n```python\nimport os\nprint(os.sep)\n```"
    assert extract("code", text) == "import os\nprint(os.sep)"
    assert extract("code", "def g():\n    return 1\n") == "def g():\n    return 1"
    assert extract("code", "I cannot write that.") is None


@pytest.mark.parametrize("task_type", ["math", "multiple_choice", "text", "code"])
@pytest.mark.parametrize(
    "text",
    [
        r"\boxed{\frac{1}{2}}",
        "Answer: B",
        "The Eiffel tower",
        "```python\ndef f():  # x\n    return 2\n```",
        "1,000",
    ],
)
def test_extraction_is_idempotent(task_type, text):
    once = extract(task_type, text)
    if once is not None:
        assert extract(task_type, once) == once


def test_extract_answer_keeps_raw_and_model():
    got = extract_answer("math", "so 42", model="m1")
    assert (got.value, got.raw, got.model) == ("42", "so 42", "m1")


def test_unknown_task_type_is_rejected():
    with pytest.raises(InputError, match="unknown task type 'poetry'"):
        extract("poetry", "x")
