"""Ruby peers for the interop tests: Sidekiq 6.4 and Active Job 6.1 from Debian's packages, and
Sidekiq 7.3 from the unmodified sources kept in ../shared/vendor/ruby (see its README).

Every test that uses a Ruby peer (``ruby``, ``sidekiq``, ``web_ui``) runs once per Sidekiq
version (``sidekiq_version``: "6.4", "7.3"). The 7.3 runs skip with a message where
../shared is absent: it comes with the development machine, not with kiq.

Every Ruby process runs with REDIS_URL pointing at the test's private redis-server and is
stopped by pid when the test ends (SIGTERM, then SIGKILL). Their output goes to files in the
test's tmp_path; the last lines are printed when a test fails.

- ``ruby``: one long-lived Ruby process per test (ruby/repl.rb) that evaluates snippets with
  ruby/app.rb loaded and returns their value as JSON, so a test loads Sidekiq and Active Job once.
- ``sidekiq``: starts ``sidekiq -r ruby/app.rb -q QUEUE -c N`` and waits for its heartbeat.
- ``web_ui``: serves Sidekiq's Web UI (ruby/config.ru) with WEBrick on a free loopback port, and
  drives it like a browser: a session cookie, and the CSRF token of the page a form is on.
- ``interop_kiq``: ``kiq start`` requiring interop.jobs, beating every 0.5 s.
- ``kiq_python``: runs Python code in a fresh interpreter that can import interop.jobs.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import redis
from conftest import ROOT, Kiq, RedisServer, run_python, wait_for

RUBY_DIR = Path(__file__).resolve().parent / "ruby"
APP = RUBY_DIR / "app.rb"
VENDOR = ROOT.parent / "shared" / "vendor" / "ruby"
SIDEKIQS = ("6.4", "7.3")
VENDORED_GEMS = ("sidekiq", "redis-client", "connection_pool")


def vendored_sidekiq() -> Path:
    """Sidekiq 7.3's sources, or a skip saying where they were looked for."""
    if not (VENDOR / "sidekiq" / "lib" / "sidekiq.rb").exists():
        pytest.skip(f"Sidekiq 7.3's sources are not at {VENDOR}: they come with the development "
                    "machine's shared/ directory, not with kiq")
    return VENDOR / "sidekiq"


def ruby_env(redis_url: str, version: str = "6.4") -> dict[str, str]:
    """The environment of a Ruby peer of ``version``: Debian's gems, or for 7.3 the vendored
    ones ahead of them on RUBYLIB. SIDEKIQ_EXPECTED makes app.rb check which one it loaded."""
    if shutil.which("ruby") is None or shutil.which("sidekiq") is None:
        pytest.fail("ruby and sidekiq are not installed (make test installs ruby-sidekiq and the others)")
    env = dict(os.environ)
    env.pop("RUBYLIB", None)
    if version != "6.4":
        vendored_sidekiq()
        env["RUBYLIB"] = os.pathsep.join(str(VENDOR / gem / "lib") for gem in VENDORED_GEMS)
    env["SIDEKIQ_EXPECTED"] = version
    env["REDIS_URL"] = redis_url
    env["APP_ENV"] = env["RACK_ENV"] = "production"
    return env


def sidekiq_command(version: str) -> list[str]:
    """The ``sidekiq`` executable of ``version``."""
    if version == "6.4":
        return ["sidekiq"]
    return ["ruby", str(vendored_sidekiq() / "bin" / "sidekiq")]


@pytest.fixture(params=SIDEKIQS, ids=[f"sidekiq{version}" for version in SIDEKIQS])
def sidekiq_version(request: pytest.FixtureRequest) -> str:
    """The version of Ruby Sidekiq a test's Ruby peers run; 7.3 skips where it is not vendored."""
    if request.param != "6.4":
        vendored_sidekiq()
    return str(request.param)


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout``."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


class RubyError(Exception):
    """A snippet raised in Ruby."""


class RubyRepl:
    """A Ruby process with ruby/app.rb loaded that evaluates snippets (ruby/repl.rb)."""

    def __init__(self, redis_url: str, log_path: Path, version: str = "6.4") -> None:
        self.log_path = log_path
        self.version = version
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                ["ruby", str(RUBY_DIR / "repl.rb")], cwd=RUBY_DIR, env=ruby_env(redis_url, version),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            )
        self._buffer = b""
        assert self._reply(60) == "ready"

    def __call__(self, code: str, timeout: float = 30.0) -> Any:
        """The snippet's value, as JSON turns it into Python; RubyError if it raised."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(code).encode() + b"\n")
        self.process.stdin.flush()
        return self._reply(timeout)

    def _reply(self, timeout: float) -> Any:
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stdout], [], [], left)[0]:
                raise TimeoutError(f"ruby did not answer within {timeout}s")
            chunk = os.read(stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"ruby exited ({self.process.wait()}); see {self.log_path}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply = json.loads(line)
        if "error" in reply:
            raise RubyError(f"{reply['class']}: {reply['error']}\n  " + "\n  ".join(reply["backtrace"] or []))
        return reply["value"]

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        stop(self.process, timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


class Sidekiq:
    """A ``sidekiq`` process running ruby/app.rb's jobs."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path, conn: redis.Redis) -> None:
        self.process = process
        self.pid = process.pid
        self.log_path = log_path
        self.conn = conn

    @property
    def identity(self) -> str:
        """Its entry in ``processes`` (``hostname:pid:nonce``), once it has beaten."""
        return wait_for(self._identity, timeout=30)  # type: ignore[no-any-return]

    def _identity(self) -> str | None:
        if self.process.poll() is not None:
            raise AssertionError(f"sidekiq exited with {self.process.returncode}; see {self.log_path}")
        return next((ident for ident in self.conn.smembers("processes")
                     if f":{self.pid}:" in ident and self.conn.hexists(ident, "info")), None)


