"""Charts drawn as inline SVG on the server: a line chart for series over time, paired bars, and
the heatmap's colour scale. No script and no download: the page carries the picture, and the
colours follow the page's theme through CSS variables (``--fg``, ``--muted``, ``--series-N``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from html import escape

from markupsafe import Markup

# viridis at five stops: readable on a dark and a light page, and by colour-blind readers.
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
SERIES = 8  # colours the stylesheet defines (--series-0 ... --series-7)


def heat(value: float | None) -> tuple[str, str]:
    """(background, text colour) for a value in [0, 1] (None: no colour)."""
    if value is None or not math.isfinite(value):
        return "transparent", "inherit"
    x = min(1.0, max(0.0, value)) * (len(_VIRIDIS) - 1)
    i = min(int(x), len(_VIRIDIS) - 2)
    f = x - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(_VIRIDIS[i], _VIRIDIS[i + 1], strict=True))
    light = 0.299 * r + 0.587 * g + 0.114 * b > 140
    return f"rgb({r},{g},{b})", "#111" if light else "#fff"


def _nice_max(value: float) -> float:
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def line_chart(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
    y_max: float | None = None,
    width: int = 640,
    height: int = 200,
) -> Markup:
    """Lines over ``labels`` (one point each, None: a gap), a legend, the y axis from 0 and a
    native tooltip on every point."""
    left, right, top, bottom = 56, 12, 24, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    top_value = y_max if y_max is not None else _nice_max(max(values, default=0.0))
    n = len(labels)

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n if n else 0)

    def y(v: float) -> float:
        return top + plot_h * (1 - min(v, top_value) / top_value)

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet">',
        f"<title>{escape(title)}</title>",
    ]
    parts += _grid(left, width - right, top, plot_h, top_value, fmt)
    step = max(1, math.ceil(n / 6))
    for i in range(0, n, step):
        parts.append(
            f'<text class="axis" x="{x(i):.1f}" y="{height - 8}" text-anchor="middle">'
            f"{escape(labels[i])}</text>"
        )
    for s, (name, vs) in enumerate(series.items()):
        colour = f"var(--series-{s % SERIES})"
        runs: list[list[str]] = [[]]
        for i, v in enumerate(vs):
            if v is None or not math.isfinite(v):
                runs.append([])
                continue
            runs[-1].append(f"{x(i):.1f},{y(v):.1f}")
        for run in runs:
            if len(run) > 1:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                    f'points="{" ".join(run)}"/>'
                )
        for i, v in enumerate(vs):
            if v is not None and math.isfinite(v):
                parts.append(
                    f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}">'
                    f"<title>{escape(name)} {escape(labels[i])}: {escape(fmt(v))}</title></circle>"
                )
        parts.append(
            f'<rect x="{left + s * 150}" y="6" width="10" height="10" fill="{colour}"/>'
            f'<text class="legend" x="{left + s * 150 + 14}" y="15">{escape(name)}</text>'
        )
    if not values:
        parts.append(
            f'<text class="axis" x="{left + plot_w / 2}" y="{top + plot_h / 2}" '
            'text-anchor="middle">no data in this window</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _grid(
    left: float, right_x: float, top: float, plot_h: float, top_value: float, fmt: Callable
) -> list[str]:
    """The horizontal grid lines at 0, half and all of ``top_value``, each with its value."""
    parts = []
    for frac in (0, 0.5, 1):
        gy = top + plot_h * (1 - frac)
        parts.append(
            f'<line class="grid" x1="{left}" x2="{right_x}" y1="{gy:.1f}" y2="{gy:.1f}"/>'
            f'<text class="axis" x="{left - 6}" y="{gy + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(top_value * frac))}</text>"
        )
    return parts


def paired_bars(
    labels: Sequence[str],
    first: tuple[str, Sequence[float | None]],
    second: tuple[str, Sequence[float | None]],
    *,
    title: str,
    fmt: Callable[[float], str] = lambda v: f"{v:.0%}",
    width: int = 640,
    height: int = 200,
) -> Markup:
    """Two bars per label (e.g. a cluster's calibration share beside its traffic share)."""
    left, right, top, bottom = 48, 12, 24, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for v in (*first[1], *second[1]) if v is not None]
    top_value = _nice_max(max(values, default=0.0))
    n = max(len(labels), 1)
    slot = plot_w / n
    bar = max(1.0, slot * 0.38)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
    ]
    parts += _grid(left, width - right, top, plot_h, top_value, fmt)
    for s, (name, vs) in enumerate((first, second)):
        colour = f"var(--series-{s})"
        for i, v in enumerate(vs):
            if v is None:
                continue
            h = plot_h * min(v, top_value) / top_value
            bx = left + slot * i + slot * 0.1 + s * bar
            parts.append(
                f'<rect x="{bx:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{escape(name)}, {escape(labels[i])}: '
                f"{escape(fmt(v))}</title></rect>"
            )
        parts.append(
            f'<rect x="{left + s * 170}" y="6" width="10" height="10" fill="{colour}"/>'
            f'<text class="legend" x="{left + s * 170 + 14}" y="15">{escape(name)}</text>'
        )
    step = max(1, math.ceil(len(labels) / 16))
    for i in range(0, len(labels), step):
        parts.append(
            f'<text class="axis" x="{left + slot * (i + 0.5):.1f}" y="{height - 8}" '
            f'text-anchor="middle">{escape(labels[i])}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def interval(
    low: float | None, high: float | None, mark: float | None, *, width: int = 160
) -> Markup:
    """A small [0, 1] strip: the interval as a bar, ``mark`` as a tick (a production mean
    against its calibration interval)."""
    height = 14
    parts = [
        f'<svg class="strip" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
    ]
    parts.append(f'<line class="grid" x1="0" x2="{width}" y1="7" y2="7"/>')
    if low is not None and high is not None:
        parts.append(
            f'<rect x="{low * width:.1f}" y="3" width="{max(1.0, (high - low) * width):.1f}" '
            f'height="8" fill="var(--series-0)" opacity="0.6"/>'
        )
    if mark is not None:
        parts.append(
            f'<rect x="{mark * width - 1.5:.1f}" y="0" width="3" height="{height}" '
            'fill="var(--series-1)"/>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
