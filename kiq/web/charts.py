"""Charts drawn on the server as inline SVG: no script, no library, nothing fetched.

Every label goes through markupsafe's escape, like the rest of the page.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 760, 220
LEFT, BOTTOM, TOP = 56, 28, 10


def daily_bars(rows: Sequence[tuple[str, int, int]]) -> Markup:
    """Processed and failed jobs per day as pairs of bars, with the largest count on the y axis,
    a date under every few bars, and each day's numbers in a tooltip."""
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    peak = max([1, *(processed for _, processed, _ in rows), *(failed for _, _, failed in rows)])
    slot = plot_w / max(1, len(rows))
    every = max(1, len(rows) // 8)
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="processed and failed jobs per day">',
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
            parts.append(f'<text class="label" x="{x:.1f}" y="{HEIGHT - 8}">{escape(date[5:])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
