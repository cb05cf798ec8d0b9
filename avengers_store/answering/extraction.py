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
"""

from __future__ import annotations

import io
import re
import string
import tokenize
import unicodedata
from dataclasses import dataclass
from fractions import Fraction

from avengers_store.answering.prompts import check_task_type


@dataclass(frozen=True)
class ExtractedAnswer:
    """One sample's canonical answer (None: unparseable, does not vote) and where it came from."""

    value: str | None
    raw: str = ""
    model: str | None = None


def extract(task_type: str, text: str) -> str | None:
    """The canonical final answer of ``text`` for ``task_type``, or None."""
    check_task_type(task_type)
    return _EXTRACTORS[task_type](text or "")


def extract_answer(task_type: str, text: str, model: str | None = None) -> ExtractedAnswer:
    return ExtractedAnswer(value=extract(task_type, text), raw=text, model=model)


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
