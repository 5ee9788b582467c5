"""Starting kiq: importing the app, what a failed or hanging import looks like, signals meanwhile."""

from __future__ import annotations

import signal

import pytest
from conftest import wait_for

pytestmark = pytest.mark.slow


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
