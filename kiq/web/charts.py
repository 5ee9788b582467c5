"""Charts drawn on the server as inline SVG: no script, no library, nothing fetched.

Every label goes through markupsafe's escape, like the rest of the page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 760, 220
LEFT, BOTTOM, TOP = 56, 28, 10


def bars(rows: Sequence[tuple[str, int, int]], what: str, axis: Callable[[str], str]) -> Markup:
    """Processed and failed jobs per ``what`` (day, hour) as pairs of bars, with the largest count
    on the y axis, the ``axis`` part of a row's name (a date, an hour) under every few bars, and
    each row's numbers in a tooltip."""
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    peak = max([1, *(processed for _, processed, _ in rows), *(failed for _, _, failed in rows)])
    slot = plot_w / max(1, len(rows))
    every = max(1, len(rows) // 8)
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="processed and failed jobs per {escape(what)}">',
             f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 8}" y2="{TOP + plot_h}"/>',
             f'<text class="label" x="{LEFT - 6}" y="{TOP + 10}" text-anchor="end">{peak:,}</text>',
             f'<text class="label" x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">0</text>']
    for index, (date, processed, failed) in enumerate(rows):
        x = LEFT + index * slot
        bar = max(1.0, slot / 2 - 1)
        parts.append(f"<g><title>{escape(date)}: {processed:,} processed, {failed:,} failed</title>")
        for offset, value, kind in ((0.0, processed, "processed"), (bar, failed, "failed")):
            height = plot_h * value / peak
            parts.append(f'<rect class="{kind}" x="{x + offset:.1f}" y="{TOP + plot_h - height:.1f}" '
                         f'width="{bar:.1f}" height="{height:.1f}"/>')
        parts.append("</g>")
        if index % every == 0:
            parts.append(f'<text class="label" x="{x:.1f}" y="{HEIGHT - 8}">{escape(axis(date))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def lines(label: str, times: Sequence[str], series: Mapping[str, Sequence[float | None]],
          shown: Callable[[float], str]) -> Markup:
    """Named series over the same points in time as lines (a series' name is its line's class,
    for its colour), broken where a value is missing (a minute without a run time); the largest
    value on the y axis, a time under every few points, and each point's values in a tooltip,
    every value as ``shown`` writes it."""
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    peak = max([value for values in series.values() for value in values if value is not None], default=0) or 1
    slot = plot_w / max(1, len(times) - 1)
    every = max(1, len(times) // 8)

    def x(index: int) -> str:
        return f"{LEFT + index * slot:.1f}"

    def y(value: float) -> str:
        return f"{TOP + plot_h - plot_h * value / peak:.1f}"

    top = escape(shown(peak))
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}">',
             f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 8}" y2="{TOP + plot_h}"/>',
             f'<text class="label" x="{LEFT - 6}" y="{TOP + 10}" text-anchor="end">{top}</text>',
             f'<text class="label" x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">0</text>']
    for name, values in series.items():
        for run in _runs(values):
            at = [(x(index), y(values[index] or 0)) for index in run]
            if len(at) == 1:  # a point alone: a dot
                parts.append(f'<circle class="{escape(name)}" r="2.5" cx="{at[0][0]}" cy="{at[0][1]}"/>')
            else:
                points = " ".join(f"{left},{height}" for left, height in at)
                parts.append(f'<polyline class="{escape(name)}" points="{points}"/>')
    for index, moment in enumerate(times):
        tip = ", ".join(f"{name} {_shown(values[index], shown)}" for name, values in series.items())
        left = LEFT + (index - 0.5) * slot
        parts.append(f'<rect class="hover" x="{left:.1f}" y="{TOP}" width="{slot:.1f}" height="{plot_h}">'
                     f'<title>{escape(moment)}: {escape(tip)}</title></rect>')
        if index % every == 0:
            parts.append(f'<text class="label" x="{x(index)}" y="{HEIGHT - 8}" text-anchor="middle">'
                         f'{escape(moment)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _runs(values: Sequence[float | None]) -> list[list[int]]:
    """The indexes of each stretch of values without a gap."""
    runs: list[list[int]] = []
    for index, value in enumerate(values):
        if value is None:
            continue
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def _shown(value: float | None, shown: Callable[[float], str]) -> str:
    return "-" if value is None else shown(value)
