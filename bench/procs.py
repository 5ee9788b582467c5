"""Every process the benchmark starts, and stopping each of them again by pid.

Processes start in their own process group, so a terminal's Ctrl-C reaches only
the orchestrator, which then stops them itself. They stay in the orchestrator's
session on purpose: with the kernel's scheduler autogroups (on by default on
Linux desktops and on this machine), every session is scheduled as one group, so
a system started as two commands would get two shares of the CPU against
redis-server while a system with one master got one, and the table measured that
instead of the job systems (kiq ran about 30% slower under `start_new_session`).
A process is identified by its pid and its start time, so a pid reused by an
unrelated process is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# each started command leads a process group of its own (see above), in its parent's session;
# Python 3.10 has no process_group, and setpgrp in the child is the same call
GROUP: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


class Timeout(Exception):
    """A bounded wait ran out."""


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.01, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; Timeout after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise Timeout(f"{what or condition} not met within {timeout:.0f}s")
        time.sleep(interval)


def stat_fields(text: str) -> list[str]:
    """Fields of a /proc/PID/stat line after the command name, which may hold spaces and ')'
    (state is [0], ppid [1], utime [11], stime [12], cutime [13], cstime [14], starttime [19])."""
    return text.rsplit(")", 1)[1].split()


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat_fields(stat.read())
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields else None


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.append(int(entry))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        nxt = []
        for parent in frontier:
            nxt.extend(children(parent))
        found.extend(nxt)
        frontier = nxt
    return found


def trees(roots: Sequence[int]) -> list[int]:
    """``roots`` and all their descendants, from one pass over /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and fields[0] not in ("Z", "X"):
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found, frontier = [], [pid for pid in roots if alive(pid)]
    while frontier:
        found.extend(frontier)
        frontier = [child for pid in frontier for child in parents.get(pid, [])]
    return found


def at_depth(roots: Sequence[int], depth: int | str) -> list[int]:
    """Processes ``depth`` levels below ``roots``; ``"leaves"``: those of their trees without children."""
    level = [pid for pid in roots if alive(pid)]
    if depth == "leaves":
        tree = [pid for root in level for pid in [root, *descendants(root)]]
        return [pid for pid in tree if not children(pid)]
    for _ in range(int(depth)):
        level = [child for pid in level for child in children(pid)]
    return level


def stat_cpu(fields: list[str]) -> float:
    """CPU seconds in stat fields: the process's user and system time, and its reaped children's."""
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and of its children that it has reaped."""
    fields = _stat(pid)
    return stat_cpu(fields) if fields else 0.0


def switches(pid: int) -> int:
    """Context switches (voluntary or not) of every thread ``pid`` has now."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as status:
                total += sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        except OSError:  # a thread that ended since the listing
            continue
    return total


def machine_busy() -> float:
    """CPU seconds all cores spent outside idle and iowait since boot."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Procs:
    """The registry: everything started here is stopped by ``stop`` or ``stop_all``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[subprocess.Popen[bytes]] = []
        self.seen: dict[int, dict[int, str | None]] = {}  # root pid -> every pid seen in its tree
        self._logs = 0

    def spawn(self, argv: Sequence[str], env: dict[str, str], name: str,
              cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        """Start a long-lived process with its output in ``log_dir/NAME-N.log``."""
        self._logs += 1
        path = self.log_dir / f"{name}-{self._logs}.log"
        with open(path, "wb") as log:
            process = subprocess.Popen(
                list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, **GROUP,
            )
        self.running.append(process)
        self.watch()
        return process

    def watch(self) -> None:
        """Remember the current trees, so descendants orphaned later are still stopped."""
        for process in self.running:
            if process.poll() is None:
                self.seen.setdefault(process.pid, {}).update(self._snapshot([process]))

    def run(self, argv: Sequence[str], env: dict[str, str], timeout: float) -> str:
        """Run a command to its end within ``timeout``; its output, or RuntimeError with its tail."""
        process = subprocess.Popen(
            list(argv), cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, **GROUP,
        )
        self.running.append(process)
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop([process], grace=1.0)
            raise Timeout(f"{' '.join(argv[:5])} ... did not finish within {timeout:.0f}s") from None
        finally:
            if process.poll() is not None and process in self.running:
                self.running.remove(process)
        text = out.decode(errors="replace")
        if process.returncode != 0:
            tail = "\n".join(text.strip().splitlines()[-6:])
            raise RuntimeError(f"{' '.join(argv[:5])} ... exited {process.returncode}: {tail}")
        return text

    def run_many(self, argvs: Sequence[Sequence[str]], env: dict[str, str], timeout: float) -> list[str]:
        """Run commands side by side, each to its end within ``timeout``; their outputs."""
        started = [
            subprocess.Popen(list(argv), cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, **GROUP)
            for argv in argvs
        ]
        self.running.extend(started)
        deadline = time.monotonic() + timeout
        outputs = []
        try:
            for process in started:
                out, _ = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
                if process.returncode != 0:
                    tail = out.decode(errors="replace").strip().splitlines()[-3:]
                    raise RuntimeError(f"exited {process.returncode}: {' | '.join(tail)}")
                outputs.append(out.decode(errors="replace"))
        except subprocess.TimeoutExpired:
            raise Timeout(f"commands did not finish within {timeout:.0f}s") from None
        finally:
            self.stop(started, grace=1.0)
        return outputs

    def stop(self, processes: Sequence[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
        """TERM the given roots, wait up to ``grace``, then KILL whatever of their trees is left."""
        tree = self._snapshot(processes)
        for process in processes:
            tree.update(self.seen.pop(process.pid, {}))
        for process in processes:
            if process.poll() is None:
                _signal(process.pid, tree.get(process.pid), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            tree.update(self._snapshot(processes))
            if not any(alive(pid) and start_time(pid) == started for pid, started in tree.items()):
                break
            time.sleep(0.05)
        tree.update(self._snapshot(processes))
        for pid, started in tree.items():
            _signal(pid, started, signal.SIGKILL)
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
            if process in self.running:
                self.running.remove(process)

    def stop_all(self) -> None:
        if self.running:
            self.stop(list(self.running), grace=5.0)

    def _snapshot(self, processes: Sequence[subprocess.Popen[bytes]]) -> dict[int, str | None]:
        tree: dict[int, str | None] = {}
        for process in processes:
            if process.poll() is None:
                for pid in [process.pid, *descendants(process.pid)]:
                    tree[pid] = start_time(pid)
        return tree


def _signal(pid: int, started: str | None, signum: int) -> None:
    """Signal ``pid`` only if it is still the process that was seen starting at ``started``."""
    if started is None or start_time(pid) != started or not alive(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)
