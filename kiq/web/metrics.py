"""The Metrics pages: each job class's count, failures and run times (kiq.execution), from the
per-minute records that kiq's workers and Sidekiq 7 keep.

The query string holds the page's state: ``hours`` (the period), ``sort`` and ``order`` (the
table's column and direction) and ``q`` (a filter on the class name).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from kiq.execution import ClassMetrics
from kiq.web import charts, paging, render

if TYPE_CHECKING:
    from kiq.web.application import View

HOURS = (1, 8, 24, 72)  # a class's page; it reads only that class's fields of each minute
TABLE_HOURS = (1, 8, 24)  # the table of every class reads every field, and each class's histograms
POINTS = 120  # at most this many points per chart: a longer period adds up several minutes a point
SHARES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def _percentile(share: float) -> Callable[[ClassMetrics], float | None]:
    return lambda each: each.percentile(share)


COLUMNS: dict[str, Callable[[ClassMetrics], Any]] = {  # a column's value, None where there is none
    "class": lambda each: each.name,
    "processed": lambda each: each.processed,
    "failed": lambda each: each.failed,
    "time": lambda each: each.ms,
    "mean": lambda each: each.mean_ms,
    **{name: _percentile(share) for name, share in SHARES},
}


def metrics(view: View) -> Response:
    hours = paging.choice(view.request.args.get("hours"), TABLE_HOURS)
    found = view.shards.job_metrics(minutes=hours * 60)  # each class added up over the shards
    text = view.request.args.get("q", "").strip()
    if text:
        found = [each for each in found if text.lower() in each.name.lower()]
    column = view.request.args.get("sort")
    column = column if column in COLUMNS else "time"
    descending = view.request.args.get("order", first_order(column)) == "desc"
    # A heading's link: the other way round for the column sorted on, else that column's first order.
    orders = {key: first_order(key) for key in COLUMNS}
    orders[column] = "asc" if descending else "desc"
    return view.render("metrics.html", rows=ordered(found, column, descending), hours=hours,
                       choices=TABLE_HOURS, column=column, descending=descending, orders=orders, text=text,
                       shares=SHARES)


def first_order(column: str) -> str:
    """Names A to Z; numbers largest first."""
    return "asc" if column == "class" else "desc"


def job_metrics(view: View, name: str) -> Response:
    """One class: its totals over the last hour and the last day, and per-minute charts of the
    chosen period."""
    hours = paging.choice(view.request.args.get("hours"), HOURS)
    series = view.shards.job_series(name, minutes=max(hours, 24) * 60)
    totals = {"last hour": added(name, series[-60:]), "last day": added(name, series[-24 * 60:])}
    shown = grouped(name, series[-hours * 60:])
    times = [view_time(minute) for minute, _ in shown]
    counts = charts.lines(f"{name}: jobs per {step(hours)}", times,
                          {"processed": [each.processed for _, each in shown],
                           "failed": [each.failed for _, each in shown]}, "{:,.0f}".format)
    runs = charts.lines(f"{name}: run times", times,
                        {label: [each.percentile(share) for _, each in shown] for label, share in SHARES},
                        render.millis)
    return view.render("job_metrics.html", name=name, totals=totals, hours=hours, choices=HOURS,
                       counts=counts, runs=runs, step=step(hours), shares=SHARES)


def ordered(rows: Sequence[ClassMetrics], column: str, descending: bool) -> list[ClassMetrics]:
    """The rows by ``column``; rows without a value there (no job succeeded: no run time) last."""
    key = COLUMNS[column]
    present = [row for row in rows if key(row) is not None]
    return sorted(present, key=key, reverse=descending) + [row for row in rows if key(row) is None]


def added(name: str, series: Sequence[tuple[int, ClassMetrics]]) -> ClassMetrics:
    total = ClassMetrics(name)
    for _, each in series:
        total += each
    return total


def grouped(name: str, series: Sequence[tuple[int, ClassMetrics]]) -> list[tuple[int, ClassMetrics]]:
    """The series with every few minutes added up, so that a chart has at most ``POINTS`` points;
    each point keeps its first minute."""
    size = max(1, -(-len(series) // POINTS))
    return [(series[start][0], added(name, series[start: start + size]))
            for start in range(0, len(series), size)]


def step(hours: int) -> str:
    minutes = max(1, -(-hours * 60 // POINTS))
    return "minute" if minutes == 1 else f"{minutes} minutes"


def view_time(minute: int) -> str:
    """A point's time on a chart's axis: ``09:07`` in UTC, as the rest of the dashboard."""
    return f"{minute // 60 % 24:02d}:{minute % 60:02d}"
