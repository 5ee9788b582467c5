"""``bench/compare.py REV [REV ...]``: kiq against itself, one git revision per column.

Each round drains the same ``--jobs`` no-op jobs through ``kiq start`` (2 x 10 by
default) from every revision in turn, interleaved, so that the machine's drift
falls on all of them alike; the table shows medians over ``--rounds``. Per drain:
jobs/s from the start command and from the first job, the workers' CPU per job,
and their thread switches per job (voluntary and not, from ``/proc``), the figure
that moves kiq's CPU per job most on this machine. Then, with the workers idle,
``--latency`` jobs enqueued one at a time 20 ms apart give the p50 and p99 from
enqueue to start, as ``make bench`` measures them.

A revision is anything ``git archive`` takes; ``worktree`` is the working tree
as it is. Each one is unpacked into a temporary folder and run from there:
``python -m`` puts the working directory first on ``sys.path``, so a process
started in the repository would import the repository's kiq whatever
``PYTHONPATH`` says. The harness's bench package and redis-py are the same for all.
"""

from __future__ import annotations

import argparse
import compileall
import io
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

if __package__ in (None, ""):  # run as a script: make the repository importable instead of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import jobs, peers_env
from bench.measure import percentile
from bench.procs import ROOT, Procs, at_depth, cpu_seconds, switches, wait_for
from bench.redisd import RedisServer
from bench.run import kiq_python

STALL_SECONDS = 60.0


def python() -> Path:
    """The peers' interpreter where ``make bench`` made it (the redis-py every system shares there)."""
    return peers_env.python() if peers_env.python().exists() else kiq_python()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/compare.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="+", help="git revisions, or worktree")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--latency", type=int, default=100, help="idle jobs timed after each drain (0: none)")
    return parser.parse_args(argv)


def unpack(revision: str, into: Path) -> Path:
    """kiq/ as it is at ``revision`` (or the working tree's), compiled, in a folder of its own."""
    tree = into / revision.replace("/", "_")
    tree.mkdir()
    if revision == "worktree":
        os.symlink(ROOT / "kiq", tree / "kiq")
    else:
        archive = subprocess.run(["git", "archive", revision, "kiq"], cwd=ROOT, capture_output=True,
                                 check=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tree, filter="data")
    compileall.compile_dir(tree / "kiq", quiet=1)
    return tree


def drain(procs: Procs, client: redis.Redis, url: str, tree: Path,
          args: argparse.Namespace) -> dict[str, float]:
    """One drain of ``args.jobs`` jobs by the kiq in ``tree``."""
    client.flushall()
    env = {"PATH": f"{python().parent}:/usr/bin:/bin", "PYTHONPATH": f"{tree}:{ROOT}",
           "BENCH_REDIS_URL": url, "BENCH_TARGET": str(args.jobs)}
    fill = f"from bench.systems import kiq\nkiq.enqueue_noop({args.jobs}, bulk=True)"
    subprocess.run([str(python()), "-c", fill], cwd=tree, env=env, check=True, timeout=120)
    began = time.time()
    master = procs.spawn([str(python()), "-m", "kiq", "start", "-r", "bench.systems.kiq", "-q", "default",
                          "-p", str(args.processes), "--concurrency", str(args.threads), "--redis-url", url,
                          "--log-level", "warning", "--metrics-port", "0"], env, "kiq", cwd=tree)
    try:
        wait_for(lambda: client.exists(jobs.stamp_key(1)), STALL_SECONDS, 0.002, "the first job")
        workers = at_depth([master.pid], "leaves")
        cpu, switched = sum(map(cpu_seconds, workers)), sum(map(switches, workers))
        wait_for(lambda: client.exists(jobs.stamp_key(args.jobs)), STALL_SECONDS * 5, 0.002, "the last job")
        cpu, switched = sum(map(cpu_seconds, workers)) - cpu, sum(map(switches, workers)) - switched
        late = idle_latency(client, env, tree, args.latency, args.processes)
    finally:
        procs.stop([master])
    first, last = (float(client.get(jobs.stamp_key(n))) for n in (1, args.jobs))
    result = {"from_start": args.jobs / (last - began), "from_first": (args.jobs - 1) / (last - first),
              "cpu_us": cpu / args.jobs * 1e6, "switches": switched / args.jobs}
    if late:
        result |= {"p50_ms": percentile(late, 50), "p99_ms": percentile(late, 99)}
    return result


def idle_latency(client: redis.Redis, env: dict[str, str], tree: Path, count: int,
                 workers: int) -> list[float]:
    """Milliseconds from enqueue to start of ``count`` jobs sent one at a time to idle workers."""
    if not count:
        return []
    # Idle: every worker blocks in BLMOVE on the queue (older revisions too, on a waiter thread).
    wait_for(lambda: int(client.info("clients")["blocked_clients"]) >= workers, STALL_SECONDS, 0.01,
             "idle workers")
    command = [str(python()), "-m", "bench.driver", "kiq", "stamps", "--key", jobs.LATENCY, "--n", str(count),
               "--gap", "0.02"]
    subprocess.run(command, cwd=tree, env=env, check=True, timeout=60 + count * 0.04,
                   stdout=subprocess.DEVNULL)
    wait_for(lambda: client.llen(jobs.LATENCY) >= count, STALL_SECONDS, 0.01, "the latency jobs")
    return [float(v) * 1000 for v in client.lrange(jobs.LATENCY, 0, -1)]


ROWS = (("from_start", "jobs/s from start", "{:,.0f}"), ("from_first", "jobs/s from 1st job", "{:,.0f}"),
        ("cpu_us", "workers' CPU per job (us)", "{:.1f}"), ("switches", "thread switches per job", "{:.2f}"),
        ("p50_ms", "idle enqueue->start p50 (ms)", "{:.3f}"),
        ("p99_ms", "idle enqueue->start p99 (ms)", "{:.3f}"))


def table(results: dict[str, list[dict[str, float]]]) -> str:
    names = list(results)
    width = max(14, *(len(n) for n in names))
    lines = [f"{'':28}" + "".join(f"{n:>{width + 2}}" for n in names)]
    for key, label, fmt in ROWS:
        if not all(key in run for runs in results.values() for run in runs):
            continue
        cells = [fmt.format(statistics.median(r[key] for r in runs)) for runs in results.values()]
        lines.append(f"{label:28}" + "".join(f"{c:>{width + 2}}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="kiq-compare-"))
    procs = Procs(work)
    results: dict[str, list[dict[str, Any]]] = {rev: [] for rev in args.revisions}
    try:
        trees = {rev: unpack(rev, work) for rev in args.revisions}
        (work / "redis").mkdir()
        server = RedisServer(procs, work / "redis")
        client = server.start()
        for round_ in range(1, args.rounds + 1):
            for rev, tree in trees.items():
                run = drain(procs, client, server.url, tree, args)
                results[rev].append(run)
                print(f"round {round_} {rev}: " + ", ".join(f"{k}={v:,.2f}" for k, v in run.items()),
                      flush=True)
    except KeyboardInterrupt:
        return 130
    finally:
        procs.stop_all()
    print(f"\nmedians of {args.rounds} interleaved drains of {args.jobs:,} jobs, "
          f"{args.processes} x {args.threads}:\n{table(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
