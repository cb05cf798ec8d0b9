"""Checks of the typed values public functions take. The library takes lists and mappings, never
``"a,b"`` or ``"a=b,c=d"`` (the CLI parses those); these checks turn a value of the wrong shape
into an ``InputError`` naming the parameter, notably a str where a list is expected, which
would otherwise pass as a sequence of characters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Integral, Real
from typing import TypeVar, overload

from avengers_store.errors import InputError

T = TypeVar("T", int, float, str)

# What each item kind accepts (numpy's integers and floats register as Integral and Real).
_ACCEPTS: dict[type, tuple[type, str]] = {
    int: (Integral, "integers"),
    float: (Real, "numbers"),
    str: (str, "strings"),
}


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@overload
def as_list(value: None, parameter: str, kind: type[T]) -> None: ...
@overload
def as_list(value: Iterable[T], parameter: str, kind: type[T]) -> list[T]: ...
def as_list(value: Iterable[T] | None, parameter: str, kind: type[T]) -> list[T] | None:
    """``value`` (a list, tuple, array, ...) as a list of ``kind``; ``None`` stays ``None``.
    A str, a mapping, or an item of another kind is an ``InputError`` at ``parameter``."""
    if value is None:
        return None
    accepted, noun = _ACCEPTS[kind]
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InputError(
            f"expected a list of {noun}, got {type(value).__name__} {_shown(value)}",
            location=parameter,
        )
    out: list[T] = []
    for item in value:
        # bool is an int to Python, never a count or a seed here.
        if isinstance(item, bool) or not isinstance(item, accepted):
            raise InputError(
                f"expected a list of {noun}, got {type(item).__name__} {_shown(item)} in it",
                location=parameter,
            )
        out.append(kind(item))
    return out


@overload
def as_string_map(value: None, parameter: str) -> None: ...
@overload
def as_string_map(value: Mapping[str, str], parameter: str) -> dict[str, str]: ...
def as_string_map(value: Mapping[str, str] | None, parameter: str) -> dict[str, str] | None:
    """``value`` as a dict of str to str; ``None`` stays ``None``. Anything else (a
    ``"a=b,c=d"`` string included) is an ``InputError`` at ``parameter``."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InputError(
            f"expected a mapping of strings to strings, got {type(value).__name__} {_shown(value)}",
            location=parameter,
        )
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise InputError(
                f"expected a mapping of strings to strings, got {_shown(key)}: {_shown(item)}",
                location=parameter,
            )
    return dict(value)


# Names are keys of unique indexes (a B-tree entry holds at most about 2,700 bytes) and are
# shown in tables and headers: a name longer than this is a mistake (a text column taken for
# the name column), refused before PostgreSQL refuses it without saying where.
MAX_NAME_LENGTH = 256


def check_name(name: str, kind: str, location: str) -> str:
    """``name`` (of a model, dataset or key) if it is at most ``MAX_NAME_LENGTH`` characters;
    else an ``InputError`` at ``location`` (the argument, or the file, row and column)."""
    if len(name) > MAX_NAME_LENGTH:
        raise InputError(
            f"a {kind} name has at most {MAX_NAME_LENGTH} characters, this one {len(name):,} "
            f"({_shown(name)})",
            location=location,
        )
    return name


def shown_column(path: object, column: str) -> str:
    """Where a column of a file is, for a message: its name cut short if it is long."""
    return f"{path} column {_shown(column)}"


def one_of(value: T, choices: Iterable[T], what: str, location: str) -> T:
    """``value`` if it is one of ``choices``; else an ``InputError`` at ``location`` naming
    them (``what``: how the message calls the value, e.g. "routing method")."""
    listed = list(choices)
    if value not in listed:
        raise InputError(
            f"unknown {what} {value!r}; choose one of {', '.join(map(str, listed))}",
            location=location,
        )
    return value
