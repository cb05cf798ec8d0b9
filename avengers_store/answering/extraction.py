"""Final-answer extraction and canonical forms: what a sample votes for, and what is graded.

Every extractor returns a canonical string, or None when the sample has no usable answer (None
never votes). Extraction is idempotent: extracting from a canonical answer gives it back, so
graders accept either a raw completion or an already-extracted answer.

math
    The last ``\\boxed{...}`` (nested braces allowed; also ``\\fbox``), else the last number in the
    text. Numbers are made exact (``fractions.Fraction``) and written canonically: integers as
    ``42``, terminating decimals as ``0.5``, others as ``1/3``. So ``0.5 = 1/2 = \\frac{1}{2} =
    \\dfrac12 = .50`` all become ``0.5``, and ``1,000 = 1000``. Stripped first: ``$``, ``\\(...\\)``,
    ``\\text{..}`` units after a number, ``^\\circ``, a trailing period, trailing unit words
    (``18 dollars`` → ``18``) and ``%``. A percent sign is dropped like a unit: ``50% = 50``, not
    ``0.5`` (benchmarks that ask "what percent" expect ``50``). ``0.333`` is not ``1/3``: equality is
    exact. Answers that are not a single number (``\\sqrt{2}``, ``x+1``, ``(1,2)``) are compared as
    normalised LaTeX (no spaces, ``\\left``/``\\right`` and spacing commands removed,
    ``\\dfrac``/``\\tfrac`` → ``\\frac``).
multiple_choice
    The option letter A–J from "Answer: B" / "the answer is (B)" (last such phrase), else
    ``\\boxed{B}``, else a reply that is just the letter or starts with "B." / "(B)", else the last
    standalone "(B)". Upper case.
text
    The text after the last "Answer:" (else the last non-empty line), normalised SQuAD-style:
    lower case, punctuation and the articles a/an/the removed, whitespace folded.
code
    The longest fenced ```python block (else the longest fenced block; else the whole reply when it
    contains a ``def``), normalised: comments, blank lines and trailing whitespace removed. Voting on
    code picks the most common normalised program; it is NOT graded by execution, so equivalent
    programs written differently count as different answers.

Structured answers, whatever the task type (``extract_completion``):

tool calls
    A completion that calls tools votes for its calls: each as ``name(arguments)`` with the
    arguments in canonical JSON (keys sorted, no spaces), several calls sorted and joined by
    ``; ``; arguments that are not a JSON object make it unparseable. Its ``kind`` is
    ``tool_calls`` (a text answer's is ``text``), and the vote counts kinds first (``voting``).
JSON
    Under a JSON ``response_format`` (``AnswerFormat``), the text is parsed as JSON and votes in
    canonical JSON; text that is not JSON, or (with a schema) does not validate against it, is
    unparseable.
"""

from __future__ import annotations

import io
import json
import re
import string
import tokenize
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from avengers_store.answering.prompts import check_task_type
from avengers_store.answering.sampling import Completion
from avengers_store.errors import InputError

TEXT = "text"
TOOL_CALLS = "tool_calls"


