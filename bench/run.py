"""``make bench``: kiq against Ruby Sidekiq 6.4 and 7.3, Dramatiq, Celery, RQ, arq and huey on one
private Redis.

See bench/README.md for what each column means. Every process started here is
stopped by pid at the end, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable instead of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import ceiling, peers_env, report, runtimes
from bench.measure import Settings, System, median
from bench.procs import ROOT, Procs
from bench.redisd import RedisServer
from bench.systems import SYSTEMS as PYTHON_SYSTEMS

SYSTEMS = ("kiq", *runtimes.RUBY_SYSTEMS, *(name for name in PYTHON_SYSTEMS if name != "kiq"))

RESULTS = ROOT / "bench" / "results"
THROUGHPUT_KEYS = ("enqueue_single", "enqueue_bulk", "processing", "processing_warm", "startup_s",
                   "rss_after_mb", "other_cpu", "worker_cpu_us", "redis_cpu_us")
WARM_KEYS = ("rss_idle_mb", "latency_p50_ms", "latency_p99_ms", "mixed_p50_ms", "mixed_p99_ms",
             "sched_p50_ms", "sched_p99_ms", "recovery_s", "recovery_note")
# The full run, and --quick: (option, full, quick); an option given on the command line wins.
MODES = (
    ("repeat", 2, 1),
    ("seconds", 5.0, 1.0),
    ("latency_jobs", 200, 100),
    ("mixed_jobs", 1000, 500),
    ("scheduled_jobs", 50, 20),
    ("recovery_wait", 5.0, 3.0),
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="one repeat of 1 s processing runs and fewer latency jobs (about 6 minutes)")
    parser.add_argument("--repeat", type=int, help="runs of every measurement; medians shown (2; quick 1)")
    parser.add_argument("--seconds", type=float,
                        help="size each system's processing runs to last this long from the first job "
                             "(5; quick 1)")
    parser.add_argument("--jobs", type=int, default=0,
                        help="no-op jobs per processing run for every system instead (no pilot)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--threads", type=int, default=10, help="threads per process, where there are (10)")
    parser.add_argument("--only", default=",".join(SYSTEMS), help=f"systems to run ({','.join(SYSTEMS)})")
    parser.add_argument("--skip-install", action="store_true", help="use bench/.venv-peers as it is")
    parser.add_argument("--kiq-venv", choices=("peers", "project"), default="peers",
                        help="run kiq installed into the peers' venv, so that every system's job body uses "
                             "the same redis-py (default), or from the project's .venv (the newest redis-py)")
    parser.add_argument("--latency-jobs", type=int, help="idle jobs sent 20 ms apart (200; quick 100)")
    parser.add_argument("--mixed-jobs", type=int, help="mixed load sent 1 ms apart (1000; quick 500)")
    parser.add_argument("--scheduled-jobs", type=int, help="jobs due 1 s after they are sent (50; quick 20)")
    parser.add_argument("--long-jobs", type=int, default=8, help="long jobs per duration (8)")
    parser.add_argument("--recovery-wait", type=float,
                        help="seconds to wait for a killed job to start again (5; quick 3)")
    args = parser.parse_args(argv)
    for option, full, quick in MODES:
        if getattr(args, option) is None:
            setattr(args, option, quick if args.quick else full)
    args.systems = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.systems if name not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s): {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    if args.jobs == 1 or args.jobs < 0 or args.repeat < 1 or args.processes < 1 or args.threads < 1:
        parser.error("--jobs must be 0 (sized by the pilot) or at least 2; --repeat, --processes and "
                     "--threads at least 1")
    return args


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


KIQ_VENV = {"which": "project"}


def kiq_python() -> Path:
    if KIQ_VENV["which"] == "peers":
        return peers_env.python()
    venv = ROOT / ".venv" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable)


def compile_sources() -> None:
    """Write the bytecode of kiq and of the bench's job modules, as ``pip install`` does for the
    peers' packages: kiq is installed editable, and where ``PYTHONDONTWRITEBYTECODE`` is set
    (it is on this project's machines) every kiq start would otherwise compile kiq anew,
    about 40 ms that no peer pays. The peers' virtualenv under bench/ is pip's, and left alone."""
    for folder in ("kiq", "bench"):
        compileall.compile_dir(ROOT / folder, quiet=1, rx=re.compile(r"[/\\]\.venv"))


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Procs) -> None:
        self.args = args
        self.procs = procs
        self.settings = Settings(seconds=args.seconds, jobs=args.jobs, processes=args.processes,
                                 threads=args.threads, latency_jobs=args.latency_jobs,
                                 mixed_jobs=args.mixed_jobs,
                                 scheduled_jobs=args.scheduled_jobs, recovery_wait=args.recovery_wait,
                                 long_jobs=args.long_jobs)
        self.results: dict[str, dict[str, Any]] = {
            name: {"runs": [], "errors": [], "info": {}} for name in args.systems
        }
        self.systems: dict[str, System] = {}

    def run(self) -> None:
        peer_errors: dict[str, str] = {}
        python_peers = [name for name in self.args.systems if name not in ("kiq", *runtimes.RUBY_SYSTEMS)]
        if python_peers or self.args.kiq_venv == "peers":
            peer_errors = peers_env.ensure(self.procs, self.args.skip_install, say)
        if self.args.kiq_venv == "peers" and "kiq" in self.args.systems:
            try:
                peers_env.install_kiq(self.procs, say)
                KIQ_VENV["which"] = "peers"
            except Exception as error:
                say(f"kiq: could not install into bench/.venv-peers ({error}); it runs from .venv")
        compile_sources()
        redis_dir = self.procs.log_dir / "redis"
        redis_dir.mkdir()
        server = RedisServer(self.procs, redis_dir)
        self.client = server.start()
        self.redis_version = server.version(self.client)
        say(f"redis-server {self.redis_version} on {server.url}")
        for name in self.args.systems:
            self._load(name, server, peer_errors)
        if not self.settings.jobs:
            for name, system in list(self.systems.items()):
                self._size(name, system)
        for repeat in range(1, self.args.repeat + 1):
            for name, system in self.systems.items():
                self._one_repeat(name, system, repeat)
            if "kiq" in self.systems:
                self._ceiling(repeat)

    def _load(self, name: str, server: RedisServer, peer_errors: dict[str, str]) -> None:
        """Find the system's runtime and ask it how to start its workers; a system that is not
        installed here is skipped with the reason, one that fails to load is an error."""
        if name in runtimes.RUBY_SYSTEMS:
            try:
                runtime = runtimes.ruby(name, self.procs)
            except runtimes.Missing as missing:
                say(f"{name}: skipped: {missing}")
                self.results[name]["fatal"] = f"skipped: {missing}"
                return
        else:
            missing_peer = peer_errors.get(name) or peer_errors.get(name.split("_")[0])
            if missing_peer:
                self._error(name, missing_peer)
                return
            runtime = runtimes.python(name, kiq_python() if name == "kiq" else peers_env.python())
        system = System(name, runtime, self.procs, self.client, server.url, self.settings,
                        server.process.pid if server.process else 0)
        try:
            system.load_info()
        except Exception as error:
            self._error(name, f"cannot load: {error}")
            return
        self.systems[name] = system
        self.results[name]["info"] = {**system.info, "long": system.long_info, "version": runtime.version}
        say(f"{name}: {system.info['shape']}" + (f", Sidekiq {runtime.version}" if runtime.version else ""))

    def _size(self, name: str, system: System) -> None:
        try:
            rate = system.size()
        except Exception as error:
            self._error(name, f"pilot failed: {type(error).__name__}: {error}")
            del self.systems[name]
            return
        self.results[name]["info"]["pilot_rate"] = rate
        say(f"{name}: pilot {rate:,.0f} jobs/s -> {system.jobs:,} jobs per processing run")

    def _one_repeat(self, name: str, system: System, repeat: int) -> None:
        """Fill this repeat's entry in place, so an interruption keeps what was measured."""
        previous = [r.get("recovery_s") for r in self.results[name]["runs"]]
        run: dict[str, Any] = {}
        self.results[name]["runs"].append(run)
        say(f"{name} repeat {repeat}: throughput ({system.jobs:,} jobs)")
        try:
            run.update(system.throughput())
        except Exception as error:
            self._fail(name, run, THROUGHPUT_KEYS, "throughput", error)
        say(f"{name} repeat {repeat}: mixed")
        try:
            run.update(system.mixed())
        except Exception as error:
            self._fail(name, run, ("mixed_rate",), "mixed", error)
        say(f"{name} repeat {repeat}: latency, mixed load, scheduled, recovery")
        recovery = not any(isinstance(v, str) and v.startswith("none in") for v in previous)
        try:
            run.update(system.warm(recovery))
        except Exception as error:
            self._fail(name, run, WARM_KEYS, "latency phase", error)
        say(f"{name} repeat {repeat}: long jobs")
        try:
            run.update(system.long())
        except Exception as error:
            self._fail(name, run, ("long_0.2", "long_1", "long_2"), "long jobs", error)
        if not recovery:
            run["recovery_s"] = previous[0]
            run["recovery_note"] = "not repeated: the job did not run again in the first repeat"
        for key, value in run.items():
            if isinstance(value, str) and value.startswith("ERR"):
                self.results[name]["errors"].append(f"repeat {repeat} {key}: {value}")
        say(f"{name} repeat {repeat}: " + ", ".join(f"{k}={_short(v)}" for k, v in run.items()
                                                     if k != "recovery_note"))

    def _ceiling(self, repeat: int) -> None:
        """Shown in kiq's column: Redis under kiq's fetch pattern, the job body alone, and the
        latency floor of a bare BLMOVE."""
        runs = self.results["kiq"]["runs"]
        kiq = self.systems["kiq"]
        env = kiq.env()

        def run(argvs: list[list[str]]) -> list[str]:
            return self.procs.run_many(argvs, env, 120)

        def rate(k: int) -> dict[str, float]:
            return {f"ceiling_k{k}": ceiling.measure(run, self.client, kiq.redis_url, str(kiq_python()), k)}

        measures: dict[str, Any] = {
            "ceiling_k1": partial(rate, 1),
            "ceiling_k10": partial(rate, 10),
            "ceiling_body": partial(ceiling.measure_body, run, self.client, str(kiq_python()),
                                    self.settings.processes, self.settings.threads),
            "latency_floor": partial(ceiling.measure_floor, run, self.client, kiq.redis_url,
                                     str(kiq_python()), n=self.settings.latency_jobs,
                                     gap=self.settings.latency_gap),
        }
        for key, measure in measures.items():
            say(f"{key}, repeat {repeat}")
            try:
                runs[-1].update(measure())
            except Exception as error:
                value = f"ERR: {type(error).__name__}: {error}"
                self.results["kiq"]["errors"].append(f"repeat {repeat} {key}: {value}")
                runs[-1][key] = value

    def _fail(self, name: str, run: dict[str, Any], keys: tuple[str, ...], phase: str,
              error: Exception) -> None:
        message = f"ERR: {type(error).__name__}: {error}"
        say(f"{name}: {phase} failed: {message}")
        for key in keys:
            run.setdefault(key, message)

    def _error(self, name: str, message: str) -> None:
        say(f"{name}: ERROR {message}")
        self.results[name]["errors"].append(message)
        self.results[name]["fatal"] = message

    def summary(self) -> dict[str, dict[str, Any]]:
        medians: dict[str, dict[str, Any]] = {}
        for name, result in self.results.items():
            if "fatal" in result:
                fatal = result["fatal"]
                medians[name] = {"shape": fatal if fatal.startswith("skipped") else "ERR: " + fatal}
                continue
            keys = {k for run in result["runs"] for k in run}
            medians[name] = {k: median([run[k] for run in result["runs"] if k in run]) for k in keys}
            medians[name]["shape"] = result["info"].get("shape", "?")
            result["median"] = medians[name]
        return medians


def peer_versions(procs: Procs) -> dict[str, str]:
    wanted = {"kiq", "redis", "hiredis", *peers_env.PEERS, "kombu"}
    versions: dict[str, str] = {}
    for python in {kiq_python(), peers_env.python()}:
        if not python.exists():
            continue
        try:
            argv = [str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"]
            out = procs.run(argv, {"PATH": "/usr/bin:/bin"}, 60)
            for package in json.loads(out.strip().splitlines()[-1]):
                if package["name"].lower() in wanted:
                    where = "kiq venv" if python == kiq_python() else "peers venv"
                    versions[f"{package['name'].lower()} ({where})"] = package["version"]
        except Exception as error:
            versions[str(python)] = f"unknown: {error}"
    return versions


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) < 60 else text[:57] + "..."


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # even if started with SIGINT ignored
        signal.signal(signum, signal.default_int_handler)
    began = time.time()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log_dir = Path(tempfile.mkdtemp(prefix=f"kiq-bench-{stamp}-"))
    procs = Procs(log_dir)
    bench = Bench(args, procs)
    interrupted, code = False, 0
    say(f"logs of every process in {log_dir}")
    try:
        bench.run()
    except KeyboardInterrupt:
        interrupted, code = True, 130
        say("interrupted: stopping every process and writing what was measured")
    except Exception as error:
        interrupted, code = True, 1
        say(f"failed: {type(error).__name__}: {error}")
    finally:
        procs.stop_all()
    medians = bench.summary()
    ratio = report.ratios(medians, {name: result.get("runs", []) for name, result in bench.results.items()})
    print()
    print(report.table(args.systems, medians))
    print()
    for line in report.ratio_lines(ratio):
        print(line)
    goals = report.targets(medians, ratio) if "kiq" in args.systems else []
    if goals:
        print("kiq against DESIGN.md section 5 (memory over 1,000,000 jobs: make soak):")
        for line in report.target_lines(goals):
            print(line)
    for name in args.systems:
        if bench.results[name].get("fatal", "").startswith("skipped"):
            print(f"{name}: {bench.results[name]['fatal']}")
    for name in args.systems:
        notes = [r["recovery_note"] for r in bench.results[name]["runs"] if "recovery_note" in r]
        if notes:
            print(f"recovery, {name}: {notes[0]}")
    errors = [(name, e) for name, result in bench.results.items() for e in result["errors"]]
    for name, error in errors:
        print(f"error: {name}: {error}")
    elapsed = time.time() - began
    document = {
        "started_at": stamp,
        "seconds": round(elapsed, 1),
        "interrupted": interrupted,
        "command": sys.argv,
        "settings": vars(bench.settings),
        "kiq_venv": KIQ_VENV["which"],
        "machine": {**report.machine(), "redis_server": getattr(bench, "redis_version", "?")},
        "versions": _versions(procs),
        "git": _git_state(),
        "systems": bench.results,
        "kiq_vs_fastest_peer": ratio,
        "kiq_targets": goals,
        "log_dir": str(log_dir),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(document, indent=2, default=str))
    if errors or interrupted:
        logs = f"process logs kept in {log_dir}"
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
        logs = "no errors, process logs removed"
    sizes = ", ".join(f"{name} {system.jobs:,}" for name, system in bench.systems.items() if system.jobs)
    print(f"\n{args.repeat} repeat(s) in {elapsed / 60:.1f} min (jobs per processing run: {sizes}); "
          f"results in {path.relative_to(ROOT)}; {logs}")
    return code


def _versions(procs: Procs) -> dict[str, str]:
    try:
        return peer_versions(procs)
    except Exception as error:
        return {"error": str(error)}
    finally:
        procs.stop_all()


def _git_state() -> dict[str, Any]:
    """The commit measured, and kiq files that differed from it (the work tree is what ran)."""
    state: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        state["commit"] = git("rev-parse", "--short", "HEAD").strip()
        state["changed"] = [line[3:] for line in git("status", "--porcelain", "kiq").splitlines()]
    return state


if __name__ == "__main__":
    sys.exit(main())
