"""The orchestrator's hands inside one system's virtualenv: ``python -m bench.driver SYSTEM COMMAND``.

Commands print one JSON object on their last line of output:

- ``info --processes P --threads T --redis-url URL``: how to start the workers;
- ``enqueue --n N [--bulk]``: enqueue N no-op jobs, one per call or in bulk, and time it;
- ``stamps --key K --n N --gap S [--delay D]``: N jobs one at a time, each carrying its
  enqueue time (or its due time, D seconds later), S seconds apart;
- ``slow --token T --seconds S``: one slow job;
- ``serve --threads T``: run a worker in this process (systems without a CLI that fits).

The system module is imported by name here, never run as ``__main__``, so the
import paths that jobs carry are the ones the workers import.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from types import ModuleType


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.driver")
    parser.add_argument("system")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info")
    info.add_argument("--processes", type=int, required=True)
    info.add_argument("--threads", type=int, required=True)
    info.add_argument("--redis-url", required=True)
    enqueue = sub.add_parser("enqueue")
    enqueue.add_argument("--n", type=int, required=True)
    enqueue.add_argument("--bulk", action="store_true")
    stamps = sub.add_parser("stamps")
    stamps.add_argument("--key", required=True)
    stamps.add_argument("--n", type=int, required=True)
    stamps.add_argument("--gap", type=float, default=0.02)
    stamps.add_argument("--delay", type=float, default=0.0)
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
        started = time.perf_counter()
        system.enqueue_noop(args.n, args.bulk)
        result = {"seconds": time.perf_counter() - started, "jobs": args.n}
    elif args.command == "stamps":
        for _ in range(args.n):
            if args.delay:
                system.enqueue_stamp(args.key, time.time() + args.delay, args.delay)
            else:
                system.enqueue_stamp(args.key, time.time(), 0.0)
            time.sleep(args.gap)
    elif args.command == "slow":
        system.enqueue_slow(args.token, args.seconds)
    elif args.command == "serve":
        system.serve(args.threads)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
