"""Starting kiq: importing the app, what a failed or hanging import looks like, signals meanwhile."""

from __future__ import annotations

import signal
import time

import pytest
from conftest import alive, children, started_for, title, wait_for

pytestmark = pytest.mark.slow

HANGS = "import time\ntime.sleep(3600)\n"
HANGS_IF_FLAGGED = ("import pathlib, time\n"
                    "if pathlib.Path(__file__).with_name('hang').exists():\n    time.sleep(3600)\n")


def loading(kiq) -> list[int]:
    """The master's supervisors still importing the app."""
    return [pid for pid in children(kiq.pid) if alive(pid) and title(pid).endswith("[loading]")]


def test_a_require_module_that_fails_to_import_prints_the_whole_traceback(start_kiq, tmp_path):
    (tmp_path / "settings_for_app.py").write_text(
        "import os\nDATABASE_URL = os.environ['KIQ_TEST_UNSET_DATABASE_URL']\n")
    (tmp_path / "app_with_settings.py").write_text("import settings_for_app\n")
    kiq = start_kiq(require=["sample_jobs", "app_with_settings"])
    assert kiq.wait(60) == 3
    output = kiq.log()
    assert "app_with_settings.py" in output and "settings_for_app.py" in output, output
    assert output.strip().splitlines()[-1] == (
        "kiq: cannot load 'app_with_settings': KeyError: 'KIQ_TEST_UNSET_DATABASE_URL'")


def test_the_generation_says_which_jobs_it_loaded_and_warns_when_none(start_kiq, tmp_path):
    (tmp_path / "no_jobs_here.py").write_text("VALUE = 1\n")
    kiq = start_kiq(require=["no_jobs_here"])
    wait_for(lambda: "no job classes loaded" in kiq.log(), timeout=30)
    kiq.signal(signal.SIGTERM)
    assert kiq.wait() == 0

    loaded = start_kiq(require=["sample_jobs"], periodic=[
        {"name": "every-minute", "cron": "* * * * *", "class": "RecordJob", "args": ["tick"]}])
    wait_for(lambda: "app loaded" in loaded.log(), timeout=30)
    line = next(line for line in loaded.log().splitlines() if "app loaded" in line)
    assert '"RecordJob"' in line and '"SlowJob"' in line and '"every-minute"' in line, line
    assert "no job classes loaded" not in loaded.log()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_term_or_int_stops_a_master_whose_app_hangs_at_import(start_kiq, tmp_path, signum):
    (tmp_path / "hanging_app.py").write_text(HANGS)
    kiq = start_kiq(require=["sample_jobs", "hanging_app"])
    wait_for(lambda: loading(kiq), timeout=30)
    kiq.signal(signum)
    assert kiq.wait(30) == 0
    wait_for(lambda: not started_for(kiq.token))


def test_an_app_that_does_not_load_within_boot_timeout_stops_the_start_with_exit_code_3(start_kiq, tmp_path):
    (tmp_path / "hanging_app.py").write_text(HANGS)
    kiq = start_kiq(require=["sample_jobs", "hanging_app"], boot_timeout=2)
    assert kiq.wait(60) == 3
    assert kiq.log().strip().splitlines()[-1] == ("kiq: generation 1 did not load the app within 2s "
                                                  "(boot_timeout): does a require module hang at import?")
    wait_for(lambda: not started_for(kiq.token))


def test_hups_during_a_hanging_reload_leave_one_loading_generation_and_term_still_stops(
        start_kiq, tmp_path, r, client):
    import sample_jobs

    (tmp_path / "sometimes_hanging.py").write_text(HANGS_IF_FLAGGED)
    kiq = start_kiq(require=["sample_jobs", "sometimes_hanging"])
    [worker] = kiq.wait_workers(1)
    (tmp_path / "hang").touch()
    for number in (2, 3, 4):
        kiq.signal(signal.SIGHUP)
        wait_for(lambda n=number: [title(pid) for pid in loading(kiq)] == [f"kiq generation {n} [loading]"],
                 timeout=30)
    time.sleep(1.0)
    assert [title(pid) for pid in loading(kiq)] == ["kiq generation 4 [loading]"]
    sample_jobs.RecordJob.perform_later("served")
    wait_for(lambda: r.lrange("results", 0, -1) == ["served"])
    assert kiq.workers() == [worker]
    kiq.signal(signal.SIGTERM)
    assert kiq.wait(60) == 0
    wait_for(lambda: not started_for(kiq.token))


def test_hups_while_waiting_for_redis_at_start_are_ignored_said_so(start_kiq, redis_server, client, r):
    """The master waits for Redis before it starts anything: a HUP then has nothing to reload
    (it started a generation of its own, and the master crashed once Redis answered)."""
    import sample_jobs

    redis_server.stop()
    kiq = start_kiq()
    wait_for(lambda: "redis unreachable, retrying" in kiq.log(), timeout=30)
    for count in (1, 2):  # one at a time: signals sent together may arrive as one
        kiq.signal(signal.SIGHUP)
        wait_for(lambda n=count: kiq.log().count("signal ignored") == n, timeout=10)
    redis_server.start()
    kiq.wait_workers(1, timeout=30)
    sample_jobs.RecordJob.perform_later("served")
    wait_for(lambda: r.lrange("results", 0, -1) == ["served"])
    assert [title(pid) for pid in kiq.generations()] == ["kiq generation 1 [1 workers]"]
    assert kiq.process.poll() is None


IGNORES_TERM = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"


def test_an_app_that_ignores_term_at_import_still_lets_its_generations_stop(start_kiq, tmp_path):
    """The supervisor takes its signals back after importing the app: two reloads, then TERM,
    and every generation stops; none is left running after the master has exited."""
    (tmp_path / "ignores_term.py").write_text(IGNORES_TERM)
    kiq = start_kiq(require=["sample_jobs", "ignores_term"], timeout=2)
    kiq.wait_workers(1)
    for number in (2, 3):
        kiq.signal(signal.SIGHUP)
        wait_for(lambda n=number: kiq.log().count("generation running") == n, timeout=30)
    kiq.signal(signal.SIGTERM)
    assert kiq.wait(60) == 0
    assert "did not stop in time" not in kiq.log()
    wait_for(lambda: not started_for(kiq.token), timeout=20)
