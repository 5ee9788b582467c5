"""Sidekiq 8's job format: kiq reads it wherever it reads payloads and processes (scheduler, retries,
api, CLI, dashboard), and writes it when ``sidekiq_format`` is 8; 6 stays the default, unchanged.

The Sidekiq 8 data comes from tests/sidekiq8.py, built from what Sidekiq 8's sources write (no
Sidekiq 8 runs here: it needs Ruby 3.2)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator

import pytest
import sidekiq8
from conftest import sample_env, wait_for
from test_admin import kiq as run_kiq
from werkzeug.test import Client as WebClient

import kiq.web
from kiq import payload
from kiq.api import API, Process, find
from kiq.client import Client
from kiq.config import ConfigError, load
from kiq.keys import Keys
from kiq.scheduler import Scheduler


class Sidekiq8MailJob(kiq.Job):
    """An Active Job-shaped kiq job (never run here)."""

    active_job = True

    def perform(self, note: str) -> None:
        pass


@pytest.fixture(autouse=True)
def _writing_format() -> Iterator[None]:
    """Each test starts with the process writing the default format, and leaves it so."""
    payload.set_format(payload.DEFAULT_FORMAT)
    yield
    payload.set_format(payload.DEFAULT_FORMAT)


def utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- the one place that knows the formats ------------------------------------------------------


def test_epoch_seconds_reads_every_format_and_stamp_writes_the_chosen_one():
    now = 1_767_225_600.123456
    assert payload.epoch_seconds(now) == now  # Sidekiq 6 and 7
    assert payload.epoch_seconds(1_767_225_600_123) == pytest.approx(1_767_225_600.123)  # Sidekiq 8
    assert payload.epoch_seconds(1_767_225_600) == 1_767_225_600.0  # whole seconds
    assert [payload.epoch_seconds(value) for value in (None, "1767225600", True, [])] == [None] * 4
    assert payload.stamp(now) == now and payload.stamp(now, 7) == now
    assert payload.stamp(now, 8) == 1_767_225_600_123 and isinstance(payload.stamp(now, 8), int)
    assert payload.wrapper_class() == payload.wrapper_class(7) == payload.ACTIVE_JOB_WRAPPER
    assert payload.wrapper_class(8) == "Sidekiq::ActiveJob::Wrapper"
    payload.set_format(8)
    assert payload.stamp(now) == 1_767_225_600_123 and payload.wrapper_class() == sidekiq8.WRAPPER
    assert [payload.check_format(value) for value in (6, "7", 8)] == [6, 7, 8]
    for bad in (5, 9, "8.0", "eight", 8.0, True, None):
        with pytest.raises(ValueError, match="must be one of 6, 7, 8"):
            payload.check_format(bad)


def test_the_setting_comes_from_the_config_file_else_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(payload.FORMAT_ENV, raising=False)
    assert load().sidekiq_format == 6
    path = tmp_path / "kiq.yml"
    path.write_text("sidekiq_format: 8\n")
    assert load(str(path)).sidekiq_format == 8
    monkeypatch.setenv(payload.FORMAT_ENV, "7")
    assert load().sidekiq_format == 7 and load(str(path)).sidekiq_format == 8
    path.write_text("sidekiq_format: 9\n")
    with pytest.raises(ConfigError, match="sidekiq_format: must be one of 6, 7, 8"):
        load(str(path))
    monkeypatch.setenv(payload.FORMAT_ENV, "eight")
    with pytest.raises(ConfigError, match="KIQ_SIDEKIQ_FORMAT"):
        load()


# -- writing ----------------------------------------------------------------------------------


def test_the_client_writes_float_seconds_by_default_and_milliseconds_for_sidekiq_8(r, redis_server, client):
    import sample_jobs

    before = time.time()
    six = Client(redis_server.url)
    eight = kiq.configure(redis_server.url, sidekiq_format=8)
    six.enqueue(sample_jobs.EchoJob, ["six"])
    eight.enqueue(sample_jobs.EchoJob, ["eight"])
    eight.enqueue(sample_jobs.EchoJob, ["later"], at=before + 600)
    sample_jobs.EchoJob.perform_bulk([["bulk"]])  # through the default client kiq.configure set
    six.enqueue(Sidekiq8MailJob, ["six"])
    eight.enqueue(Sidekiq8MailJob, ["eight"])
    after = time.time()
    queued = {job["args"][0] if job["class"] == "EchoJob" else f"aj-{job['args'][0]['arguments'][0]}": job
              for job in map(json.loads, r.lrange("queue:default", 0, -1))}

    for name in ("six", "aj-six"):  # Sidekiq 6's format, as before
        job = queued[name]
        assert type(job["created_at"]) is float and before <= job["created_at"] <= after
        assert job["enqueued_at"] == job["created_at"]
    for name in ("eight", "bulk", "aj-eight"):
        job = queued[name]
        assert type(job["created_at"]) is int and before * 1000 - 1 <= job["created_at"] <= after * 1000
        assert job["enqueued_at"] == job["created_at"]
    assert queued["aj-six"]["class"] == "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"
    assert queued["aj-eight"]["class"] == "Sidekiq::ActiveJob::Wrapper"
    assert queued["aj-eight"]["wrapped"] == "Sidekiq8MailJob"

    [(raw, score)] = r.zrange("schedule", 0, -1, withscores=True)
    later = json.loads(raw)
    assert type(later["created_at"]) is int and "enqueued_at" not in later and "at" not in later
    assert score == pytest.approx(before + 600)  # the score stays in seconds, as in every Sidekiq


def test_a_worker_with_sidekiq_format_8_writes_milliseconds_and_its_capsule(r, redis_server, start_kiq):
    """Sidekiq 8's retry entry and scheduled job run in kiq: its scheduler moves them (writing
    ``enqueued_at`` in ms), the job fails again (``retried_at`` in ms, ``failed_at`` kept), and
    kiq's process entry has Sidekiq 8's ``capsules``."""
    now = time.time()
    failing = sidekiq8.failed(sidekiq8.job("FailJob", ["s8"], now - 120, retry=3), now - 60,
                              "ValueError", "boom s8")
    sidekiq8.retry(r, failing, now - 1)
    sidekiq8.schedule(r, sidekiq8.job("RecordJob", ["scheduled"], now - 30), now - 1)
    start_kiq(sidekiq_format=8, queues=["default", "low"])
    wait_for(lambda: r.llen("attempts") == 1 and r.zcard("retry") == 1 and r.llen("results") == 1, timeout=30)

    [again] = map(json.loads, r.zrange("retry", 0, -1))
    assert again["jid"] == failing["jid"] and again["retry_count"] == 1
    assert again["failed_at"] == failing["failed_at"]  # the first failure's time, as Sidekiq 8 wrote it
    assert type(again["retried_at"]) is int and again["retried_at"] >= now * 1000
    assert type(again["enqueued_at"]) is int and again["enqueued_at"] >= now * 1000  # the scheduler's

    api = API(redis_server.url, namespace="")
    [process] = wait_for(api.processes, timeout=15)
    assert process.info["capsules"] == {"default": {"concurrency": 4, "mode": "strict",
                                                    "weights": {"default": 0, "low": 0}}}
    assert process.info["weights"] == [{"default": 0, "low": 0}]  # as Sidekiq 7 writes them, in order
    assert list(process.info["weights"][0]) == ["default", "low"]
    assert process.queues == ["default", "low"] and process.concurrency == 4


def test_the_default_worker_still_writes_sidekiq_6_times_into_a_sidekiq_8_payload(r, start_kiq):
    now = time.time()
    failing = sidekiq8.failed(sidekiq8.job("FailJob", ["s6"], now - 120, retry=3), now - 60)
    sidekiq8.retry(r, failing, now - 1)
    start_kiq()
    wait_for(lambda: r.llen("attempts") == 1 and r.zcard("retry") == 1, timeout=30)
    [again] = map(json.loads, r.zrange("retry", 0, -1))
    assert type(again["retried_at"]) is float and type(again["enqueued_at"]) is float
    assert again["failed_at"] == failing["failed_at"]
    [identity] = r.smembers("processes")
    assert "capsules" not in json.loads(r.hget(identity, "info"))


def test_the_scheduler_moves_sidekiq_8_entries_in_the_format_it_writes(r, redis_server):
    now = time.time()
    first = sidekiq8.schedule(r, sidekiq8.job("EchoJob", [1], now - 10), now - 1)
    scheduler = Scheduler(redis_server.url, Keys(""), threading.Lock())
    assert scheduler.enqueue_due(r) == 1
    payload.set_format(8)
    second = sidekiq8.schedule(r, sidekiq8.job("EchoJob", [2], now - 10), now - 1)
    assert scheduler.enqueue_due(r) == 1
    moved = {job["jid"]: job for job in map(json.loads, r.lrange("queue:default", 0, -1))}
    assert moved[first["jid"]]["created_at"] == first["created_at"]  # kept as Sidekiq 8 wrote it
    assert type(moved[first["jid"]]["enqueued_at"]) is float
    enqueued = moved[second["jid"]]["enqueued_at"]
    assert type(enqueued) is int and enqueued >= now * 1000


# -- reading ----------------------------------------------------------------------------------


def fill(r) -> dict[str, dict]:
    """One of each, as Sidekiq 8 writes it, with known times."""
    now = time.time()
    waiting = sidekiq8.push(r, sidekiq8.job("EchoJob", ["waiting"], now - 90), now - 45)
    aj = sidekiq8.push(r, sidekiq8.active_job("MailJob", ["rails"], now - 40), now - 40)
    retrying = sidekiq8.retry(r, sidekiq8.failed(sidekiq8.job("FailJob", ["r"], now - 600), now - 300,
                                                 "ValueError", "boom r", retries=2), now + 900)
    died = sidekiq8.dead(r, sidekiq8.failed(sidekiq8.job("FailJob", ["d"], now - 700), now - 200), now - 200)
    later = sidekiq8.schedule(r, sidekiq8.job("EchoJob", ["later"], now - 20), now + 3600)
    running = sidekiq8.job("EchoJob", ["running"], now - 35)
    identity = sidekiq8.process(r, 4242, ["default", "mail"], 5, now - 3600, [running], since=now - 30)
    return {"waiting": waiting, "aj": aj, "retrying": retrying, "dead": died, "later": later,
            "running": running, "identity": {"name": identity}}


def test_the_api_reads_sidekiq_8_times_processes_and_rails_wrappers(r, redis_server):
    data = fill(r)
    api = API(redis_server.url, namespace="")
    now = time.time()
    [queue] = api.queues()
    assert queue.latency() == pytest.approx(now - data["waiting"]["enqueued_at"] / 1000, abs=2)
    assert 44 <= queue.latency() <= 50
    jobs = {job.jid: job for job in queue.jobs()}
    assert jobs[data["waiting"]["jid"]].enqueued_at == data["waiting"]["enqueued_at"] / 1000
    assert jobs[data["aj"]["jid"]].time("created_at") == data["aj"]["created_at"] / 1000

    [retrying] = api.retries.jobs()
    summary = retrying.summary()
    assert summary["failed_at"] == data["retrying"]["failed_at"] / 1000  # seconds, whoever wrote it
    assert now - 400 < retrying.time("retried_at") < now - 290
    [died] = api.dead.jobs()
    assert died.summary()["failed_at"] == pytest.approx(now - 200, abs=2)

    [process] = api.processes()
    assert (process.queues, process.concurrency) == (["default", "mail"], 5)
    assert process.capsules["default"]["mode"] == "strict"
    [running] = find(data["running"]["jid"], api)
    assert running.place == "running" and running.since == pytest.approx(now - 30, abs=2)

    from kiq.payload import job_name
    assert job_name(jobs[data["aj"]["jid"]].payload) == "MailJob"  # Sidekiq 8's wrapper, read through


def test_a_process_with_only_capsules_gives_its_queues_and_threads():
    capsules = {"default": {"concurrency": 3, "mode": "strict", "weights": {"a": 0, "b": 0}},
                "single": {"concurrency": 1, "mode": "strict", "weights": {"serial": 0, "a": 0}}}
    process = Process("h:1:ab", {"capsules": capsules}, 0, time.time(), False, 0)
    assert process.queues == ["a", "b", "serial"] and process.concurrency == 4
    plain = Process("h:2:cd", {"queues": ["x"], "concurrency": 7}, 0, time.time(), False, 0)
    assert (plain.queues, plain.concurrency, plain.capsules) == (["x"], 7, {})


def test_the_cli_shows_sidekiq_8_times_and_its_enqueue_writes_the_configured_format(r, redis_server,
                                                                                    tmp_path):
    data = fill(r)
    config = tmp_path / "kiq.yml"
    config.write_text(f"redis_url: {redis_server.url}\nsidekiq_format: 8\n")
    listing = run_kiq(redis_server.url, "retries", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    [entry] = json.loads(listing.stdout)
    assert entry["failed_at"] == data["retrying"]["failed_at"] / 1000
    shown = run_kiq(redis_server.url, "find", data["retrying"]["jid"])
    assert "failed      " in shown.stdout and "retried     " in shown.stdout
    def ago(label: str) -> int:
        return int(shown.stdout.split(f"{label:<12}")[1].split("s ago")[0])

    assert 355 <= ago("failed") <= 420 and 295 <= ago("retried") <= 360  # not 55,000 years off
    processes = run_kiq(redis_server.url, "processes")
    assert "default,mail" in processes.stdout and "1/5" in processes.stdout

    before = time.time()
    enqueued = run_kiq(None, "enqueue", "EchoJob", "cli", "-c", str(config), env=sample_env(redis_server.url))
    assert enqueued.returncode == 0, enqueued.stderr
    jid = enqueued.stdout.strip()
    [job] = [each for each in map(json.loads, r.lrange("queue:default", 0, -1)) if each["jid"] == jid]
    assert type(job["enqueued_at"]) is int and job["enqueued_at"] >= before * 1000


def test_the_dashboard_shows_sidekiq_8_times_and_processes(r, redis_server):
    data = fill(r)
    web = WebClient(kiq.web.app(redis_server.url))
    score = r.zscore("retry", sidekiq8.dump(data["retrying"]))
    html = web.get(f"/retries/{score!r}-{data['retrying']['jid']}").text
    assert utc(data["retrying"]["failed_at"] / 1000) in html
    assert utc(data["retrying"]["retried_at"] / 1000) in html
    assert utc(data["retrying"]["created_at"] / 1000) in html
    busy = web.get("/busy").text
    assert "default, mail" in busy and "1 / 5" in busy and data["running"]["jid"] in busy
    queues = web.get("/queues").text
    assert "default" in queues


# -- `python -m kiq`, for machines where Sidekiq 8.1's own `kiq` comes first on PATH -------------


def test_python_m_kiq_is_the_whole_command(r, redis_server):
    """Sidekiq 8.1's terminal UI is also called ``kiq``: ``python -m kiq`` must do all that the
    ``kiq`` command does, whatever PATH says."""
    helped = run_kiq(None, "--help", env=sample_env(""))
    assert helped.returncode == 0 and helped.stdout.startswith("Usage: python -m kiq ")
    for command in ("start", "web", "stats", "retries", "find", "enqueue"):
        assert f"  {command}" in helped.stdout
    r.set("stat:processed", 12)
    stats = run_kiq(redis_server.url, "stats", "--json")
    assert stats.returncode == 0 and json.loads(stats.stdout)["processed"] == 12
