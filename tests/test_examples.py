"""The Flask example app enqueues a job with a model argument that a running kiq performs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, descendants, sample_env

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "flask_app"

SIGNUP = """
import json, time
from app import app
client = app.test_client()
signup = client.post("/signup", data={"email": "ada@example.com"}).get_json()
for _ in range(200):
    user = client.get(f"/users/{signup['user']}").get_json()
    if user.get("welcomed"):
        break
    time.sleep(0.05)
print(json.dumps([signup, user]))
"""


def test_flask_signup_enqueues_a_job_that_kiq_runs_with_the_located_user(redis_server, tmp_path: Path):
    env = {**sample_env(redis_server.url, EXAMPLE), "EXAMPLE_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "kiq", "start", "-r", "jobs", "-q", "mailers", "-p", "1",
         "--metrics-port", "0"],
        cwd=EXAMPLE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        done = subprocess.run([sys.executable, "-c", SIGNUP], cwd=EXAMPLE, env=env, capture_output=True,
                              text=True, timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            output, _ = worker.communicate(timeout=30)
        finally:
            for pid in [*descendants(worker.pid), worker.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert done.returncode == 0, done.stderr
    signup, user = json.loads(done.stdout.splitlines()[-1])
    assert len(signup["jid"]) == 24
    assert user == {"email": "ada@example.com", "welcomed": True}, output
    assert f"Hello, ada@example.com! (job {signup['jid']})" in output


def test_the_app_and_a_worker_starting_together_both_get_the_schema(tmp_path: Path):
    """Both import models.py, which creates the table; on a new database the two used to
    race (a check-then-create lost about one start in two: "table users already exists")."""
    for attempt in range(8):
        env = {**sample_env("redis://127.0.0.1:1/0", EXAMPLE),
               "EXAMPLE_DATABASE_URL": f"sqlite:///{tmp_path / f'{attempt}.db'}"}
        pair = [subprocess.Popen([sys.executable, "-c", "import models"], cwd=EXAMPLE, env=env,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
        errors = [process.communicate(timeout=60)[1] for process in pair]
        assert [process.returncode for process in pair] == [0, 0], errors
