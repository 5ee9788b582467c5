"""The one table (systems side by side, medians of the repeats), kiq's ratio, and the machine."""

from __future__ import annotations

import os
import platform
from typing import Any

# (key, label, format) in table order; the format turns a number into a cell.
ROWS: list[tuple[str, str, str]] = [
    ("shape", "workers used", "text"),
    ("enqueue_single", "enqueue, 1 job per call (jobs/s)", "rate"),
    ("enqueue_bulk", "enqueue, bulk (jobs/s)", "rate"),
    ("jobs", "jobs per processing run", "rate"),
    ("processing", "processing, from start (jobs/s)", "rate"),
    ("processing_warm", "processing, from 1st job (jobs/s)", "rate"),
    ("processing_s", "processing, 1st job to last (s)", "s"),
    ("startup_s", "start to 1st job (s)", "s"),
    ("worker_cpu_us", "workers' CPU per job (us)", "us"),
    ("redis_cpu_us", "redis-server CPU per job (us)", "us"),
    ("worker_cores", "cores used by the workers", "cores"),
    ("redis_cores", "cores used by redis-server", "cores"),
    ("other_cpu", "other processes' CPU (cores)", "cores"),
    ("mixed_rate", "mixed, 1% of 100 ms: jobs/s", "rate"),
    ("mixed_p50_ms", "mixed, fast jobs: enq->start p50 (ms)", "ms"),
    ("mixed_p99_ms", "mixed, fast jobs: enq->start p99 (ms)", "ms"),
    ("long_slots", "long jobs: slots (2 procs)", "rate"),
    ("long_0.2", "long 0.2 s jobs: makespan / ideal", "x"),
    ("long_1", "long 1 s jobs: makespan / ideal", "x"),
    ("long_2", "long 2 s jobs: makespan / ideal", "x"),
    ("latency_p50_ms", "enqueue->start p50 (ms)", "ms"),
    ("latency_p99_ms", "enqueue->start p99 (ms)", "ms"),
    ("sched_p50_ms", "scheduled, late by p50 (ms)", "ms"),
    ("sched_p99_ms", "scheduled, late by p99 (ms)", "ms"),
    ("recovery_s", "SIGKILL -> job restarts (s)", "s"),
    ("rss_idle_mb", "RSS idle worker (MB)", "mb"),
    ("rss_after_mb", "RSS after processing (MB)", "mb"),
    ("ceiling_k1", "Redis ceiling, k=1 (jobs/s)", "rate"),
    ("ceiling_k10", "Redis ceiling, k=10 (jobs/s)", "rate"),
    ("ceiling_body", "job body alone (jobs/s)", "rate"),
    ("body_cpu_us", "job body alone, CPU per job (us)", "us"),
    ("floor_p50_ms", "latency floor, bare BLMOVE p50 (ms)", "ms"),
    ("floor_p99_ms", "latency floor, bare BLMOVE p99 (ms)", "ms"),
]
RUBY = ("sidekiq6", "sidekiq7")
MAX_CELL = 24


def cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        if value.startswith("ERR"):
            return "ERR"
        return value if len(value) <= MAX_CELL else value[: MAX_CELL - 1] + "~"
    if fmt == "rate":
        return f"{value:,.0f}"
    if fmt == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    if fmt == "s":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if fmt == "mb":
        return f"{value:.1f}"
    if fmt == "us":
        return f"{value:,.0f}"
    if fmt == "cores":
        return f"{value:.2f}"
    if fmt == "x":
        return f"{value:.2f}x"
    return str(value)


