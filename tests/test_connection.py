"""Ways to reach Redis: unix sockets, ACL users, TLS, Sentinel with a failover; secrets stay out of sight."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from conftest import ROOT, descendants, free_port, run_python, title, wait_for

from kiq.connection import connect, redact, send


class Servers:
    """redis-server and redis-sentinel processes for one test, stopped by pid."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, binary: str = "redis-server") -> subprocess.Popen[bytes]:
        path = shutil.which(binary)
        assert path, f"{binary} is not installed (make test installs it)"
        process = subprocess.Popen([path, *args], cwd=self.dir, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)


# (URL, its redacted form, the password it holds). Passwords are written raw, as users write
# them, and percent-encoded; a raw / ? # moves where a URL parser ends the host part.
REDACTED = [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", ""),
    ("redis://:s3cret@redis.internal:6379/0", "redis://:***@redis.internal:6379/0", "s3cret"),
    ("redis://kiq:s3cret@redis.internal:6379/0", "redis://kiq:***@redis.internal:6379/0", "s3cret"),
    ("rediss://kiq:s3cret@redis.internal:6380/0?ssl_ca_certs=/etc/kiq/ca.crt",
     "rediss://kiq:***@redis.internal:6380/0?ssl_ca_certs=/etc/kiq/ca.crt", "s3cret"),
    ("redis://kiq:pa/ss@redis.internal:6379/0", "redis://kiq:***@redis.internal:6379/0", "pa/ss"),
    ("redis://kiq:pa#ss@redis.internal:6379/0", "redis://kiq:***@redis.internal:6379/0", "pa#ss"),
    ("redis://kiq:pa?ss@redis.internal:6379/0", "redis://kiq:***@redis.internal:6379/0", "pa?ss"),
    ("redis://kiq:pa@ss@redis.internal:6379/0", "redis://kiq:***@redis.internal:6379/0", "pa@ss"),
    ("redis://:pa/ss#x?y@z@10.0.0.1/0", "redis://:***@10.0.0.1/0", "pa/ss#x?y@z"),
    ("redis://kiq:pa:ss@redis.internal/0", "redis://kiq:***@redis.internal/0", "pa:ss"),
    ("redis://kiq:pa%2Fs%23s%3Fx%40y@redis.internal/0", "redis://kiq:***@redis.internal/0",
     "pa%2Fs%23s%3Fx%40y"),
    ("redis://me@corp:s3cret@redis.internal/0", "redis://me@corp:***@redis.internal/0", "s3cret"),
    ("redis://kiq@redis.internal/0", "redis://kiq@redis.internal/0", ""),
    ("redis://:pa/ss@[::1]:6379/0", "redis://:***@[::1]:6379/0", "pa/ss"),
    ("unix://kiq:s3cret@/run/redis/redis.sock?db=0", "unix://kiq:***@/run/redis/redis.sock?db=0", "s3cret"),
    ("unix://kiq:pa/ss@/run/redis/redis.sock?db=0", "unix://kiq:***@/run/redis/redis.sock?db=0", "pa/ss"),
    ("unix:///run/redis/redis.sock?password=s3cret&db=0", "unix:///run/redis/redis.sock?password=***&db=0",
     "s3cret"),
    ("unix:///run/redis/redis.sock?db=0&password=pa@ss", "unix:///run/redis/redis.sock?db=0&password=***",
     "pa@ss"),
    ("unix:///run/redis/redis.sock?db=0&password=pa/s?s@x#y", "unix:///run/redis/redis.sock?db=0&password=***",
     "pa/s?s@x#y"),
    ("unix:///run/redis/redis.sock?password=pa&ss&db=0", "unix:///run/redis/redis.sock?password=***&db=0",
     "pa&ss"),
    ("redis://10.0.0.1:6379/0?password=pa@ss", "redis://10.0.0.1:6379/0?password=***", "pa@ss"),
    ("redis://kiq:s3cret@10.0.0.1/0?Password=pa@ss", "redis://kiq:***@10.0.0.1/0?Password=***",
     "s3cret pa@ss"),
    ("redis://kiq:pa?password=x@10.0.0.1/0", "redis://kiq:***", "pa?password=x"),
    ("redis://kiq:12?k=v@10.0.0.1/0", "redis://kiq:***@10.0.0.1/0", "12?k=v"),
    ("sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3/mymaster/0",
     "sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3/mymaster/0", ""),
    ("sentinel://kiq:s3cret@10.0.0.1:26379,10.0.0.2:26379/mymaster/0?sentinel_password=s3nt",
     "sentinel://kiq:***@10.0.0.1:26379,10.0.0.2:26379/mymaster/0?sentinel_password=***", "s3cret s3nt"),
    ("redis+sentinel://:pa/ss@10.0.0.1,10.0.0.2:26380/mymaster?sentinel_password=s/3#nt",
     "redis+sentinel://:***@10.0.0.1,10.0.0.2:26380/mymaster?sentinel_password=***", "pa/ss s/3#nt"),
    ("redis://10.0.0.1/0?password=pa#ss", "redis://10.0.0.1/0?password=***", "pa#ss"),
]


