"""`make run`'s demo writes to the Redis the environment names, and says which first."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from conftest import ROOT, TOKEN, RedisServer, descendants, sample_env, started_for, wait_for

pytestmark = pytest.mark.slow


def test_the_demo_uses_kiq_redis_url_and_names_it_without_the_password(redis_server: RedisServer,
                                                                       tmp_path: Path) -> None:
    redis_server.client().config_set("requirepass", "s3/cr")
    url = f"redis://:s3%2Fcr@127.0.0.1:{redis_server.port}/0"
    conn = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
    token = uuid.uuid4().hex
    env = {**sample_env(url), TOKEN: token, "REDIS_URL": "redis://127.0.0.1:1/0"}
    env.pop("KIQ_NAMESPACE", None)
    output = tmp_path / "demo.log"
    with open(output, "wb") as log:
        demo = subprocess.Popen([sys.executable, "-m", "demo"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: int(conn.get("stat:processed") or 0) > 0, timeout=60)
    finally:
        for pid in {*descendants(demo.pid), *started_for(token), demo.pid}:  # the demo execs kiq start
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        demo.wait(10)
    text = output.read_text(errors="replace")
    assert f"Redis at redis://:***@127.0.0.1:{redis_server.port}/0 (from KIQ_REDIS_URL" in text, text
    assert "s3" not in text
