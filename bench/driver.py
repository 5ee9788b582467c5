"""The orchestrator's hands inside one system's virtualenv: ``python -m bench.driver SYSTEM COMMAND``.

Commands print one JSON object on their last line of output:

- ``info --processes P --threads T --redis-url URL``: how to start the workers;
- ``enqueue --n N [--bulk] [--within S] [--nap-every K --nap-seconds D]``: enqueue N no-op
  jobs, one per call or in bulk, and time it; with ``--nap-every``, every K-th job is a
  nap of D seconds instead (one per call); with ``--within``, stop after S seconds;
- ``stamps --key K --n N --gap S [--delay D] [--nap-every K --nap-seconds D]``: N jobs
  one at a time, each carrying its enqueue time (or its due time, D seconds later), the
  i-th sent S x i seconds after the first; with ``--nap-every``, every K-th is a nap;
- ``slow --token T --seconds S``: one slow job;
- ``serve --threads T``: run a worker in this process (systems without a CLI that fits).

``bench/ruby/driver.rb`` answers the same commands for Ruby Sidekiq. The system module
is imported by name here, never run as ``__main__``, so the import paths that jobs carry
are the ones the workers import.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from types import ModuleType

BULK_CHUNK = 1000  # jobs per bulk call
CHUNK = 100  # jobs per look at the clock, one per call


def is_nap(index: int, every: int) -> bool:
    """Whether the job at ``index`` (from 0) is a nap: the K-th, 2K-th... when ``every`` is K."""
    return every > 0 and (index + 1) % every == 0


def enqueue(system: ModuleType, args: argparse.Namespace) -> dict[str, object]:
    began, started = time.time(), time.perf_counter()
    sent = 0
    while sent < args.n and not (args.within and time.perf_counter() - started > args.within):
        if is_nap(sent, args.nap_every):
            system.enqueue_nap(args.nap_seconds)
            sent += 1
            continue
        step = min(BULK_CHUNK if args.bulk else CHUNK, args.n - sent)
        if args.nap_every:
            step = min(step, args.nap_every - 1 - sent % args.nap_every)
        system.enqueue_noop(step, args.bulk)
        sent += step
    return {"seconds": time.perf_counter() - started, "jobs": sent, "began": began}


def stamps(system: ModuleType, args: argparse.Namespace) -> None:
    first = time.perf_counter()
    for index in range(args.n):
        time.sleep(max(0.0, first + index * args.gap - time.perf_counter()))
        if is_nap(index, args.nap_every):
            system.enqueue_nap(args.nap_seconds)
        elif args.delay:
            system.enqueue_stamp(args.key, time.time() + args.delay, args.delay)
        else:
            system.enqueue_stamp(args.key, time.time(), 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.driver")
    parser.add_argument("system")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info")
    info.add_argument("--processes", type=int, required=True)
    info.add_argument("--threads", type=int, required=True)
    info.add_argument("--redis-url", required=True)
    enqueue_parser = sub.add_parser("enqueue")
    enqueue_parser.add_argument("--n", type=int, required=True)
    enqueue_parser.add_argument("--bulk", action="store_true")
    enqueue_parser.add_argument("--within", type=float, default=0.0)
    stamps_parser = sub.add_parser("stamps")
    stamps_parser.add_argument("--key", required=True)
    stamps_parser.add_argument("--n", type=int, required=True)
    stamps_parser.add_argument("--gap", type=float, default=0.02)
    stamps_parser.add_argument("--delay", type=float, default=0.0)
    for command in (enqueue_parser, stamps_parser):
        command.add_argument("--nap-every", type=int, default=0)
        command.add_argument("--nap-seconds", type=float, default=0.0)
    slow = sub.add_parser("slow")
    slow.add_argument("--token", required=True)
    slow.add_argument("--seconds", type=float, required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)

    system: ModuleType = importlib.import_module(f"bench.systems.{args.system}")
    result: dict[str, object] = {}
    if args.command == "info":
        result = system.workers(args.processes, args.threads, args.redis_url, sys.executable)
    elif args.command == "enqueue":
        result = enqueue(system, args)
    elif args.command == "stamps":
        stamps(system, args)
    elif args.command == "slow":
        system.enqueue_slow(args.token, args.seconds)
    elif args.command == "serve":
        system.serve(args.threads)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
