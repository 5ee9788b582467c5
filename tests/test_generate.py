"""``kiq generate job``: names, paths, the real CLI writing into a project, and the generated test run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from kiq.generate import GenerateError, JobName, job_name, plan

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def kiq(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kiq", "generate", "job", *args], cwd=project,
                          env=environment(), capture_output=True, text=True, timeout=60)


def pytest_in(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                          env=environment(), capture_output=True, text=True, timeout=120)


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("KIQ_ADAPTER", None)
    return env


# Names


@pytest.mark.parametrize("name", ["ProcessImageData", "process_image_data", "ProcessImageDataJob",
                                  "process_image_data_job", "processImageData", "Process_Image_Data_Job"])
def test_names_are_normalised(name: str) -> None:
    assert job_name(name) == JobName("ProcessImageDataJob", "process_image_data_job")


@pytest.mark.parametrize(("name", "class_name", "module"), [
    ("HTMLParser", "HTMLParserJob", "html_parser_job"),
    ("parse_html", "ParseHtmlJob", "parse_html_job"),
    ("Resize2xImage", "Resize2xImageJob", "resize2x_image_job"),
    ("JobJob", "JobJob", "job_job"),
    ("Billing", "BillingJob", "billing_job"),
    ("S3Upload3", "S3Upload3Job", "s3_upload3_job"),  # as Rails' underscore: not s_3_upload3
    ("HTTP2Client", "HTTP2ClientJob", "http2_client_job"),
])
def test_words_acronyms_and_digits(name: str, class_name: str, module: str) -> None:
    assert job_name(name) == JobName(class_name, module)


@pytest.mark.parametrize(("name", "reason"), [
    ("process-image", "not a valid job name: use a Python identifier"),
    ("1st_job", "use a Python identifier"),
    ("class", "use a Python identifier"),
    ("Café", "use a Python identifier"),
    ("", "use a Python identifier"),
    ("_hidden", "must not start with an underscore"),
    ("Job", "needs more than the Job suffix"),
    ("job", "needs more than the Job suffix"),
])
def test_names_that_are_not_identifiers_are_refused(name: str, reason: str) -> None:
    with pytest.raises(GenerateError, match=reason):
        job_name(name)


# Paths


@pytest.mark.parametrize(("path", "job_file", "test_file", "module"), [
    ("app/jobs", "app/jobs/x_job.py", "tests/jobs/test_x_job.py", "app.jobs.x_job"),
    ("./app/jobs/", "app/jobs/x_job.py", "tests/jobs/test_x_job.py", "app.jobs.x_job"),
    ("shop/billing/jobs", "shop/billing/jobs/x_job.py", "tests/billing/jobs/test_x_job.py",
     "shop.billing.jobs.x_job"),
    ("jobs", "jobs/x_job.py", "tests/test_x_job.py", "jobs.x_job"),
    (".", "x_job.py", "tests/test_x_job.py", "x_job"),
])
def test_the_test_mirrors_the_job_path(path: str, job_file: str, test_file: str, module: str) -> None:
    planned = plan("X", path)
    assert (planned.job_file, planned.test_file) == (PurePosixPath(job_file), PurePosixPath(test_file))
    assert planned.import_path == module


@pytest.mark.parametrize(("path", "queue", "reason"), [
    ("/srv/app/jobs", None, "must be a directory inside the project"),
    ("../jobs", None, "must be a directory inside the project"),
    ("app/my-jobs", None, "'my-jobs' is not a valid Python package name"),
    ("app/jobs", "", "not a valid queue name"),
    ("app/jobs", "low priority", "not a valid queue name"),
])
def test_paths_and_queues_that_cannot_work_are_refused(path: str, queue: str | None, reason: str) -> None:
    with pytest.raises(GenerateError, match=reason):
        plan("X", path, queue)


# The real CLI in a project


def test_generates_a_job_and_a_test_that_passes(tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()  # an existing directory (a namespace package here) is left as it is
    made = kiq(tmp_path, "ProcessImageData", "--queue", "low_priority")
    assert made.returncode == 0, made.stderr
    assert made.stdout.split() == [
        "create", "app/__init__.py", "create", "app/jobs/__init__.py",
        "create", "app/jobs/process_image_data_job.py", "create", "tests/jobs/test_process_image_data_job.py",
    ]
    job = (tmp_path / "app/jobs/process_image_data_job.py").read_text()
    assert "class ProcessImageDataJob(kiq.Job):" in job
    assert '    queue = "low_priority"\n' in job
    assert "    def perform(self, *args: object, **kwargs: object) -> None:\n        \"\"\"TODO" in job
    test = (tmp_path / "tests/jobs/test_process_image_data_job.py").read_text()
    assert "from app.jobs.process_image_data_job import ProcessImageDataJob" in test
    assert 'queue="low_priority"' in test

    other = kiq(tmp_path, "billing_reminder_job", "--path", "shop/billing/jobs")
    assert other.returncode == 0, other.stderr
    assert not (tmp_path / "shop/__init__.py").exists()
    assert (tmp_path / "shop/billing/__init__.py").exists()
    assert (tmp_path / "shop/billing/jobs/billing_reminder_job.py").exists()
    assert "queue" not in (tmp_path / "shop/billing/jobs/billing_reminder_job.py").read_text()
    assert not (tmp_path / "tests/__init__.py").exists()

    ran = pytest_in(tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "4 passed" in ran.stdout

    lint = subprocess.run([str(BIN / "ruff"), "check", "--isolated", "--no-cache", "--select",
                           "E,F,W,I,UP,B", "."], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout

    # A real test: a job that fails makes its generated test fail.
    broken = tmp_path / "app/jobs/process_image_data_job.py"
    broken.write_text(job.replace('"""TODO', 'raise RuntimeError("boom")\n        """TODO'))
    failed = pytest_in(tmp_path)
    assert failed.returncode == 1
    assert "test_performs" in failed.stdout and "RuntimeError: boom" in failed.stdout


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    job_file = tmp_path / "app/jobs/process_image_data_job.py"
    job_file.parent.mkdir(parents=True)
    job_file.write_text("# mine\n")
    refused = kiq(tmp_path, "ProcessImageDataJob")
    assert refused.returncode == 1
    assert refused.stderr == ("kiq: app/jobs/process_image_data_job.py already exists; nothing written "
                              "(--force overwrites)\n")
    assert job_file.read_text() == "# mine\n"
    assert not (tmp_path / "tests").exists()
    assert not (tmp_path / "app/jobs/__init__.py").exists()

    forced = kiq(tmp_path, "ProcessImageDataJob", "--force", "--queue", "images")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.split() == ["force", "app/jobs/process_image_data_job.py",
                                     "create", "tests/jobs/test_process_image_data_job.py"]
    assert 'queue = "images"' in job_file.read_text()


def test_force_never_overwrites_the_test_of_a_job_of_that_name_in_another_package(tmp_path: Path) -> None:
    """app/jobs and billing/jobs share tests/jobs: the second SyncJob's test would replace the
    first one's, which --force, suggested by the message, did."""
    assert kiq(tmp_path, "SyncJob").returncode == 0
    test_file = tmp_path / "tests/jobs/test_sync_job.py"
    first = test_file.read_text()
    for force in ([], ["--force"]):
        refused = kiq(tmp_path, "SyncJob", "--path", "billing/jobs", *force)
        assert refused.returncode == 1
        assert refused.stderr == ("kiq: tests/jobs/test_sync_job.py tests app.jobs.sync_job, another job of "
                                  "this name (jobs in two packages share the tests folder); nothing written: "
                                  "give this job another name, or move that test\n")
        assert test_file.read_text() == first and not (tmp_path / "billing").exists()
    assert kiq(tmp_path, "SyncJob", "--force").returncode == 0  # its own test: --force rewrites it


def test_a_bad_name_is_an_error_with_nothing_written(tmp_path: Path) -> None:
    refused = kiq(tmp_path, "process-image-data")
    assert refused.returncode == 1
    assert refused.stderr.startswith("kiq: 'process-image-data' is not a valid job name")
    assert list(tmp_path.iterdir()) == []