@dataclass(frozen=True)
class ExtractedAnswer:
    """One sample's canonical answer (None: unparseable, does not vote) and where it came from:
    its text (``raw``), model, ``kind`` (``text`` or ``tool_calls``), why it stopped, the tool
    calls it made and its logprobs (as the model sent them)."""

    value: str | None
    raw: str = ""
    model: str | None = None
    kind: str = TEXT
    finish_reason: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    logprobs: Mapping[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AnswerFormat:
    """What the caller asked the answer to be: free text (extracted by task type) or JSON
    (``json``), valid against ``schema`` when one is given."""

    json: bool = False
    schema: Mapping[str, Any] | None = None

    @classmethod
    def from_request(cls, extra: Mapping[str, Any] | None) -> AnswerFormat:
        """The format an OpenAI ``response_format`` among a request's fields asks for (text
        when there is none); a schema that is not a valid JSON Schema is an InputError."""
        spec = (extra or {}).get("response_format")
        if not isinstance(spec, Mapping) or spec.get("type") not in ("json_object", "json_schema"):
            return cls()
        if spec["type"] == "json_object":
            return cls(json=True)
        schema = (spec.get("json_schema") or {}).get("schema")
        if schema is None:
            return cls(json=True)
        if not isinstance(schema, Mapping):
            raise InputError(
                "response_format.json_schema.schema must be a JSON Schema object",
                location="response_format.json_schema.schema",
            )
        check_schema(schema)
        return cls(json=True, schema=schema)


def extract(task_type: str, text: str) -> str | None:
    """The canonical final answer of ``text`` for ``task_type``, or None."""
    check_task_type(task_type)
    return _EXTRACTORS[task_type](text or "")


def extract_answer(task_type: str, text: str, model: str | None = None) -> ExtractedAnswer:
    return ExtractedAnswer(value=extract(task_type, text), raw=text, model=model)


def extract_completion(
    task_type: str,
    completion: Completion,
    model: str | None = None,
    answer_format: AnswerFormat | None = None,
) -> ExtractedAnswer:
    """What one completion votes for: its tool calls when it made any, else its text as JSON
    (under a JSON ``answer_format``) or as ``task_type``'s answer."""
    fmt = answer_format or AnswerFormat()
    if completion.tool_calls:
        kind, value = TOOL_CALLS, canonical_tool_calls(completion.tool_calls)
    elif fmt.json:
        kind, value = TEXT, canonical_json(completion.text, fmt.schema)
    else:
        kind, value = TEXT, extract(task_type, completion.text)
    return ExtractedAnswer(
        value=value,
        raw=completion.text,
        model=model,
        kind=kind,
        finish_reason=completion.finish_reason,
        tool_calls=completion.tool_calls,
        logprobs=completion.logprobs,
    )


# -- structured answers --------------------------------------------------------------------


def dumps_canonical(value: Any) -> str:
    """One spelling per JSON value: keys sorted, no spaces, text as is (not escaped)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_JSON_FENCE = re.compile(r"```[\w-]*[ \t]*\n(.*?)\n?```", re.S)


def canonical_json(text: str, schema: Mapping[str, Any] | None = None) -> str | None:
    """``text`` as canonical JSON, or None when it is not JSON or not valid against ``schema``.
    A reply that is one fenced block (```json ... ```) is read inside the fence."""
    body = text.strip()
    fenced = _JSON_FENCE.fullmatch(body)
    if fenced:
        body = fenced.group(1)
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if schema is not None and not schema_valid(value, schema):
        return None
    return dumps_canonical(value)


def canonical_tool_calls(calls: Sequence[Mapping[str, Any]]) -> str | None:
    """``name(arguments)`` per call, arguments in canonical JSON, calls sorted and joined by
    ``; ``; None when a call has no name or arguments that are not a JSON object."""
    out = []
    for call in calls:
        function = call.get("function")
        if not isinstance(function, Mapping):
            return None
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(name, str) or not name:
            return None
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                return None
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return None
        out.append(f"{name}({dumps_canonical(arguments)})")
    return "; ".join(sorted(out)) or None


def check_schema(schema: Mapping[str, Any]) -> None:
    """An InputError naming the schema when it is not a valid JSON Schema."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InputError(
            f"response_format.json_schema.schema is not a valid JSON Schema: {exc.message}",
            location="response_format.json_schema.schema",
        ) from None


def schema_valid(value: Any, schema: Mapping[str, Any]) -> bool:
    """Whether ``value`` is valid against ``schema`` (checked with ``check_schema``)."""
    import jsonschema

    return jsonschema.validators.validator_for(schema)(schema).is_valid(value)


# -- math ----------------------------------------------------------------------------------


def find_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces, or None."""
    best: str | None = None
    for match in re.finditer(r"\\(?:boxed|fbox)\s*", text):
        start = match.end()
        if start < len(text) and text[start] == "{":
            depth, i = 0, start
            while i < len(text):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        best = text[start + 1 : i]
                        break
                i += 1
        else:  # "\boxed 5": one token
            token = re.match(r"[^\s$]+", text[start:])
            if token:
                best = token.group(0)
    return best


_NUMBER = re.compile(
    r"(?<![\w.])(?:(?<![)\d])[-−])?"  # a minus sign that is not subtraction
    r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:/\d+)?|\.\d+)"
)


def extract_math(text: str) -> str | None:
    boxed = find_boxed(text)
    if boxed is not None:
        return normalize_math(boxed)
    numbers = _NUMBER.findall(text.replace("$", " "))
    if not numbers:
        return None
    return normalize_math(numbers[-1])


_LATEX_NOISE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\quad|\\qquad|\\displaystyle|\\ ")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_UNIT_WORDS = re.compile(r"^([-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+))\s+[a-zA-Z][a-zA-Z .'/]*$")
_FRAC = re.compile(r"^(-?)\\frac\s*(?:\{([^{}]+)\}|(\d))\s*(?:\{([^{}]+)\}|(\d))$")
_DECIMAL = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)$")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SIMPLE_FRACTION = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*/\s*([-+]?\d+(?:\.\d+)?)$")


def normalize_math(answer: str) -> str | None:
    """Canonical form of a math answer (see the module docstring), or None if empty."""
    s = unicodedata.normalize("NFKC", answer).strip().replace("−", "-")
    for left, right in (("\\(", "\\)"), ("\\[", "\\]"), ("$", "$")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    s = s.replace("$", "")
    s = re.sub(r"\\(?:d|t)frac", r"\\frac", s)
    s = _LATEX_NOISE.sub("", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", s)
    # \text{...} right after a number is a unit: drop it; elsewhere keep its words.
    s = re.sub(r"(\d)\s*\\(?:text|mbox|mathrm)\s*\{[^{}]*\}\s*$", r"\1", s)
    s = _TEXT_CMD.sub(r"\1", s)
    s = s.replace("\\%", "%").strip()
    s = re.sub(r"^(?:x|y|z|n|k|a|b|answer|ans)\s*=\s*(?=[-+.\d\\])", "", s, flags=re.I)
    s = s.rstrip(".").strip().rstrip("%").strip()
    unit = _UNIT_WORDS.match(s)
    if unit:
        s = unit.group(1)
    value = to_fraction(s)
    if value is not None:
        return format_number(value)
    s = re.sub(r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}", s)  # \sqrt2 = \sqrt{2}
    s = re.sub(r"\s+", "", s)
    return s or None


def to_fraction(s: str) -> Fraction | None:
    """Exact value of a plain number, thousands-separated number, a/b or \\frac{a}{b}; else None."""
    s = s.strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if _DECIMAL.match(s):
        return Fraction(s)
    match = _SIMPLE_FRACTION.match(s)
    if match:
        den = Fraction(match.group(2))
        return Fraction(match.group(1)) / den if den else None
    match = _FRAC.match(s)
    if match:
        num = to_fraction(match.group(2) or match.group(3))
        den = to_fraction(match.group(4) or match.group(5))
        if num is None or den is None or den == 0:
            return None
        value = num / den
        return -value if match.group(1) else value
    return None


def format_number(value: Fraction) -> str:
    """``42``, ``0.5``, ``-1.25``, or ``1/3`` when the decimal expansion does not terminate."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value) * 10**places
    whole, frac = divmod(int(scaled), 10**places)
    sign = "-" if value < 0 else ""
    return f"{sign}{whole}.{str(frac).rjust(places, '0').rstrip('0')}"