class WebUI:
    """Sidekiq's Web UI, driven like a browser: one session cookie, and each form posted with
    the CSRF token of the page it was read from (Sidekiq 6.4 rotates it after every post)."""

    TOKEN = re.compile(r"name='authenticity_token' value='([^']+)'")

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path,
                 version: str = "6.4") -> None:
        self.process = process
        self.version = version
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.cookies: dict[str, str] = {}
        self.opener = urllib.request.build_opener(_NoRedirect())

    def get(self, path: str) -> str:
        status, body, _ = self._request("GET", path)
        assert status == 200, f"GET {path}: {status}"
        return body

    def post(self, path: str, fields: list[tuple[str, str]], page: str | None = None) -> str:
        """Submit a form of ``page`` (default: ``path``) as the browser would; returns the
        redirect's target, which is where Sidekiq sends the browser after an action."""
        token = self.token(self.get(page or path))
        status, body, headers = self._request("POST", path, [*fields, ("authenticity_token", token)])
        assert status == 302, f"POST {path}: {status} {body[:200]}"
        return urllib.parse.urlsplit(headers["Location"]).path

    def token(self, page: str) -> str:
        match = self.TOKEN.search(page)
        assert match, "no CSRF token on the page"
        return html.unescape(match[1])

    def _request(self, method: str, path: str,
                 fields: list[tuple[str, str]] | None = None) -> tuple[int, str, Any]:
        data = urllib.parse.urlencode(fields).encode() if fields is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if self.cookies:
            request.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        try:
            response = self.opener.open(request, timeout=30)
        except urllib.error.HTTPError as error:  # 3xx and 4xx land here without redirects
            response = error
        with response:
            for header in response.headers.get_all("Set-Cookie") or []:
                for name, morsel in SimpleCookie(header).items():
                    self.cookies[name] = morsel.value
            return response.status, response.read().decode(), response.headers


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture
def ruby(redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest,
         sidekiq_version: str) -> Iterator[RubyRepl]:
    repl = RubyRepl(redis_server.url, tmp_path / "ruby-repl.log", sidekiq_version)
    yield repl
    repl.close()
    _show_log_on_failure(request, repl.log_path)


@pytest.fixture
def sidekiq(redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest,
            sidekiq_version: str) -> Iterator[Callable[..., Sidekiq]]:
    """Start ``sidekiq -r ruby/app.rb`` on queue ``ruby`` (or ``queues``); waits for its heartbeat."""
    started: list[Sidekiq] = []

    def start(queues: tuple[str, ...] = ("ruby",), concurrency: int = 2) -> Sidekiq:
        log_path = tmp_path / f"sidekiq-{len(started)}.log"
        command = [*sidekiq_command(sidekiq_version), "-r", str(APP), "-c", str(concurrency), "-t", "3",
                   "-e", "production"]
        for queue in queues:
            command += ["-q", queue]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, cwd=RUBY_DIR, env=ruby_env(redis_server.url, sidekiq_version),
                                       stdout=log, stderr=subprocess.STDOUT)
        peer = Sidekiq(process, log_path, redis_server.client())
        started.append(peer)
        assert peer.identity
        return peer

    yield start
    for peer in started:
        stop(peer.process)
        _show_log_on_failure(request, peer.log_path)


@pytest.fixture
def web_ui(redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest,
           sidekiq_version: str) -> Iterator[WebUI]:
    log_path = tmp_path / "web-ui.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["ruby", str(RUBY_DIR / "web.rb")], cwd=RUBY_DIR,
                                   env=ruby_env(redis_server.url, sidekiq_version), stdout=subprocess.PIPE,
                                   stderr=log)
    try:
        port = _read_port(process, log_path)
        yield WebUI(process, port, log_path, sidekiq_version)
    finally:
        stop(process)
        if process.stdout is not None:
            process.stdout.close()
        _show_log_on_failure(request, log_path)


def _read_port(process: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0) -> int:
    stdout: BinaryIO | None = process.stdout  # type: ignore[assignment]
    assert stdout is not None
    if not select.select([stdout], [], [], timeout)[0]:
        raise TimeoutError(f"the Web UI did not start within {timeout}s; see {log_path}")
    line = stdout.readline()
    if not line:
        raise RuntimeError(f"the Web UI exited ({process.wait()}); see {log_path}")
    return int(json.loads(line)["port"])


@pytest.fixture
def interop_kiq(start_kiq: Callable[..., Kiq]) -> Callable[..., Kiq]:
    """``kiq start`` with the interop jobs, on queue ``default`` unless told otherwise."""

    def start(**settings: Any) -> Kiq:
        options: dict[str, Any] = {"require": ["interop.jobs"], "queues": ["default"],
                                   "heartbeat_interval": 0.5, "concurrency": 4}
        options.update(settings)
        return start_kiq(**options)

    return start


@pytest.fixture
def kiq_python(redis_server: RedisServer) -> Callable[[str], str]:
    """Run Python code (that may import interop.jobs) in a fresh interpreter; returns its stdout."""

    def run(code: str) -> str:
        return run_python(code, redis_server.url).stdout

    return run


def _show_log_on_failure(request: pytest.FixtureRequest, log_path: Path) -> None:
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed and log_path.exists():
        lines = log_path.read_text(errors="replace").splitlines()
        print(f"--- last lines of {log_path} ---", *lines[-40:], sep="\n")
