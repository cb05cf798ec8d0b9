"""The command line's compact forms, parsed here so the library only ever sees lists, dicts and
durations: ``1,4,16`` (a comma-separated list), ``train=calibration,test=test`` (KEY=VALUE pairs)
and ``7d`` (a timedelta). A malformed value is a usage error naming the option."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click


class CommaList(click.ParamType):
    """``a,b,c`` as a list of ``kind`` (``int``, ``float`` or ``str``); blank items are dropped."""

    # kind: (metavar, what an item must be)
    _KINDS: dict[type, tuple[str, str]] = {
        int: ("N,N,...", "an integer"),
        float: ("X,X,...", "a number"),
        str: ("NAME,NAME,...", "a name"),
    }

    def __init__(self, kind: type = str) -> None:
        self.kind = kind
        self.name = f"{kind.__name__} list"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return self._KINDS[self.kind][0]

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        out = []
        for part in str(value).split(","):
            if not part.strip():
                continue
            try:
                out.append(self.kind(part.strip()))
            except ValueError:
                self.fail(f"{part.strip()!r} is not {self._KINDS[self.kind][1]}", param, ctx)
        return out


class KeyValues(click.ParamType):
    """``KEY=VALUE[,KEY=VALUE...]`` as a dict, in the order given."""

    name = "KEY=VALUE list"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "KEY=VALUE,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dict):
            return value
        out: dict[str, str] = {}
        for part in str(value).split(","):
            if not part.strip():
                continue
            key, sep, target = part.partition("=")
            if not sep or not key.strip() or not target.strip():
                self.fail(f"expected KEY=VALUE[,KEY=VALUE...], got {part.strip()!r}", param, ctx)
            out[key.strip()] = target.strip()
        return out


class Duration(click.ParamType):
    """``90s``, ``30m``, ``12h``, ``7d`` or ``2w`` as a ``timedelta``."""

    name = "duration"
    _UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "N[s|m|h|d|w]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        unit = self._UNITS.get(text[-1:]) if text else None
        try:
            amount = float(text[:-1]) if unit else float("nan")
        except ValueError:
            amount = float("nan")
        if unit is None or not amount > 0 or amount == float("inf"):
            self.fail(
                f"expected a positive duration such as 90s, 30m, 12h, 7d or 2w, got {value!r}"
            )
        return timedelta(**{unit: amount})


class ScenarioSpec(click.ParamType):
    """A drift scenario of the online replay: ``iid``, ``degrade:MODEL@FRACTION[,as=OTHER|,
    flip=RATE]``, ``new-model:MODEL[@FRACTION]`` or ``shift:DATASET[@FRACTION][,mix=SHARE]``
    (``evaluation.scenarios``). The fraction is the point of the stream where the change
    starts; model names may hold ``/`` and ``:``, the kind is what comes before the first ``:``."""

    name = "scenario"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "KIND:TARGET[@FRACTION][,KEY=VALUE]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from avengers_store.errors import InputError
        from avengers_store.evaluation.scenarios import KINDS, Scenario

        if isinstance(value, Scenario):
            return value
        text = str(value).strip()
        if text == "iid":
            return Scenario()
        kind, sep, rest = text.partition(":")
        if not sep or kind not in KINDS or not rest:
            self.fail(
                f"expected iid, degrade:MODEL@FRACTION, new-model:MODEL or shift:DATASET, got "
                f"{text!r}",
                param,
                ctx,
            )
        head, *options = rest.split(",")
        target, at_sep, at_text = head.rpartition("@")
        if not at_sep:
            target, at_text = head, ""
        fields: dict[str, Any] = {}
        try:
            if at_text:
                fields["at"] = float(at_text)
            for option in options:
                key, eq, raw = option.partition("=")
                key = key.strip()
                if not eq or key not in ("as", "flip", "mix") or not raw.strip():
                    self.fail(f"unknown scenario option {option.strip()!r} (as=, flip=, mix=)",
                              param, ctx)  # fmt: skip
                fields["like" if key == "as" else key] = raw.strip() if key == "as" else float(raw)
        except ValueError as exc:
            self.fail(f"not a number in {text!r}: {exc}", param, ctx)
        if kind == "degrade" and "at" not in fields:
            self.fail("degrade needs the point of the change: degrade:MODEL@FRACTION", param, ctx)
        try:
            return Scenario(kind, target.strip(), **fields)
        except InputError as exc:
            self.fail(str(exc), param, ctx)