@pytest.mark.parametrize(("url", "shown", "passwords"), REDACTED)
def test_redact_hides_every_password(url: str, shown: str, passwords: str) -> None:
    assert redact(url) == shown
    assert not any(password in shown for password in passwords.split())


@pytest.mark.parametrize(("url", "refused"), [
    ("redis://kiq:s3/cr@127.0.0.1/0", True),
    ("sentinel://:s3#cr@10.0.0.1,10.0.0.2/mymaster", True),
    ("redis://kiq:s3%2Fcr@127.0.0.1/0", False),
    ("redis://kiq:s3@cr@127.0.0.1/0", False),  # redis-py reads a raw @ as meant
    ("redis://127.0.0.1/0?password=s3@cr#x", False),
    ("unix:///run/a@b/redis.sock?db=0", False),
    ("rediss://127.0.0.1:6380/0?ssl_ca_certs=/etc/a@b/ca.crt", False),
])
def test_connect_refuses_a_raw_special_character_in_the_password(url: str, refused: bool) -> None:
    """Without the check, redis-py's error for the first URL is "Port could not be cast to
    integer value as 's3'"."""
    if refused:
        with pytest.raises(ValueError, match="percent-encode") as raised:
            connect(url)
        assert "s3" not in str(raised.value)
    else:
        connect(url)  # builds the client; it connects when first used


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    yield started
    started.stop()


def answers(url: str) -> Callable[[], bool]:
    def ping() -> bool:
        try:
            return bool(connect(url).ping())
        except Exception:
            return False

    return ping


def role(url: str) -> str | None:
    """The server's replication role, or None while it cannot be asked.

    A Sentinel promoting a replica kills that replica's client connections, so
    asking it can fail even after it answered a PING.
    """
    try:
        return str(connect(url).info("replication")["role"])
    except Exception:
        return None


def results(url: str) -> list[str]:
    """The jobs' records, or nothing while Redis (or the Sentinel's primary) is unreachable."""
    try:
        return list(connect(url).lrange("results", 0, -1))
    except Exception:
        return []


def run_one_job(start_kiq, url: str, **settings: object):
    """Start kiq on ``url``, enqueue a job from another process, wait for it to run."""
    kiq = start_kiq(redis_url=url, **settings)
    run_python("import sample_jobs\nsample_jobs.RecordJob.perform_later('over-the-wire')\n", url)
    wait_for(lambda: connect(url).lrange("results", 0, -1) == ["over-the-wire"], timeout=20)
    return kiq


@pytest.mark.slow
def test_unix_socket(start_kiq, servers, tmp_path, monkeypatch):
    sock = tmp_path / "redis.sock"
    servers.start("--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no")
    url = f"unix://{sock}?db=0"
    wait_for(answers(url))
    monkeypatch.setenv("KIQ_REDIS_URL", url)
    run_one_job(start_kiq, url)


@pytest.mark.slow
def test_acl_user_and_password_never_shown(start_kiq, servers, monkeypatch):
    port = free_port()
    servers.start("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--user", "default", "off", "--user", "kiq", "on", ">s3cr3t-pw", "~*", "&*", "+@all")
    url = f"redis://kiq:s3cr3t-pw@127.0.0.1:{port}/0"
    wait_for(answers(url))
    monkeypatch.setenv("KIQ_REDIS_URL", url)
    kiq = run_one_job(start_kiq, url)
    titles = [title(pid) for pid in [kiq.pid, *descendants(kiq.pid)]]
    assert all("s3cr3t" not in t for t in titles), titles
    assert "s3cr3t" not in kiq.log()
    assert "kiq:***@127.0.0.1" in kiq.log()


