"""Prompt templates per task type: each asks for the final answer in the form its extractor reads.

Templates fill ``{question}`` by plain replacement (not ``str.format``), so LaTeX braces such as
``\\boxed{}`` need no escaping. Users override some or all task types with ``PromptSet.from_file``
(TOML or JSON)::

    [math]
    system = "You are a careful mathematician."
    user = "{question}\\nGive the final answer in \\\\boxed{}."
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from avengers_store.errors import InputError

TASK_TYPES: tuple[str, ...] = ("math", "multiple_choice", "code", "text")
PLACEHOLDER = "{question}"


@dataclass(frozen=True)
class PromptTemplate:
    """A system message (may be empty: then none is sent) and a user message with ``{question}``."""

    system: str
    user: str

    def messages(self, question: str) -> list[dict[str, str]]:
        out = [{"role": "system", "content": self.system}] if self.system.strip() else []
        out.append({"role": "user", "content": self.user.replace(PLACEHOLDER, question)})
        return out


@dataclass(frozen=True)
class PromptSet:
    """One template per task type (the values of ``avengers.queries.task_type``)."""

    math: PromptTemplate
    multiple_choice: PromptTemplate
    code: PromptTemplate
    text: PromptTemplate

    def template(self, task_type: str) -> PromptTemplate:
        check_task_type(task_type)
        return getattr(self, task_type)

    def messages(self, task_type: str, question: str) -> list[dict[str, str]]:
        return self.template(task_type).messages(question)

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, object], *, base: PromptSet | None = None, source: str = "prompts"
    ) -> PromptSet:
        """Override ``base`` (default: DEFAULT_PROMPTS) with ``{task_type: {system?, user?}}``."""
        result = base or DEFAULT_PROMPTS
        for task_type, spec in data.items():
            if task_type not in TASK_TYPES:
                raise InputError(
                    f"unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}",
                    location=source,
                )
            if not isinstance(spec, Mapping):
                raise InputError(
                    "expected a table with 'system' and/or 'user' strings",
                    location=f"{source} [{task_type}]",
                )
            unknown = set(spec) - {"system", "user"}
            if unknown:
                raise InputError(
                    f"unknown key(s) {', '.join(sorted(unknown))}; only 'system' and 'user' are read",
                    location=f"{source} [{task_type}]",
                )
            current: PromptTemplate = getattr(result, task_type)
            for key in ("system", "user"):
                if key in spec and not isinstance(spec[key], str):
                    raise InputError(
                        f"{key!r} must be a string", location=f"{source} [{task_type}]"
                    )
            template = replace(current, **{k: spec[k] for k in ("system", "user") if k in spec})
            if PLACEHOLDER not in template.user:
                raise InputError(
                    f"'user' must contain {PLACEHOLDER} where the question goes",
                    location=f"{source} [{task_type}]",
                )
            result = replace(result, **{task_type: template})
        return result

    @classmethod
    def from_file(cls, path: str | Path, *, base: PromptSet | None = None) -> PromptSet:
        """Read overrides from a ``.toml`` or ``.json`` file; task types it omits keep ``base``."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise InputError(
                f"cannot read prompt file: {exc.strerror}", location=str(path)
            ) from exc
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(raw)
            else:
                data = tomllib.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
            raise InputError(f"not valid {kind}: {exc}", location=str(path)) from exc
        if not isinstance(data, Mapping):
            raise InputError("expected a table of task types at the top level", location=str(path))
        return cls.from_mapping(data, base=base, source=str(path))

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {
            f.name: {"system": getattr(self, f.name).system, "user": getattr(self, f.name).user}
            for f in fields(self)
        }


def check_task_type(task_type: str) -> str:
    if task_type not in TASK_TYPES:
        raise InputError(
            f"unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}",
            location="task_type",
        )
    return task_type


DEFAULT_PROMPTS = PromptSet(
    math=PromptTemplate(
        system="You are a careful problem solver. Reason step by step, briefly.",
        user=f"{PLACEHOLDER}\n\nThink step by step, then put the final answer in \\boxed{{}}.",
    ),
    multiple_choice=PromptTemplate(
        system="You answer multiple-choice questions accurately.",
        user=(
            f"{PLACEHOLDER}\n\nThink briefly, then end your reply with a line of the form "
            "'Answer: X', where X is the letter of the correct option."
        ),
    ),
    code=PromptTemplate(
        system="You are an expert Python programmer.",
        user=(
            f"{PLACEHOLDER}\n\nWrite the complete solution as one Python code block "
            "(```python ... ```). Do not include tests or example usage."
        ),
    ),
    text=PromptTemplate(
        system="You answer questions with short, factual answers.",
        user=f"{PLACEHOLDER}\n\nEnd your reply with a line of the form 'Answer: <short answer>'.",
    ),
)

_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[\).:]\s+\S", re.M)
_CODE_HINT = re.compile(
    r"```|\bdef \w+\(|\bwrite (?:a |an )?(?:python )?(?:function|program|script)\b|\bimplement\b",
    re.I,
)
_MATH_HINT = re.compile(
    r"\\frac|\\boxed|\$[^$]+\$|\d\s*[-+*/^=×÷]\s*\d|\b(?:calculate|compute|solve|how many|how much|"
    r"sum of|product of|what is \d)",
    re.I,
)


def guess_task_type(question: str) -> str:
    """A cheap guess when the caller does not know the task type.

    Two or more option lines (``A. ...``/``(B) ...``) mean multiple choice; code words or a
    ``def`` mean code; arithmetic or counting words mean math; anything else is text.
    """
    if len({m.group(1) for m in _OPTION_LINE.finditer(question)}) >= 2:
        return "multiple_choice"
    if _CODE_HINT.search(question):
        return "code"
    if _MATH_HINT.search(question):
        return "math"
    return "text"


def messages(
    question: str, task_type: str = "text", prompts: PromptSet | None = None
) -> list[dict[str, str]]:
    """The chat messages for ``question`` under ``task_type`` (DEFAULT_PROMPTS unless given)."""
    return (prompts or DEFAULT_PROMPTS).messages(task_type, question)
