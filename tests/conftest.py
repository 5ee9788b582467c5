"""Fixtures: a private redis-server per test, and kiq masters run as real processes.

Every process a test starts is stopped by pid when the test ends, workers included.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
TOKEN = "KIQ_TEST_PROCESS"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def stable_id(value: object) -> str:
    """A parametrized test's id that every process makes alike (pytest-xdist's workers must collect
    the same names): ``repr``, with a set's members in sorted order and objects' addresses left out."""
    if isinstance(value, (set, frozenset)) and value:
        members = "{" + ", ".join(sorted(map(stable_id, value))) + "}"
        return members if type(value) is set else f"{type(value).__name__}({members})"
    return ADDRESS.sub("", repr(value))


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


def warm_up(r: redis.Redis, jobs: int = 50) -> None:
    """Run ``jobs`` no-op jobs on the workers started so far: a worker prefetches only once its
    jobs have shown how short they are (kiq.fetch). Needs the ``client`` fixture."""
    import sample_jobs

    before = int(r.get("stat:processed") or 0)
    sample_jobs.NoopJob.perform_bulk([[]] * jobs)
    wait_for(lambda: int(r.get("stat:processed") or 0) >= before + jobs)


def process(queue: str, raw: str) -> Any:
    """The outcome of a payload taken from ``queue``, through the steps a worker's processor
    thread takes (kiq.worker): ``prepare``, then ``run`` for a payload that names a job."""
    from kiq.processor import handle, prepare
    from kiq.retry import Outcome

    prepared = prepare(queue, raw)
    return prepared if isinstance(prepared, Outcome) else handle(*prepared, queue)


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid``, read from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def title(pid: int) -> str:
    """The process title setproctitle gave ``pid`` ("" if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def started_for(token: str) -> list[int]:
    """kiq processes whose environment carries ``token`` (each started kiq has its own, so a
    test never touches another's processes, even in another pytest run on a reused port)."""
    marker = f"{TOKEN}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and title(int(entry)).startswith("kiq "):
            try:
                with open(f"/proc/{entry}/environ", "rb") as environ:
                    if marker in environ.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        """Start (or restart, on the same port and directory); ``extra`` adds server options."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (make test installs it)"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._ping, timeout=10)

    def _ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.ConnectionError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def r(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client()


@pytest.fixture
def second_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """Another private redis-server, for a second shard (kiq.shards)."""
    directory = tmp_path / "second-redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()


class Kiq:
    """A ``kiq start`` master running as a subprocess, with its log in a file."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path, token: str) -> None:
        self.process = process
        self.token = token
        self.log_path = log_path
        self.pid = process.pid

    def workers(self) -> list[int]:
        """Live worker processes (grandchildren: master -> generation -> workers)."""
        found = descendants(self.pid)
        return sorted(pid for pid in found if alive(pid) and title(pid).startswith("kiq worker"))

    def generations(self) -> list[int]:
        return [pid for pid in children(self.pid) if alive(pid) and title(pid).startswith("kiq generation")]

    def wait_workers(self, count: int, timeout: float = 15.0) -> list[int]:
        return wait_for(lambda: (w := self.workers()) and len(w) == count and w, timeout)  # type: ignore[no-any-return]

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill_all(self) -> None:
        """SIGKILL the master and every process it started, orphans included (found by this
        kiq's token in their environment)."""
        pids = {*descendants(self.pid), *started_for(self.token)}
        if self.process.poll() is None:
            pids.add(self.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)


def sample_env(redis_url: str, *paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(TESTS), str(ROOT), env.get("PYTHONPATH", "")])
    env["KIQ_REDIS_URL"] = redis_url
    return env


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def start_kiq(
    redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Kiq]]:
    """Start ``kiq start`` on this test's Redis, with settings as keyword arguments."""
    started: list[Kiq] = []

    def start(**settings: Any) -> Kiq:
        config: dict[str, Any] = {
            "redis_url": redis_server.url,
            "require": ["sample_jobs"],
            "processes": 1,
            "concurrency": 4,
            "timeout": 5,
            "log": {"format": "json", "level": "info"},
            "metrics": {"port": 0},
        }
        config.update(settings)
        config = {key: value for key, value in config.items() if value is not None}  # None: drop a default
        path = tmp_path / f"kiq-{len(started)}.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))  # in order: the first shard is the default
        token = uuid.uuid4().hex
        log_path = tmp_path / f"kiq-{len(started)}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "kiq", "start", "-c", str(path)],
                cwd=ROOT,
                env={**sample_env(config.get("redis_url", redis_server.url), tmp_path), TOKEN: token},
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        kiq = Kiq(process, log_path, token)
        started.append(kiq)
        return kiq

    yield start
    for kiq in started:
        kiq.kill_all()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for kiq in started:
            lines = kiq.log().splitlines()
            print(f"--- last lines of {kiq.log_path} ---", *lines[-60:], sep="\n")


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[Any]:
    """kiq's default client pointed at this test's Redis."""
    import kiq

    yield kiq.configure(redis_server.url)
    kiq.client._default = None


def run_python(code: str, redis_url: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that can import kiq and the sample jobs."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=sample_env(redis_url),
        capture_output=True, text=True, timeout=timeout, check=True,
    )
