"""Grading an answer against a query's reference: a score in [0, 1] per task type.

``answer_text`` may be a raw completion or an already-extracted answer (extraction is idempotent).

math
    The reference's final answer is taken from ``#### X`` (GSM8K), else its last ``\\boxed{}``
    (MATH solutions), else the whole reference; both sides are normalised (answers.normalize_math)
    and compared exactly: 1.0 on equal canonical forms (so 0.5 = 1/2 = \\frac{1}{2}), else 0.0.
multiple_choice
    Extracted letter equals the reference letter (``B``, ``(B)``, ``Answer: B``).
text
    Normalised (lower case, no punctuation/articles) exact match, or the normalised reference
    appearing in the normalised answer on word boundaries ("containment", as in open-domain QA's
    "has answer"): 1.0, else 0.0. ``metric="f1"`` gives token F1 instead. A reference that is a
    JSON list of aliases is matched against each alias; the best counts.
code
    Not executed by default: 1.0 when the normalised program equals the normalised reference
    program, else 0.0. With ``execute=True`` and a reference made of tests (``assert`` lines, a
    Python list of them as in MBPP, or a ``def check(candidate)`` as in HumanEval), the program and
    the tests run in a separate ``python -I`` process in an empty temporary directory with a
    timeout, a CPU limit, a memory limit and an empty environment; 1.0 when it exits 0. This is
    isolation against accidents, not a security sandbox: only execute code you are willing to run.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter

from avengers_store.answering.extraction import (
    extract,
    extract_choice,
    find_boxed,
    normalize_code,
    normalize_math,
    normalize_text_answer,
)
from avengers_store.answering.prompts import check_task_type
from avengers_store.errors import ConfigurationError

DEFAULT_CODE_TIMEOUT_S = 10.0
_MEMORY_LIMIT_BYTES = 1 << 30


def grade(
    task_type: str,
    answer_text: str | None,
    reference: str,
    *,
    metric: str = "match",
    execute: bool = False,
    timeout: float = DEFAULT_CODE_TIMEOUT_S,
    entry_point: str | None = None,
) -> float:
    """Score ``answer_text`` against ``reference`` for ``task_type``; 0.0 for a missing answer."""
    check_task_type(task_type)
    if answer_text is None or not answer_text.strip():
        return 0.0
    if task_type == "math":
        return grade_math(answer_text, reference)
    if task_type == "multiple_choice":
        return grade_choice(answer_text, reference)
    if task_type == "text":
        return grade_text(answer_text, reference, metric=metric)
    return grade_code(
        answer_text, reference, execute=execute, timeout=timeout, entry_point=entry_point
    )


def reference_math(reference: str) -> str | None:
    """The final answer inside a math reference (``#### X``, ``\\boxed{X}`` or the whole text)."""
    if "####" in reference:
        return normalize_math(reference.rsplit("####", 1)[1].strip().splitlines()[0])
    boxed = find_boxed(reference)
    if boxed is not None:
        return normalize_math(boxed)
    return normalize_math(reference)


def grade_math(answer_text: str, reference: str) -> float:
    got = extract("math", answer_text)
    want = reference_math(reference)
    return float(got is not None and got == want)


def grade_choice(answer_text: str, reference: str) -> float:
    got = extract_choice(answer_text)
    want = extract_choice(reference)
    return float(got is not None and got == want)


def _aliases(reference: str) -> list[str]:
    stripped = reference.strip()
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
            return parsed
    return [reference]


def grade_text(answer_text: str, reference: str, *, metric: str = "match") -> float:
    if metric not in ("match", "f1"):
        raise ConfigurationError(f"unknown text metric {metric!r}; expected 'match' or 'f1'")
    got = extract("text", answer_text)
    if got is None:
        return 0.0
    best = 0.0
    for alias in _aliases(reference):
        want = normalize_text_answer(alias)
        if want is None:
            continue
        if metric == "f1":
            best = max(best, _token_f1(got, want))
        elif got == want or f" {want} " in f" {got} ":
            return 1.0
    return best


def _token_f1(got: str, want: str) -> float:
    common = Counter(got.split()) & Counter(want.split())
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(got.split())
    recall = same / len(want.split())
    return 2 * precision * recall / (precision + recall)


def reference_tests(reference: str) -> str | None:
    """Test code inside a code reference, or None when it holds no tests."""
    stripped = reference.strip()
    if stripped.startswith("["):
        try:
            items = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            items = None
        if isinstance(items, list) and items and all(isinstance(x, str) for x in items):
            return "\n".join(items) if any("assert" in x for x in items) else None
    if re.search(r"^\s*def check\(", reference, re.M) or re.search(
        r"^\s*assert\b", reference, re.M
    ):
        return reference
    return None


def grade_code(
    answer_text: str,
    reference: str,
    *,
    execute: bool = False,
    timeout: float = DEFAULT_CODE_TIMEOUT_S,
    entry_point: str | None = None,
) -> float:
    program = extract("code", answer_text)
    if program is None:
        return 0.0
    tests = reference_tests(reference)
    if tests is None:
        want = extract("code", reference) or normalize_code(reference)
        return float(program == want)
    if not execute:
        return 0.0  # tests cannot be checked without running them; see the module docstring
    return float(run_tests(program, tests, timeout=timeout, entry_point=entry_point))


def run_tests(
    program: str,
    tests: str,
    *,
    timeout: float = DEFAULT_CODE_TIMEOUT_S,
    entry_point: str | None = None,
) -> bool:
    """Run ``program`` then ``tests`` in a separate, limited Python process; True if it exits 0."""
    script = program + "\n\n" + tests + "\n"
    if re.search(r"^\s*def check\(", tests, re.M):
        name = entry_point or _first_function(program)
        if name is None:
            return False
        script += f"\ncheck({name})\n"
    with tempfile.TemporaryDirectory(prefix="avengers-grade-") as workdir:
        path = os.path.join(workdir, "candidate.py")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(script)
        try:
            completed = subprocess.run(
                [sys.executable, "-I", "-S", path],
                cwd=workdir,
                env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                preexec_fn=_limit_resources(timeout) if os.name == "posix" else None,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            return False
    return completed.returncode == 0


def _first_function(program: str) -> str | None:
    try:
        tree = ast.parse(program)
    except SyntaxError:
        return None
    names = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    return names[-1] if names else None


def _limit_resources(timeout: float):
    def apply() -> None:
        import resource

        cpu = max(1, int(timeout) + 1)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT_BYTES, _MEMORY_LIMIT_BYTES))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))

    return apply