# -- multiple choice -----------------------------------------------------------------------

_LETTER = r"\(?\[?\**([A-J])\**\]?\)?(?![A-Za-z0-9])"
_MC_PATTERNS = (
    re.compile(r"(?i:answer)(?:\s+(?i:is))?\s*(?:[:：]|(?i:would be|should be))?[\s*]*" + _LETTER),
    # a lower-case letter only in parentheses: "the answer is a ..." is an article
    re.compile(r"(?i:answer)(?:\s+(?i:is))?\s*[:：]?[\s*]*\(([a-j])\)"),
    re.compile(r"(?i:correct (?:option|choice) is)\s*[:：]?[\s*]*" + _LETTER),
    re.compile(r"(?i:option|choice)\s+" + _LETTER + r"\s+(?i:is correct)"),
)


def extract_choice(text: str) -> str | None:
    # The last answer phrase of any form wins: models restate and correct themselves.
    phrases = [m for pattern in _MC_PATTERNS for m in pattern.finditer(text)]
    if phrases:
        return max(phrases, key=lambda m: m.start()).group(1).upper()
    boxed = find_boxed(text)
    if boxed is not None:
        inner = re.sub(r"\\text\{([^{}]*)\}", r"\1", boxed).strip().strip("()").strip()
        if re.fullmatch(r"[A-Ja-j]", inner):
            return inner.upper()
    stripped = text.strip()
    if re.fullmatch(r"\(?([A-J])[\).:]?", stripped):
        return stripped.strip("().:")
    match = re.match(r"\s*\(?([A-J])[\).:](?:\s|$)", text)
    if match:
        return match.group(1)
    found = re.findall(r"(?<![A-Za-z])\(([A-J])\)(?![A-Za-z])", text)
    if found:
        return found[-1]
    return None


# -- free text -----------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCT = str.maketrans({ch: " " for ch in string.punctuation + "‘’“”«»–—…"})


def normalize_text_answer(text: str) -> str | None:
    """Lower case, punctuation and articles removed, whitespace folded (SQuAD's normal form)."""
    s = unicodedata.normalize("NFKC", text).lower().translate(_PUNCT)
    s = " ".join(_ARTICLES.sub(" ", s).split())
    return s or None


def extract_text(text: str) -> str | None:
    matches = list(re.finditer(r"(?i)\banswer\s*[:：]", text))
    if matches:
        tail = text[matches[-1].end() :].strip()
        line = tail.splitlines()[0] if tail else ""
    else:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        line = lines[-1] if lines else ""
    return normalize_text_answer(line.replace("*", " "))


# -- code ----------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(text: str) -> str | None:
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    python = [body for lang, body in blocks if lang in ("python", "py", "python3")]
    candidates = python or [body for _, body in blocks]
    if candidates:
        program = max(candidates, key=len)
    elif re.search(r"^\s*(?:def|class|import|from)\s", text, re.M):
        program = text
    else:
        return None
    return normalize_code(program)


def normalize_code(program: str) -> str | None:
    """Comments, blank lines and trailing whitespace removed; indentation kept."""
    stripped = _strip_comments(program)
    lines = [ln.rstrip() for ln in stripped.expandtabs(4).splitlines()]
    out = "\n".join(ln for ln in lines if ln.strip())
    return out or None


def _strip_comments(program: str) -> str:
    # tokenize knows where strings are, so '#' inside a string literal survives.
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(program).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return "\n".join(re.sub(r"(^|\s)#.*$", "", ln) for ln in program.splitlines())
    lines = program.splitlines()
    for tok in reversed(tokens):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            line = lines[row - 1]
            lines[row - 1] = line[:col] + line[tok.end[1] :]
    return "\n".join(lines)


_EXTRACTORS = {
    "math": extract_math,
    "multiple_choice": extract_choice,
    "text": extract_text,
    "code": extract_code,
}
