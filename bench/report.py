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
    ("processing", "processing, from start (jobs/s)", "rate"),
    ("processing_warm", "processing, from 1st job (jobs/s)", "rate"),
    ("startup_s", "start to 1st job (s)", "s"),
    ("latency_p50_ms", "enqueue->start p50 (ms)", "ms"),
    ("latency_p99_ms", "enqueue->start p99 (ms)", "ms"),
    ("sched_p50_ms", "scheduled, late by p50 (ms)", "ms"),
    ("sched_p99_ms", "scheduled, late by p99 (ms)", "ms"),
    ("recovery_s", "SIGKILL -> job restarts (s)", "s"),
    ("rss_idle_mb", "RSS idle worker (MB)", "mb"),
    ("rss_after_mb", "RSS after processing (MB)", "mb"),
    ("worker_cpu_us", "workers' CPU per job (us)", "us"),
    ("redis_cpu_us", "redis-server CPU per job (us)", "us"),
    ("other_cpu", "other processes' CPU (cores)", "cores"),
    ("ceiling_k1", "Redis ceiling, k=1 (jobs/s)", "rate"),
    ("ceiling_k10", "Redis ceiling, k=10 (jobs/s)", "rate"),
    ("ceiling_body", "job body alone (jobs/s)", "rate"),
    ("body_cpu_us", "job body alone, CPU per job (us)", "us"),
    ("floor_p50_ms", "latency floor, bare BLMOVE p50 (ms)", "ms"),
    ("floor_p99_ms", "latency floor, bare BLMOVE p99 (ms)", "ms"),
]
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
    """kiq's processing rate over the fastest peer's, from start and from the first job: of the
    medians, and of each repeat (every system runs once per repeat, so a repeat compares runs
    made minutes apart). Also kiq's rate from the first job over the job body alone's."""
    result: dict[str, Any] = {}
    kiq = medians.get("kiq", {})
    for key in ("processing", "processing_warm"):
        peers = {name: m.get(key) for name, m in medians.items() if name != "kiq"}
        peers = {name: v for name, v in peers.items() if isinstance(v, (int, float))}
        mine = kiq.get(key)
        if not peers or not isinstance(mine, (int, float)):
            continue
        best = max(peers, key=lambda name: peers[name])
        result[key] = {"kiq": mine, "fastest_peer": best, "peer": peers[best], "ratio": mine / peers[best],
                       "per_repeat": _per_repeat(runs, key)}
    body, warm = kiq.get("ceiling_body"), kiq.get("processing_warm")
    if isinstance(body, (int, float)) and isinstance(warm, (int, float)):
        result["of_body"] = {"kiq": warm, "body": body, "ratio": warm / body}
    return result


def _per_repeat(runs: dict[str, list[dict[str, Any]]], key: str) -> list[float]:
    """kiq's ``key`` over the fastest peer's, within each repeat."""
    found = []
    for n, mine in enumerate(runs.get("kiq", [])):
        peers = [r[n][key] for name, r in runs.items()
                 if name != "kiq" and n < len(r) and isinstance(r[n].get(key), (int, float))]
        if isinstance(mine.get(key), (int, float)) and peers:
            found.append(mine[key] / max(peers))
    return found


def ratio_lines(result: dict[str, Any]) -> list[str]:
    labels = {"processing": "from start", "processing_warm": "from 1st job"}
    lines = [
        f"kiq / fastest peer, processing {labels[key]}: {r['kiq']:,.0f} / {r['peer']:,.0f} "
        f"({r['fastest_peer']}) = {r['ratio']:.2f}x; per repeat "
        + ", ".join(f"{x:.2f}x" for x in r["per_repeat"])
        for key, r in result.items() if key in labels
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
    checks: list[Target] = [
        ("processing from start / fastest peer", ratio.get("processing", {}).get("ratio"), ">=", 2.0, "x"),
        ("processing from 1st job / fastest peer", ratio.get("processing_warm", {}).get("ratio"), ">=", 2.0,
         "x"),
        ("enqueue, bulk (jobs/s)", kiq.get("enqueue_bulk"), ">=", 50_000, "rate"),
        ("enqueue->start p50 (ms)", kiq.get("latency_p50_ms"), "<", 1.0, "ms"),
        ("enqueue->start p99 (ms)", kiq.get("latency_p99_ms"), "<", 5.0, "ms"),
        ("scheduled, late by p99 (ms)", kiq.get("sched_p99_ms"), "<=", 50.0, "ms"),
        ("SIGKILL -> job restarts (s)", kiq.get("recovery_s"), "<=", 1.0, "s"),
        ("RSS idle worker (MB)", kiq.get("rss_idle_mb"), "<", 40.0, "mb"),
    ]
    rows = []
    for what, value, sense, goal, fmt in checks:
        met, shown = None, "-"
        if isinstance(value, (int, float)):
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
