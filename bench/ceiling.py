"""The Redis ceiling for kiq's own command pattern, with no job code and no threads.

Each of ``processes`` loops (one connection each) does what a kiq worker's
fetcher does per batch: one round trip (``kiq.roundtrip.RoundTrip.send``) that
acknowledges the k jobs it fetched last time and fetches k new ones. The queue
is filled beforehand with payloads shaped like kiq's; jobs/s = all jobs
fetched / the longest loop's time. Runs in kiq's virtualenv:
``python -m bench.ceiling --redis-url URL --k K --start-at T --seconds S``.

``--body`` measures the other ceiling: the no-op job body alone (one INCR) in a
loop, in the same processes x threads as the workers, with no job system at all.

``--floor wait`` and ``--floor push`` measure the latency floor: one process
blocked in BLMOVE on one thread, and another that LPUSHes its clock reading
every ``--gap`` seconds, as the latency rows' producers do; the waiter records
how late each reading arrives. No job system takes less than this from a push
to a start.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable

import redis

from bench import jobs
from bench.measure import percentile
from kiq.client import build_payload
from kiq.connection import connect
from kiq.keys import Keys
from kiq.retry import SUCCESS
from kiq.roundtrip import Ack, RoundTrip

QUEUE = "default"
FILL_BATCH = 1000
FLOOR_QUEUE, FLOOR_WIP = "bench:floor", "bench:floor:wip"


def fill(client: redis.Redis, jobs: int, queue: str = QUEUE) -> None:
    """LPUSH ``jobs`` kiq payloads of the benchmark's no-op job."""
    template = json.dumps(build_payload("BenchNoop", []), separators=(",", ":"))
    jid = json.loads(template)["jid"]
    key = Keys().queue(queue)
    pipe = client.pipeline(transaction=False)
    for start in range(0, jobs, FILL_BATCH):
        batch = [template.replace(jid, f"{n:024x}") for n in range(start, min(jobs, start + FILL_BATCH))]
        pipe.lpush(key, *batch)
        if len(pipe) >= 50:
            pipe.execute()
    pipe.execute()


def loop(redis_url: str, k: int, start_at: float, seconds: float, identity: str) -> dict[str, float]:
    conn = connect(redis_url, name=f"bench-ceiling-{identity}")
    keys = Keys()
    trip = RoundTrip(conn, keys, identity, [QUEUE], ttl=60.0)
    conn.hset(keys.process(identity), "beat", time.time())  # the entry that every round trip extends
    acks: list[Ack] = []
    fetched = 0
    time.sleep(max(0.0, start_at - time.time()))
    began = time.time()
    end = time.perf_counter() + seconds
    while True:
        units = trip.send(acks, k, [], [QUEUE])  # take k, no per-job picks, from the one queue
        acks = [(unit, SUCCESS) for unit in units]
        fetched += len(units)
        if not units or time.perf_counter() >= end:
            break
    return {"jobs": fetched, "began": began, "ended": time.time()}


Runner = Callable[[list[list[str]]], list[str]]