def make_certificates(directory: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "1", "-subj", "/CN=kiq-test-ca", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    # what Python 3.13's default context (VERIFY_X509_STRICT) asks of a CA and a server's certificate
    (directory / "ext").write_text("subjectAltName=IP:127.0.0.1\nauthorityKeyIdentifier=keyid\n"
                                   "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                   "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "1", "-extfile", "ext")


@pytest.mark.slow
def test_tls_with_a_self_signed_ca(start_kiq, servers, tmp_path, monkeypatch):
    make_certificates(tmp_path)
    port = free_port()
    servers.start("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
                  "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no")
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.crt'}"
    wait_for(answers(url))
    assert not answers(f"rediss://127.0.0.1:{port}/0")(), "the server's certificate must need the CA"
    monkeypatch.setenv("KIQ_REDIS_URL", url)
    run_one_job(start_kiq, url)


@pytest.mark.slow
def test_warns_when_redis_may_evict_jobs(start_kiq, redis_server, r):
    r.config_set("maxmemory-policy", "allkeys-lru")
    kiq = start_kiq()
    wait_for(lambda: "maxmemory-policy" in kiq.log())


@pytest.mark.slow
def test_warns_when_the_workers_would_hold_half_of_redis_maxclients(start_kiq, redis_server, r):
    """Each idle worker holds a blocking connection per queue it watches (up to 16): 2
    processes of 40 queues hold about 40 of a maxclients of 60, and at the limit Redis refuses
    the apps that enqueue."""
    r.config_set("maxclients", 60)
    kiq = start_kiq(processes=2, queues=[f"q{n}" for n in range(40)])
    kiq.wait_workers(2)
    [line] = wait_for(lambda: [json.loads(line) for line in kiq.log().splitlines()
                               if "maxclients or more" in line], timeout=20)
    assert (line["connections"], line["maxclients"]) == (40, 60)


def sentinel_pair(servers: Servers, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, int, str]:
    """A primary, its replica (in sync) and one Sentinel that knows both: (the primary's process,
    the primary's port, the replica's port, the Sentinel URL)."""
    primary, replica, sentinel = free_port(), free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    first = servers.start("--port", str(primary), *common)
    servers.start("--port", str(replica), "--replicaof", "127.0.0.1", str(primary), *common)
    (tmp_path / "sentinel.conf").write_text(
        f"port {sentinel}\nbind 127.0.0.1\n"
        f"sentinel monitor kiqprimary 127.0.0.1 {primary} 1\n"
        "sentinel down-after-milliseconds kiqprimary 1000\n"
        "sentinel failover-timeout kiqprimary 5000\n"
    )
    servers.start(str(tmp_path / "sentinel.conf"), binary="redis-sentinel")
    url = f"sentinel://127.0.0.1:{sentinel}/kiqprimary/0"
    wait_for(answers(url), timeout=20)
    wait_for(answers(f"redis://127.0.0.1:{replica}"), timeout=20)  # it may not listen yet
    replica_conn = connect(f"redis://127.0.0.1:{replica}")
    wait_for(lambda: replica_conn.info("replication")["master_link_status"] == "up", timeout=20)
    sentinel_conn = connect(f"redis://127.0.0.1:{sentinel}")
    wait_for(lambda: sentinel_conn.execute_command("SENTINEL", "REPLICAS", "kiqprimary"), timeout=20)
    return first, primary, replica, url


@pytest.mark.slow
def test_a_kept_connection_follows_a_sentinel_failover_to_the_new_primary(servers, tmp_path):
    """send() keeps its connection between calls; once the old primary is a replica (READONLY),
    the connection is made again through the Sentinel, not to the address it had (redis-py's
    send_packed_command reconnects there, and kiq wrote to the demoted primary for as long)."""
    _, primary, replica, url = sentinel_pair(servers, tmp_path)
    client = connect(url)
    assert send(client, [("SET", "before", "1")]) == ["OK"]
    sentinel = connect(f"redis://{url.removeprefix('sentinel://').split('/')[0]}")

    def failover() -> bool:
        try:
            return bool(sentinel.execute_command("SENTINEL", "FAILOVER", "kiqprimary"))
        except redis.ResponseError as error:  # NOGOODSLAVE until the Sentinel has seen the replica fit
            assert "NOGOODSLAVE" in str(error), error
            return False

    wait_for(failover, timeout=30, interval=0.5)
    wait_for(lambda: role(f"redis://127.0.0.1:{replica}") == "master", timeout=30)
    wait_for(lambda: role(f"redis://127.0.0.1:{primary}") == "slave", timeout=30)

    def written() -> bool:
        try:
            send(client, [("SET", "after", "1")])
        except redis.ConnectionError:  # READONLY from the old primary: the connection is dropped
            return False
        return True

    wait_for(written, timeout=15)
    assert connect(f"redis://127.0.0.1:{replica}").get("after") == "1"


@pytest.mark.slow
def test_sentinel_failover_under_load(start_kiq, servers, tmp_path, monkeypatch):
    first, _, replica, url = sentinel_pair(servers, tmp_path)
    monkeypatch.setenv("KIQ_REDIS_URL", url)
    kiq = start_kiq(redis_url=url, processes=1, concurrency=4)
    total = 300
    run_python(
        "import sample_jobs, redis\n"
        f"sample_jobs.PidJob.perform_bulk([[str(i), 0.01] for i in range({total})])\n"
        "sample_jobs.conn().execute_command('WAIT', 1, 5000)\n",
        url,
    )
    wait_for(lambda: connect(url).llen("results") >= 30, timeout=30)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    killed = time.monotonic()
    wait_for(lambda: role(f"redis://127.0.0.1:{replica}") == "master", timeout=30)
    wait_for(lambda: len(set(results(url))) == total, timeout=90)
    assert set(results(url)) == {str(i) for i in range(total)}
    assert kiq.process.poll() is None
    print(f"failover to all {total} jobs done: {time.monotonic() - killed:.1f}s")


def acl_server(servers: Servers, *users: str) -> int:
    """A redis-server with the default user off and ``users`` (each one ACL SETUSER rule string)."""
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--user", "default", "off"]
    for user in users:
        args += ["--user", *user.split()]
    servers.start(*args)
    wait_for(answers(f"redis://kiq:s3cr3t-pw@127.0.0.1:{port}/0"))
    return port


REFUSED_LOGINS = {
    "wrong password": "redis://kiq:wrong-pw@127.0.0.1:{port}/0",
    "no password (NOAUTH)": "redis://127.0.0.1:{port}/0",
    "unknown ACL user": "redis://nobody:wrong-pw@127.0.0.1:{port}/0",
}


@pytest.mark.parametrize("url", REFUSED_LOGINS.values(), ids=REFUSED_LOGINS.keys())
def test_a_refused_login_at_start_exits_5_with_one_line(start_kiq, servers, url):
    port = acl_server(servers, "kiq on >s3cr3t-pw ~* &* +@all")
    kiq = start_kiq(redis_url=url.format(port=port))
    assert kiq.wait(timeout=30) == 5
    lines = kiq.log().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("kiq: redis refused the login: check the password and the ACL user")
    assert f"127.0.0.1:{port}" in lines[0] and "wrong-pw" not in lines[0]


MISSING_RIGHTS = {
    "no kiq keys": "kiq on >s3cr3t-pw ~app:* &* +@all",
    "no channels": "kiq on >s3cr3t-pw ~* resetchannels +@all",
    "no scripts": "kiq on >s3cr3t-pw ~* &* +@all -@scripting",
}


@pytest.mark.parametrize("user", MISSING_RIGHTS.values(), ids=MISSING_RIGHTS.keys())
def test_an_acl_user_without_the_rights_kiq_needs_exits_5_at_start(start_kiq, servers, user):
    port = acl_server(servers, user)
    kiq = start_kiq(redis_url=f"redis://kiq:s3cr3t-pw@127.0.0.1:{port}/0")
    assert kiq.wait(timeout=30) == 5
    lines = kiq.log().strip().splitlines()
    assert len(lines) == 1 and "redis refused a command: check the ACL user's permissions" in lines[0], lines
    assert "NOPERM" in lines[0] or "no permissions" in lines[0].lower()
    assert "s3cr3t" not in lines[0]
    assert kiq.workers() == [] and not kiq.generations()


def test_operator_commands_say_what_to_check_when_the_login_is_refused(servers):
    port = acl_server(servers, "kiq on >s3cr3t-pw ~* &* +@all")
    done = subprocess.run([sys.executable, "-m", "kiq", "stats", "--redis-url",
                           f"redis://kiq:wrong-pw@127.0.0.1:{port}/0"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 3
    assert done.stderr.startswith("kiq: redis refused the login: check the password"), done.stderr
    assert "wrong-pw" not in done.stderr


def test_workers_refused_later_keep_trying_and_say_why(start_kiq, servers):
    """A password rotated under running workers: existing connections keep working until Redis
    drops them; new ones are refused. Exiting would not help (a restarted kiq reads the same
    URL), so every process keeps its jobs and retries, logging once what to check."""
    port = acl_server(servers, "kiq on >s3cr3t-pw ~* &* +@all", "admin on >admin-pw ~* &* +@all")
    url = f"redis://kiq:s3cr3t-pw@127.0.0.1:{port}/0"
    admin = connect(f"redis://admin:admin-pw@127.0.0.1:{port}/0")
    kiq = start_kiq(redis_url=url, processes=1, concurrency=2)
    [worker] = kiq.wait_workers(1)
    run_python("import sample_jobs\nsample_jobs.RecordJob.perform_later('before')\n", url)
    wait_for(lambda: admin.lrange("results", 0, -1) == ["before"], timeout=20)
    admin.acl_setuser("kiq", enabled=True, reset_passwords=True, passwords=["+rotated-pw"])
    admin.client_kill_filter(user="kiq")
    wait_for(lambda: "redis refused the login" in kiq.log(), timeout=30)
    assert kiq.process.poll() is None and kiq.workers() == [worker]
    refused = [line for line in kiq.log().splitlines() if "redis refused the login" in line]
    assert all('"level": "error"' in line and "s3cr3t" not in line for line in refused), refused
    admin.acl_setuser("kiq", enabled=True, reset_passwords=True, passwords=["+s3cr3t-pw"])
    run_python("import sample_jobs\nsample_jobs.RecordJob.perform_later('after')\n", url)
    wait_for(lambda: admin.lrange("results", 0, -1) == ["before", "after"], timeout=30)
    wait_for(lambda: "redis available again" in kiq.log(), timeout=15)
    assert kiq.workers() == [worker]


def test_keep_trying_waits_with_a_growing_pause_and_stops_when_told():
    from kiq.connection import keep_trying

    tries, pauses = iter([False, False, False, True]), []
    assert keep_trying(lambda: next(tries), lambda pause: pauses.append(pause) or True)
    assert pauses == [0.1, 0.2, 0.4]
    assert not keep_trying(lambda: False, lambda pause: False)


def test_send_returns_each_reply_and_raises_an_error_reply_once_all_are_read(redis_server, r):
    client = connect(redis_server.url, retry=True)
    assert send(client, [("SET", "k", "v"), ("GET", "k"), ("SADD", "s", "a", "b")]) == ["OK", "v", 2]
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        send(client, [("LPUSH", "k", "x"), ("GET", "k")])
    assert send(client, [("GET", "k")]) == ["v"]  # not the stale reply of the failed call
    assert r.client_info()["id"] and len(r.client_list(_type="normal")) == 2  # its connection kept
    assert client.get("k") == "v"


def test_send_tries_again_on_a_new_connection_after_redis_restarted(redis_server):
    """Its connection is kept between calls; an enqueueing client's call (``again``) that finds
    it closed sends once more on a new one. Any other call fails, and the next one reconnects."""
    client = connect(redis_server.url, retry=True)
    assert send(client, [("LPUSH", "q", "1")], again=True) == [1]
    redis_server.stop()
    redis_server.start()
    assert send(client, [("LPUSH", "q", "2"), ("LLEN", "q")], again=True) == [1, 1]  # Redis kept nothing
    redis_server.stop()
    redis_server.start()
    with pytest.raises(redis.ConnectionError):
        send(client, [("LPUSH", "q", "3")])
    assert send(client, [("LLEN", "q")]) == [0]


def test_send_keeps_its_connection_checks_an_idle_one_and_never_shares_one_with_a_fork(
        redis_server, r, monkeypatch):
    from kiq import connection

    client = connect(redis_server.url)
    [first] = send(client, [("CLIENT", "ID")])
    assert all(send(client, [("CLIENT", "ID")]) == [first] for _ in range(20))
    monkeypatch.setattr(connection, "IDLE_CHECK", 0.05)
    r.client_kill_filter(_id=first)
    time.sleep(0.1)  # idle longer than IDLE_CHECK: checked, found closed, made again
    [second] = send(client, [("CLIENT", "ID")])
    assert second != first
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child's calls must not read the replies meant for the parent's
        try:
            os.write(write, str(send(client, [("CLIENT", "ID")])[0]).encode())
        finally:
            os._exit(0)
    os.close(write)
    assert os.waitpid(child, 0)[1] == 0
    assert int(os.read(read, 100)) not in (first, second)
    assert send(client, [("CLIENT", "ID")]) == [second]


def test_send_keeps_bytes_that_are_not_utf8_and_refuses_what_redis_cannot_take(redis_server):
    client = connect(redis_server.url, retry=True)  # decodes with surrogate escapes
    odd = b'{"class":"\xff\xfe"}'.decode("utf-8", "surrogateescape")
    assert send(client, [("LPUSH", "q", odd), ("ZADD", "z", 1796521849.3755984, "a")]) == [1, 1]
    assert redis.Redis.from_url(redis_server.url).lindex("q", 0) == b'{"class":"\xff\xfe"}'
    assert client.zscore("z", "a") == 1796521849.3755984
    with pytest.raises(redis.DataError):
        send(client, [("SET", "k", None)])
    assert send(client, [("LLEN", "q")]) == [1]


def test_commands_through_redis_py_name_again_what_is_not_utf8(redis_server):
    """A key and a value read from Redis that are not UTF-8 (decoded with surrogate escapes) go
    back byte for byte through redis-py's own commands and pipelines, whatever redis-py hands
    hiredis (before 8.2, text as it is, which hiredis refused)."""
    raw = redis.Redis.from_url(redis_server.url)
    raw.set(b"queue:\xff", b"\xfe payload")
    client = connect(redis_server.url)
    [key] = client.keys("queue:*")
    assert client.get(key) == b"\xfe payload".decode("utf-8", "surrogateescape")
    pipe = client.pipeline(transaction=False)
    pipe.strlen(key).append(key, "!")
    assert pipe.execute() == [9, 10]
    assert client.delete(key) == 1 and raw.keys() == []
    with pytest.raises(redis.DataError):
        client.set("k", None)
    assert client.execute_command("CLIENT SETNAME", "named") is True  # a name of two words splits


def test_no_sentinel_answering_is_one_short_line(tmp_path):
    """redis-py's MasterNotFoundError holds the repr of every Sentinel client it asked."""
    closed = [free_port() for _ in range(3)]
    url = "sentinel://" + ",".join(f"127.0.0.1:{port}" for port in closed) + "/kiqprimary/0"
    result = subprocess.run([sys.executable, "-m", "kiq", "stats", "--redis-url", url], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    [line] = result.stderr.strip().splitlines()
    assert "No master found for 'kiqprimary'" in line and "no Sentinel named its primary" in line
    assert len(line) < 200, line


class Said:
    """Stands in for an Outage's logger: the level and event of each line."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, event: str, **fields: object) -> None:
        self.lines.append(("info", event))

    def warning(self, event: str, **fields: object) -> None:
        self.lines.append(("warning", event))

    def error(self, event: str, **fields: object) -> None:
        self.lines.append(("error", event))


def test_a_redis_at_maxmemory_is_said_once_a_minute_not_at_every_refused_write(redis_server, r):
    """A Redis at maxmemory with noeviction refuses one write and takes the next (a script that
    extends an expiry first): the worker said "unavailable" and "available again" every beat."""
    from kiq.connection import Outage, refusal

    r.set("ballast", "x" * 2_000_000)
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", "1mb")
    with pytest.raises(redis.exceptions.OutOfMemoryError) as refused:
        r.set("more", "x")
    r.config_set("maxmemory", "0")
    said = Said()
    outage = Outage("fetch")
    outage.log = said
    for _ in range(5):
        outage.failed(refused.value)
        outage.recovered()
    hint = refusal(refused.value)
    assert hint is not None and "maxmemory" in hint
    assert said.lines == [("error", hint + "; retrying"), ("info", "redis available again")]
    outage.failed(redis.ConnectionError("gone"))  # another kind of outage is said as it comes
    assert said.lines[-1] == ("warning", "redis unavailable, retrying")
