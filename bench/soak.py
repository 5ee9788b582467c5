"""``make soak``: does a kiq worker's memory stay flat over a million jobs?

Starts a private redis-server and ``kiq start`` (2 processes x 10 threads by
default) on the benchmark's no-op job, keeps the queue topped up with bulk
enqueues until ``--jobs`` have been sent, and samples every worker's RSS as the
count grows. It prints RSS at a few points of the run and the growth per 100,000
jobs after a warm-up, and writes every sample to ``bench/results/soak-*.json``.
Every process it starts is stopped by pid at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable instead of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import jobs, report
from bench.procs import ROOT, Procs, Timeout, at_depth, rss_mb
from bench.redisd import RedisServer
from bench.run import kiq_python

RESULTS = ROOT / "bench" / "results"
TOP_UP = 10_000  # jobs per bulk enqueue
LOW_WATER = 40_000  # enqueue more when the queue is shorter than this
WARM_UP = 0.1  # growth is measured from this fraction of the run on
STALL_SECONDS = 60.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__)
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs to run (1000000)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples (2)")
    return parser.parse_args(argv)


def enqueue(n: int) -> None:
    """Bulk-enqueue ``n`` no-op jobs through kiq's client (this process runs kiq's code)."""
    from bench.systems.kiq import BenchNoop

    BenchNoop.perform_bulk([[] for _ in range(n)])


def soak(args: argparse.Namespace, procs: Procs) -> list[dict[str, Any]]:
    import kiq

    redis_dir = procs.log_dir / "redis"
    redis_dir.mkdir()
    server = RedisServer(procs, redis_dir)
    client = server.start()
    kiq.configure(server.url)
    env = {"PATH": f"{kiq_python().parent}:/usr/bin:/bin", "PYTHONPATH": str(ROOT),
           "BENCH_REDIS_URL": server.url, "BENCH_TARGET": "0", "PYTHONUNBUFFERED": "1"}
    command = [str(kiq_python()), "-m", "kiq", "start", "-r", "bench.systems.kiq", "-q", "default",
               "-p", str(args.processes), "--concurrency", str(args.threads), "--redis-url", server.url,
               "--log-level", "warning", "--metrics-port", "0"]
    master = procs.spawn(command, env, "kiq")
    sent, samples = 0, []
    started = last_sample = last_progress = time.monotonic()
    last_count = -1
    while True:
        count = int(client.get(jobs.COUNTER) or 0)
        now = time.monotonic()
        if sent < args.jobs and client.llen("queue:default") < LOW_WATER:
            batch = min(TOP_UP, args.jobs - sent)
            enqueue(batch)
            sent += batch
        if now - last_sample >= args.every or count >= args.jobs:
            workers = at_depth([master.pid], "leaves")
            samples.append({"seconds": round(now - started, 1), "jobs": count,
                            "rss_mb": {str(pid): rss_mb(pid) for pid in workers}})
            print(f"[{now - started:6.0f}s] {count:>9,} jobs  worker RSS "
                  + " ".join(f"{mb:.1f}" for mb in samples[-1]["rss_mb"].values()) + " MB", flush=True)
            last_sample = now
        if count >= args.jobs:
            return samples
        if count != last_count:
            last_count, last_progress = count, now
        elif now - last_progress > STALL_SECONDS:
            raise Timeout(f"stalled at {count:,} jobs for {STALL_SECONDS:.0f}s")
        if master.poll() is not None:
            raise RuntimeError(f"kiq exited with code {master.returncode} (log in {procs.log_dir})")
        time.sleep(0.05)


def growth(samples: list[dict[str, Any]], total: int) -> dict[str, float]:
    """Per worker: MB per 100,000 jobs, a least-squares slope over the samples after the warm-up."""
    slopes = {}
    late = [s for s in samples if s["jobs"] >= WARM_UP * total]
    for pid in late[-1]["rss_mb"] if late else []:
        points = [(s["jobs"], s["rss_mb"][pid]) for s in late if pid in s["rss_mb"]]
        if len(points) < 2:
            continue
        mean_x = sum(x for x, _ in points) / len(points)
        mean_y = sum(y for _, y in points) / len(points)
        spread = sum((x - mean_x) ** 2 for x, _ in points)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
        slopes[pid] = round(slope * 100_000, 3)
    return slopes


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    procs = Procs(Path(tempfile.mkdtemp(prefix=f"kiq-soak-{stamp}-")))
    began = time.time()
    samples: list[dict[str, Any]] = []
    code = 0
    try:
        samples = soak(args, procs)
    except KeyboardInterrupt:
        code = 130
    except Exception as error:
        print(f"failed: {type(error).__name__}: {error}")
        code = 1
    finally:
        procs.stop_all()
    if not samples:
        return code or 1
    slopes = growth(samples, args.jobs)
    first = next((s for s in samples if s["jobs"] > 0), samples[0])
    print(f"\n{samples[-1]['jobs']:,} jobs in {time.time() - began:.0f} s, {args.processes} x {args.threads}")
    points = (("first jobs", first), ("half way", samples[len(samples) // 2]), ("end", samples[-1]))
    for label, sample in points:
        sizes = ", ".join(f"{mb:.1f}" for mb in sample["rss_mb"].values())
        print(f"  worker RSS at {label:<10} ({sample['jobs']:>9,} jobs): {sizes} MB")
    print("  growth after the first 10%, MB per 100,000 jobs: "
          + ", ".join(f"{slope:+.3f}" for slope in slopes.values()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"soak-{stamp}.json"
    path.write_text(json.dumps({"command": sys.argv, "settings": vars(args), "machine": report.machine(),
                                "growth_mb_per_100k": slopes, "samples": samples}, indent=2))
    print(f"  samples in {path.relative_to(ROOT)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