def measure(run: Runner, client: redis.Redis, redis_url: str, python: str, k: int, seconds: float = 3.0,
            processes: int = 2) -> float:
    """jobs/s of ``processes`` concurrent loops; ``run`` runs argv lists concurrently, returning outputs."""
    client.flushall()
    fill(client, (150_000 if k == 1 else 600_000) * processes // 2)
    start_at = time.time() + 1.5
    argvs = [
        [python, "-m", "bench.ceiling", "--redis-url", redis_url, "--k", str(k), "--start-at", repr(start_at),
         "--seconds", str(seconds), "--identity", f"ceiling{n}"]
        for n in range(processes)
    ]
    results = [json.loads(out.strip().splitlines()[-1]) for out in run(argvs)]
    client.flushall()
    return overall_rate(results)


def overall_rate(results: list[dict[str, float]]) -> float:
    """All loops' jobs over the span from the first loop's start to the last one's end.

    Not the sum of each loop's own rate: a loop that started late ran part of its
    time alone, with the whole machine to itself, and would inflate the sum.
    """
    span = max(r["ended"] for r in results) - min(r["began"] for r in results)
    return sum(r["jobs"] for r in results) / span


def body_loop(threads: int, start_at: float, seconds: float) -> dict[str, float]:
    """The no-op job body alone, ``threads`` threads calling it in a loop: no job system at all."""
    counts: list[int] = []

    def run() -> None:
        n = 0
        while time.perf_counter() < end:
            jobs.noop()
            n += 1
        counts.append(n)

    jobs.conn().ping()
    time.sleep(max(0.0, start_at - time.time()))
    cpu = time.process_time()
    began = time.time()
    end = time.perf_counter() + seconds
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return {"jobs": sum(counts), "began": began, "ended": time.time(), "cpu": time.process_time() - cpu}


def measure_body(run: Runner, client: redis.Redis, python: str, processes: int, threads: int,
                 seconds: float = 3.0) -> dict[str, float]:
    """The job body alone in ``processes`` x ``threads``: jobs/s (the ceiling the body itself
    sets) and the CPU those processes spent per job (what the body costs in any worker)."""
    client.flushall()
    start_at = time.time() + 1.5
    argv = [python, "-m", "bench.ceiling", "--body", "--threads", str(threads), "--start-at", repr(start_at),
            "--seconds", str(seconds)]
    results = [json.loads(out.strip().splitlines()[-1]) for out in run([argv] * processes)]
    client.flushall()
    cpu_us = sum(r["cpu"] for r in results) / sum(r["jobs"] for r in results) * 1e6
    return {"ceiling_body": overall_rate(results), "body_cpu_us": cpu_us}


def floor_wait(redis_url: str, n: int) -> dict[str, list[float]]:
    """The waiting half of the latency floor: milliseconds from each push to its BLMOVE's return."""
    conn = redis.Redis.from_url(redis_url)
    late: list[float] = []
    while len(late) < n:
        raw = conn.blmove(FLOOR_QUEUE, FLOOR_WIP, 10, "RIGHT", "LEFT")
        if raw is None:
            break
        late.append((time.time() - float(raw)) * 1000)
    return {"late_ms": late}


def floor_push(redis_url: str, n: int, gap: float, start_at: float) -> dict[str, int]:
    conn = redis.Redis.from_url(redis_url)
    conn.ping()
    time.sleep(max(0.0, start_at - time.time()))
    for _ in range(n):
        conn.lpush(FLOOR_QUEUE, repr(time.time()))
        time.sleep(gap)
    return {"pushed": n}


def measure_floor(run: Runner, client: redis.Redis, redis_url: str, python: str, n: int,
                  gap: float) -> dict[str, float]:
    """p50 and p99 of the latency floor, in ms (see the module docstring)."""
    client.flushall()
    start_at = time.time() + 1.5
    common = ["--redis-url", redis_url, "--n", str(n), "--start-at", repr(start_at)]
    outs = run([[python, "-m", "bench.ceiling", "--floor", "wait", *common],
                [python, "-m", "bench.ceiling", "--floor", "push", "--gap", str(gap), *common]])
    late = json.loads(outs[0].strip().splitlines()[-1])["late_ms"]
    client.flushall()
    if len(late) < n:
        raise RuntimeError(f"the floor's waiter got {len(late)} of {n} pushes")
    return {"floor_p50_ms": percentile(late, 50), "floor_p99_ms": percentile(late, 99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("--redis-url")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--body", action="store_true", help="time the job body alone (BENCH_REDIS_URL)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--start-at", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--identity", default="ceiling")
    parser.add_argument("--floor", choices=("wait", "push"), help="one half of the latency floor")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.02)
    args = parser.parse_args(argv)
    if args.floor == "wait":
        print(json.dumps(floor_wait(args.redis_url, args.n)), flush=True)
        return 0
    if args.floor == "push":
        print(json.dumps(floor_push(args.redis_url, args.n, args.gap, args.start_at)), flush=True)
        return 0
    if args.body:
        print(json.dumps(body_loop(args.threads, args.start_at, args.seconds)), flush=True)
        return 0
    print(json.dumps(loop(args.redis_url, args.k, args.start_at, args.seconds, args.identity)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
