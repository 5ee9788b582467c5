"""``bench/roundtrip.py``: the cost of kiq's per-batch round trip, in one process, no threads.

Starts a private redis-server, fills ``--queues`` queues with kiq payloads of the no-op job,
then makes ``--trips`` calls of ``kiq.roundtrip.RoundTrip.send``, each acknowledging the
``--k`` jobs the previous one took (all succeeded) and taking ``--k`` more, as a busy worker's
fetcher does, with the tallies of those jobs' execution metrics (``--classes`` job classes;
0 sends none). Prints the client's CPU per call (building the arguments, reading the reply:
what a worker's fetcher thread spends), the wall time per call, and Redis's own time per
call (``INFO commandstats``). Far steadier than a drain on this machine, since neither threads
nor other processes take part: ``.venv/bin/python bench/roundtrip.py --k 100 --queues 3``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable instead of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.ceiling import fill
from bench.procs import Procs
from bench.redisd import RedisServer
from kiq.connection import connect
from kiq.execution import Tallies, Tally
from kiq.keys import Keys
from kiq.retry import SUCCESS
from kiq.roundtrip import Ack, QueueOrder, RoundTrip

IDENTITY = "bench:1:roundtrip"


def tallied(k: int, classes: int, trips: int) -> list[list[Tally]]:
    """The tallies each round trip sends: those of its ``k`` jobs of ``classes`` classes, each
    job 0.1 ms long, as a worker's processor threads tally them."""
    batches = []
    for _ in range(trips):
        tallies = Tallies()
        for n in range(k if classes else 0):
            tallies.add(f"NoopJob{n % classes}", 0.0001, False)
        batches.append(tallies.take())
    return batches


def measure(url: str, k: int, trips: int, queues: int, classes: int = 1) -> dict[str, float]:
    conn = connect(url)
    names = [f"q{n}" for n in range(queues)]
    for name in names:
        fill(conn, (trips + 1) * k // queues + k, name)
    keys = Keys()
    conn.hset(keys.process(IDENTITY), "beat", "1")  # the entry that every round trip extends
    order = QueueOrder([(name, n) for n, name in enumerate(names, 1)], strict=False)
    trip = RoundTrip(conn, keys, IDENTITY, names, ttl=600.0)
    acks: list[Ack] = [(unit, SUCCESS) for unit in trip.send([], k, [], names)]  # loads the script
    batches = tallied(k, classes, trips)
    conn.config_resetstat()
    cpu, wall = time.process_time(), time.perf_counter()
    for tallies in batches:
        units = trip.send(acks, k, order.picks(k), order.order(), tallies)
        acks = [(unit, SUCCESS) for unit in units]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    redis_us = float(conn.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
    return {"client_cpu_us": cpu / trips * 1e6, "wall_us": wall / trips * 1e6, "redis_us": redis_us}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/roundtrip.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=100, help="jobs acknowledged and taken per call")
    parser.add_argument("--trips", type=int, default=1000)
    parser.add_argument("--queues", type=int, default=1, help="weighted 1, 2, 3, ...")
    parser.add_argument("--classes", type=int, default=1, help="job classes of the jobs tallied (0: none)")
    args = parser.parse_args(argv)
    procs = Procs(Path(tempfile.mkdtemp(prefix="kiq-roundtrip-")))
    try:
        server = RedisServer(procs, procs.log_dir)
        server.start()
        result = measure(server.url, args.k, args.trips, args.queues, args.classes)
    finally:
        procs.stop_all()
    print(f"k={args.k} queues={args.queues} classes={args.classes} trips={args.trips}: "
          f"client CPU {result['client_cpu_us']:.1f} "
          f"us per call, wall {result['wall_us']:.1f} us, redis {result['redis_us']:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
