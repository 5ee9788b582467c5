"""``kiq web`` as a real subprocess: the address it agrees to listen on, basic auth, the config's
periodic entries, and requests served side by side by a threaded server."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, free_port, sample_env, wait_for
from webdata import accepts, heartbeat, jid, job, push

Started = Callable[..., tuple[subprocess.Popen[str], int]]


@pytest.fixture
def kiq_web(redis_server, tmp_path: Path) -> Iterator[Started]:
    """Start ``kiq web`` with a config file holding ``settings``; returns the process and its port
    once it accepts connections."""
    started: list[subprocess.Popen[str]] = []

    def start(*flags: str, env: dict[str, str] | None = None, **settings: object) -> tuple[
            subprocess.Popen[str], int]:
        path = tmp_path / f"web-{len(started)}.yml"
        path.write_text(yaml.safe_dump({"redis_url": redis_server.url, **settings}))
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "kiq", "web", "-c", str(path), "--port", str(port),
                                    *flags], cwd=ROOT, env={**sample_env(redis_server.url), **(env or {})},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(process)
        wait_for(lambda: process.poll() is not None or accepts(port), timeout=30)
        return process, port

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=10)


def get(port: int, path: str = "/", auth: tuple[str, str] | None = None, host: str | None = None,
        data: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    if host:
        request.add_header("Host", host)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_another_address_without_a_password_is_refused_with_what_to_do(kiq_web):
    for host in ("0.0.0.0", "::"):
        process, port = kiq_web("--host", host)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 2, stderr
        assert f"refusing to listen on {host} without a password" in stderr
        assert "web.password" in stderr and "KIQ_WEB_PASSWORD" in stderr and "Traceback" not in stderr
        assert not accepts(port)


def test_with_a_password_it_listens_anywhere_behind_basic_auth(kiq_web):
    process, port = kiq_web("--host", "0.0.0.0", env={"KIQ_WEB_PASSWORD": "from the env"})
    assert process.poll() is None
    assert get(port)[0] == 401
    assert get(port, auth=("kiq", "wrong"))[0] == 401
    status, html = get(port, auth=("kiq", "from the env"))
    assert status == 200 and "Dashboard" in html


def test_without_a_password_only_loopback_names_and_allowed_ones_are_answered(kiq_web, r):
    """A page on a name its DNS server rebinds to 127.0.0.1 must neither read nor change anything."""
    r.zadd("dead", {json.dumps(job(1)): time.time()})
    _, port = kiq_web("--allowed-host", "Kiq.Example.com", web={"hosts": ["proxy.internal"]})
    status, text = get(port, "/dead", host=f"rebind.attacker.example:{port}")
    assert status == 403 and jid(1) not in text
    assert "'rebind.attacker.example'" in text and "--allowed-host" in text and "web.hosts" in text
    assert get(port, "/dead", host="rebind.attacker.example", data=b"action=delete-all")[0] == 403
    assert r.zcard("dead") == 1
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "app.localhost",
                 "kiq.example.com", f"proxy.internal:{port}"):
        status, text = get(port, "/dead", host=host)
        assert status == 200 and jid(1) in text, host


def test_the_config_files_user_and_password_and_read_only(kiq_web, r):
    heartbeat(r, "web-1:101:0a0a")
    process, port = kiq_web("--read-only", web={"user": "ops", "password": "s3cret"})
    assert get(port, "/busy", auth=("kiq", "s3cret"))[0] == 401
    status, html = get(port, "/busy", auth=("ops", "s3cret"))
    assert status == 200 and "read-only" in html and "web-1:101:0a0a" in html and 'method="post"' not in html
    process.terminate()
    _, stderr = process.communicate(timeout=10)
    assert f"serving http://127.0.0.1:{port}/ read-only with basic auth" in stderr


def test_periodic_entries_come_from_the_config_and_its_required_modules(kiq_web):
    nightly = {"name": "nightly", "cron": "0 3 * * *", "class": "RecordJob", "tz": "Asia/Tokyo"}
    _, port = kiq_web(require=["periodic_sample"], periodic=[nightly])
    status, html = get(port, "/periodic")
    assert status == 200
    assert "nightly" in html and "Asia/Tokyo" in html and "from-python" in html and "*/2 * * * * *" in html


def test_a_port_in_use_exits_2_with_one_line_saying_what_to_do(kiq_web):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        process, _ = kiq_web("--port", str(busy))
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2, stderr
    [line] = stderr.strip().splitlines()
    assert f"cannot listen on 127.0.0.1 port {busy}" in line and "--port" in line


def test_a_bad_config_or_require_exits_2_with_one_line(kiq_web):
    process, _ = kiq_web(require=["no_such_module_anywhere"])
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2 and "no_such_module_anywhere" in stderr and "Traceback" not in stderr


def test_requests_are_served_side_by_side(kiq_web, r):
    """A client that sends half a request holds no thread hostage, and many requests at once all
    get their page: a server that handles one request at a time (wsgiref) fails both."""
    push(r, "default", *(job(n) for n in range(200)))
    _, port = kiq_web()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(b"GET /queues HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the blank line never comes, yet
        started = time.monotonic()
        assert get(port, "/stats.json")[0] == 200
        assert time.monotonic() - started < 5
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            pages = list(pool.map(lambda n: get(port, f"/queues/default?page={n % 8 + 1}"), range(32)))
        assert all(status == 200 for status, _ in pages)
        assert all(jid(n % 8 * 25) in html for n, (_, html) in enumerate(pages))
        slow.sendall(b"Connection: close\r\n\r\n")
        reply = b""
        while chunk := slow.recv(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 OK") and b"Queues" in reply