def table(systems: list[str], medians: dict[str, dict[str, Any]]) -> str:
    header = ["", *systems]
    lines = [header]
    for key, label, fmt in ROWS:
        if all(medians.get(name, {}).get(key) is None for name in systems):
            continue
        lines.append([label, *(cell(medians.get(name, {}).get(key), fmt) for name in systems)])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for n, row in enumerate(lines):
        first = row[0].ljust(widths[0])
        rest = [value.rjust(widths[i + 1]) for i, value in enumerate(row[1:])]
        out.append("  ".join([first, *rest]))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def ratios(medians: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """kiq's processing rate over the fastest Python peer's and over the faster Ruby Sidekiq's,
    from start and from the first job: of the medians, and of each repeat (every system runs
    once per repeat, so a repeat compares runs made minutes apart). Also kiq's one-per-call
    enqueue over the fastest peer's, and its rate from the first job over the job body alone's."""
    result: dict[str, Any] = {}
    groups = {"python": lambda name: name not in RUBY, "sidekiq": lambda name: name in RUBY,
              "any": lambda name: True}
    wanted = [("processing", "python"), ("processing_warm", "python"), ("processing", "sidekiq"),
              ("processing_warm", "sidekiq"), ("enqueue_single", "any")]
    for key, group in wanted:
        peers = {name: m.get(key) for name, m in medians.items() if name != "kiq" and groups[group](name)}
        peers = {name: v for name, v in peers.items() if _number(v)}
        mine = medians.get("kiq", {}).get(key)
        if not peers or not _number(mine):
            continue
        best = max(peers, key=lambda name: peers[name])
        result[f"{key}/{group}"] = {"key": key, "group": group, "kiq": mine, "fastest_peer": best,
                                    "peer": peers[best], "ratio": mine / peers[best],
                                    "per_repeat": _per_repeat(runs, key, groups[group])}
    kiq = medians.get("kiq", {})
    body, warm = kiq.get("ceiling_body"), kiq.get("processing_warm")
    if _number(body) and _number(warm):
        result["of_body"] = {"kiq": warm, "body": body, "ratio": warm / body}
    return result


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _per_repeat(runs: dict[str, list[dict[str, Any]]], key: str, member: Any) -> list[float]:
    """kiq's ``key`` over the fastest peer's of the group, within each repeat."""
    found = []
    for n, mine in enumerate(runs.get("kiq", [])):
        peers = [r[n][key] for name, r in runs.items()
                 if name != "kiq" and member(name) and n < len(r) and _number(r[n].get(key))]
        if _number(mine.get(key)) and peers:
            found.append(mine[key] / max(peers))
    return found


def ratio_lines(result: dict[str, Any]) -> list[str]:
    labels = {"processing": "processing from start", "processing_warm": "processing from 1st job",
              "enqueue_single": "enqueue, 1 job per call"}
    groups = {"python": "fastest Python peer", "sidekiq": "faster Ruby Sidekiq", "any": "fastest peer"}
    lines = [
        f"kiq / {groups[r['group']]}, {labels[r['key']]}: {r['kiq']:,.0f} / {r['peer']:,.0f} "
        f"({r['fastest_peer']}) = {r['ratio']:.2f}x; per repeat "
        + ", ".join(f"{x:.2f}x" for x in r["per_repeat"])
        for name, r in result.items() if name != "of_body"
    ]
    if "of_body" in result:
        r = result["of_body"]
        lines.append(f"kiq processing from 1st job / job body alone: {r['kiq']:,.0f} / {r['body']:,.0f} "
                     f"= {100 * r['ratio']:.0f}%")
    return lines


# DESIGN.md section 5, as far as one bench run measures it: (what, kiq's value, at least or at
# most, goal, format). Chaos has its own test; memory over a million jobs is ``make soak``.
Target = tuple[str, Any, str, float, str]


def targets(medians: dict[str, dict[str, Any]], ratio: dict[str, Any]) -> list[dict[str, Any]]:
    """kiq's column against the targets: the goal, what was measured, and whether it was met
    (None when this run did not measure it)."""
    kiq = medians.get("kiq", {})

    def times(name: str) -> Any:
        return ratio.get(name, {}).get("ratio")

    own, body = kiq.get("worker_cpu_us"), kiq.get("body_cpu_us")
    own_share = (own - body) / body if _number(own) and _number(body) and body else None
    checks: list[Target] = [
        ("processing from start / fastest Python peer", times("processing/python"), ">=", 3.0, "x"),
        ("processing from 1st job / fastest Python peer", times("processing_warm/python"), ">=", 3.0, "x"),
        ("processing from start / faster Ruby Sidekiq", times("processing/sidekiq"), ">=", 1.5, "x"),
        ("processing from 1st job / faster Ruby Sidekiq", times("processing_warm/sidekiq"), ">=", 1.5, "x"),
        ("kiq's own CPU per job / the job body's", own_share, "<=", 0.5, "x"),
        ("enqueue, 1 job per call / fastest peer", times("enqueue_single/any"), ">=", 1.0, "x"),
        ("enqueue, bulk (jobs/s)", kiq.get("enqueue_bulk"), ">=", 50_000, "rate"),
        ("long 0.2 s jobs: makespan / ideal", kiq.get("long_0.2"), "<=", 1.1, "x"),
        ("long 1 s jobs: makespan / ideal", kiq.get("long_1"), "<=", 1.1, "x"),
        ("long 2 s jobs: makespan / ideal", kiq.get("long_2"), "<=", 1.1, "x"),
        ("mixed, fast jobs: enqueue->start p99 (ms)", kiq.get("mixed_p99_ms"), "<", 5.0, "ms"),
        ("enqueue->start p50 (ms)", kiq.get("latency_p50_ms"), "<", 1.0, "ms"),
        ("enqueue->start p99 (ms)", kiq.get("latency_p99_ms"), "<", 5.0, "ms"),
        ("scheduled, late by p99 (ms)", kiq.get("sched_p99_ms"), "<=", 50.0, "ms"),
        ("SIGKILL -> job restarts (s)", kiq.get("recovery_s"), "<=", 1.0, "s"),
        ("RSS idle worker (MB)", kiq.get("rss_idle_mb"), "<", 40.0, "mb"),
    ]
    rows = []
    for what, value, sense, goal, fmt in checks:
        met, shown = None, "-"
        if _number(value):
            met = {">=": value >= goal, "<": value < goal, "<=": value <= goal}[sense]
            shown = cell(value, fmt)
        rows.append({"target": what, "goal": f"{sense} {cell(goal, fmt)}", "measured": shown, "met": met})
    return rows


def target_lines(rows: list[dict[str, Any]]) -> list[str]:
    width = max(len(row["target"]) for row in rows)
    verdicts = {True: "met", False: "NOT MET", None: "not measured"}
    return [f"  {row['target']:<{width}}  {row['goal']:>10}  {row['measured']:>10}  {verdicts[row['met']]}"
            for row in rows]


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        info["cpu"] = models[0] if models else platform.machine()
    except OSError:
        info["cpu"] = platform.machine()
    try:
        with open("/proc/meminfo") as meminfo:
            total_kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
        info["memory_gib"] = round(total_kb / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    info["loadavg_at_start"] = os.getloadavg()
    return info
