"""Unit tests for kiq.client: Sidekiq's payload and Redis layout, bulk pushes, namespaces, env resolution."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import kiq
import kiq.client
from kiq.client import Client, build_payload
from kiq.connection import DEFAULT_URL

JID = re.compile(r"[0-9a-f]{24}")
BASE_FIELDS = {"class", "args", "jid", "queue", "retry", "created_at", "enqueued_at"}


class ClientPlainJob(kiq.Job):
    def perform(self, *args: Any, **kwargs: Any) -> None:
        pass


class ClientLowJob(kiq.Job):
    queue = "low"
    retry = 3

    def perform(self, *args: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KIQ_REDIS_URL", "REDIS_URL", "KIQ_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_default() -> Iterator[None]:
    """No default client, so the next perform_later resolves Redis from the environment."""
    kiq.client._default = None
    yield
    kiq.client._default = None


def queued(r, queue: str = "default", prefix: str = "") -> list[dict[str, Any]]:
    """The jobs of a queue in the order a consumer takes them (from the right)."""
    return [json.loads(raw) for raw in reversed(r.lrange(f"{prefix}queue:{queue}", 0, -1))]


def scheduled(r, prefix: str = "") -> list[tuple[dict[str, Any], float]]:
    return [(json.loads(raw), score) for raw, score in r.zrange(f"{prefix}schedule", 0, -1, withscores=True)]


def command_calls(r) -> dict[str, int]:
    stats = r.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


# Payload


def test_payload_has_exactly_sidekiqs_fields(client, r):
    before = time.time()
    handle = ClientPlainJob.perform_later(1, "two", [3], {"four": 4})
    after = time.time()
    [payload] = queued(r)
    assert set(payload) == BASE_FIELDS
    assert payload["class"] == "ClientPlainJob"
    assert payload["args"] == [1, "two", [3], {"four": 4}]
    assert JID.fullmatch(payload["jid"])
    assert payload["queue"] == "default"
    assert payload["retry"] is True
    assert type(payload["created_at"]) is float
    assert type(payload["enqueued_at"]) is float
    assert before <= payload["created_at"] <= payload["enqueued_at"] <= after
    assert handle == kiq.Enqueued(payload["jid"], "ClientPlainJob", "default", None)


def test_job_class_queue_and_retry_go_into_the_payload(client, r):
    ClientLowJob.perform_later(7)
    [payload] = queued(r, "low")
    assert payload["queue"] == "low"
    assert payload["retry"] == 3
    assert r.llen("queue:default") == 0


def test_a_string_that_is_not_valid_unicode_is_refused_with_nothing_enqueued(client, r):
    """A lone surrogate (os.fsdecode of bytes that are not UTF-8) is written as ``\\udcff``,
    which Ruby reads as a string it cannot write back: Sidekiq's poller, API or Web UI lost the
    job. Characters beyond the BMP (escaped as a pair) are fine."""
    bad = os.fsdecode(b"report-\xff.csv")
    for enqueue in (lambda: ClientPlainJob.perform_later(bad),
                    lambda: ClientPlainJob.set(wait=60).perform_later(name=bad),
                    lambda: ClientPlainJob.perform_bulk([["ok"], [[bad]]]),
                    lambda: client.enqueue("RubyJob", ["\ud800"])):
        with pytest.raises(kiq.SerializationError, match="not valid Unicode"):
            enqueue()
    assert r.keys("*") == []
    ClientPlainJob.perform_later("\U0001f600 \\udcff")  # an emoji, and a backslash followed by text
    assert json.loads(r.lrange("queue:default", 0, -1)[0])["args"] == ["\U0001f600 \\udcff"]


def test_kwargs_field_only_when_keyword_arguments_are_given(client, r):
    ClientPlainJob.perform_later(1)
    ClientPlainJob.perform_later(1, size="large")
    without, with_kwargs = queued(r)
    assert "kwargs" not in without
    assert set(with_kwargs) == BASE_FIELDS | {"kwargs"}
    assert with_kwargs["args"] == [1]
    assert with_kwargs["kwargs"] == {"size": "large"}


def test_every_job_gets_its_own_jid(client, r):
    jids = {ClientPlainJob.perform_later(n).jid for n in range(50)}
    assert len(jids) == 50
    assert all(JID.fullmatch(jid) for jid in jids)
    assert {job["jid"] for job in queued(r)} == jids


def test_jids_do_not_repeat_after_the_app_seeds_random_or_forks():
    random.seed(7)
    first = kiq.client.new_jid()
    random.seed(7)
    assert kiq.client.new_jid() != first
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next jids, which must not be the parent's next ones
        os.write(write, " ".join(kiq.client.new_jids(3)).encode())
        os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 1000).decode().split()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    parent = kiq.client.new_jids(3)
    assert len(child) == 3 and all(JID.fullmatch(jid) for jid in child + parent)
    assert not set(child) & set(parent)


def _untemper(value: int) -> int:
    """The Mersenne Twister state word behind one 32-bit output (its tempering undone)."""
    value ^= value >> 18
    value ^= (value << 15) & 0xEFC60000
    result = value
    for _ in range(4):
        result = value ^ ((result << 7) & 0x9D2C5680)
    value = result & 0xFFFFFFFF
    result = value
    for _ in range(2):
        result = value ^ (result >> 11)
    return result


def _clone_generator(jids: list[str]) -> random.Random:
    """A Mersenne Twister in the state that made ``jids`` (208 of them: 624 words), had they
    come from one: ``getrandbits(96)`` draws three words, the least significant first."""
    words = [int(jid[start : start + 8], 16) for jid in jids for start in (16, 8, 0)]
    clone = random.Random()
    clone.setstate((3, (*(_untemper(word) for word in words[-624:]), 624), None))
    return clone


def test_a_jid_cannot_be_predicted_from_the_jids_before_it():
    """Sidekiq's jids come from SecureRandom: an app may hand one out as a token. From 208 jids
    of a seeded generator (Python's random, whatever its seed) the next ones follow."""
    clone = _clone_generator([kiq.client.new_jid() for _ in range(208)])
    predicted = f"{clone.getrandbits(96):024x}"
    predicted_bulk = f"{clone.getrandbits(96 * 3):072x}"
    assert kiq.client.new_jid() != predicted
    assert "".join(kiq.client.new_jids(3)) != predicted_bulk


def test_the_clone_predicts_a_seeded_generator():
    """The check above would catch a seeded generator: it predicts one."""
    generator = random.Random(os.urandom(16))
    clone = _clone_generator([f"{generator.getrandbits(96):024x}" for _ in range(208)])
    assert clone.getrandbits(96) == generator.getrandbits(96)


def test_lpush_keeps_each_queue_fifo(client, r):
    for n in range(5):
        ClientPlainJob.perform_later(n)
        ClientLowJob.perform_later(100 + n)
    # Producers LPUSH: the newest job is leftmost, the oldest is taken first from the right.
    assert [json.loads(raw)["args"] for raw in r.lrange("queue:default", 0, -1)] == [[4], [3], [2], [1], [0]]
    assert [json.loads(r.rpop("queue:low"))["args"] for _ in range(5)] == [[100], [101], [102], [103], [104]]


def test_queues_set_lists_every_queue_pushed_to(client, r):
    ClientPlainJob.perform_later()
    ClientLowJob.perform_later()
    client.enqueue(ClientPlainJob, [], queue="critical")
    assert r.smembers("queues") == {"default", "low", "critical"}


# Scheduled jobs


def test_scheduled_job_goes_to_schedule_with_at_as_score(client, r):
    at = time.time() + 3600
    handle = client.enqueue(ClientPlainJob, [1], at=at)
    [(payload, score)] = scheduled(r)
    assert score == at
    # As Sidekiq stores it: no "at" (the score says when), or Sidekiq's client, pushing the
    # entry when it is due or added to its queue, would file it back in the schedule.
    assert "at" not in payload
    assert "enqueued_at" not in payload
    assert set(payload) == BASE_FIELDS - {"enqueued_at"}
    assert handle.at == at and handle.jid == payload["jid"]
    assert r.llen("queue:default") == 0
    assert not r.exists("queues")


def test_scheduling_wakes_the_scheduler(client, r):
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("kiq:schedule-wakeup")
    pubsub.get_message(timeout=1)
    at = time.time() + 60
    client.enqueue(ClientPlainJob, [], at=at)
    message = pubsub.get_message(timeout=2)
    pubsub.close()
    assert message is not None
    assert float(message["data"]) == at


def test_job_due_now_or_in_the_past_is_enqueued_at_once(client, r):
    client.enqueue(ClientPlainJob, [1], at=time.time() - 10)
    [payload] = queued(r)
    assert "at" not in payload and "enqueued_at" in payload
    assert r.zcard("schedule") == 0


@pytest.mark.parametrize("at", [math.inf, math.nan, 1e300, 10**400, -math.inf, 10**5000],
                         ids=["inf", "nan", "1e300", "10**400", "-inf", "10**5000"])
def test_a_time_no_job_can_wait_for_is_refused(client, r, at):
    """A job at inf would never run and one at NaN at once, whatever the caller meant."""
    with pytest.raises(ValueError, match="is no time a job can wait for"):
        client.enqueue(ClientPlainJob, [1], at=at)
    with pytest.raises(TypeError, match="epoch seconds"):
        client.enqueue(ClientPlainJob, [1], at=True)
    assert r.keys("*") == []


# Bulk


def test_enqueue_bulk_sends_one_pipeline_per_batch(client, r):
    r.config_resetstat()
    jids = client.enqueue_bulk(ClientPlainJob, ([n] for n in range(2500)), batch_size=1000)
    calls = command_calls(r)
    assert len(jids) == 2500 == len(set(jids))
    assert all(JID.fullmatch(jid) for jid in jids)
    jobs = queued(r)
    assert [job["args"] for job in jobs] == [[n] for n in range(2500)]
    assert [job["jid"] for job in jobs] == jids
    # Three batches: one SADD and one multi-value LPUSH each, nothing else.
    assert calls.get("lpush") == 3
    assert calls.get("sadd") == 3
    assert "multi" not in calls


def test_push_bulk_groups_several_queues_in_one_pipeline(client, r):
    payloads = [build_payload("ClientPlainJob", [n], queue=q) for n in range(6) for q in ("a", "b", "c")]
    r.config_resetstat()
    jids = client.push_bulk(payloads)
    calls = command_calls(r)
    assert jids == [p["jid"] for p in payloads]
    assert calls.get("sadd") == 1
    assert calls.get("lpush") == 3
    assert r.smembers("queues") == {"a", "b", "c"}
    for q in ("a", "b", "c"):
        assert [job["args"] for job in queued(r, q)] == [[n] for n in range(6)]


def test_a_bulk_job_is_the_payload_a_single_enqueue_writes(client, r):
    client.enqueue(ClientLowJob, ["a", {"b": [1, 2.5, None]}, dt.date(2026, 1, 2)])
    client.enqueue_bulk(ClientLowJob, [["a", {"b": [1, 2.5, None]}, dt.date(2026, 1, 2)], [], ["é\n\""]])
    single, *bulk = queued(r, "low")
    for payload in [single, *bulk]:
        assert JID.fullmatch(payload.pop("jid"))
        assert payload.pop("created_at") == payload.pop("enqueued_at")
    assert bulk[0] == single == {"class": "ClientLowJob", "queue": "low", "retry": 3,
                                 "args": single["args"]} and len(single["args"]) == 3
    assert [job["args"] for job in bulk[1:]] == [[], ["é\n\""]]
    at = time.time() + 60
    client.enqueue(ClientLowJob, [1], at=at)
    client.enqueue_bulk(ClientLowJob, [[1]], at=at)
    (one, one_at), (other, other_at) = scheduled(r)
    assert one_at == other_at == at
    assert {k: v for k, v in one.items() if k not in ("jid", "created_at")} == \
        {k: v for k, v in other.items() if k not in ("jid", "created_at")}


def test_bulk_scheduled_jobs_all_go_to_the_schedule(client, r):
    at = time.time() + 600
    jids = client.enqueue_bulk(ClientPlainJob, ([n] for n in range(30)), at=at, batch_size=7)
    entries = scheduled(r)
    assert len(entries) == 30
    assert {p["jid"] for p, _ in entries} == set(jids)
    assert all(score == at and "at" not in p and "enqueued_at" not in p for p, score in entries)
    assert r.llen("queue:default") == 0


def test_perform_bulk_uses_the_job_class_settings(client, r):
    jids = ClientLowJob.perform_bulk([[n] for n in range(5)], batch_size=2)
    jobs = queued(r, "low")
    assert [job["jid"] for job in jobs] == jids
    assert all(job["retry"] == 3 and job["class"] == "ClientLowJob" for job in jobs)


# Namespace and wire names


def test_namespace_prefixes_every_key(redis_server, r):
    client = Client(redis_server.url, namespace="myapp")
    client.enqueue(ClientPlainJob, [1])
    client.enqueue(ClientLowJob, [2], at=time.time() + 60)
    client.enqueue_bulk(ClientPlainJob, [[3], [4]], queue="bulk")
    assert set(r.keys("*")) == {"myapp:queues", "myapp:queue:default", "myapp:queue:bulk", "myapp:schedule"}
    assert r.smembers("myapp:queues") == {"default", "bulk"}
    assert [job["args"] for job in queued(r, "bulk", prefix="myapp:")] == [[3], [4]]


def test_namespaced_schedule_wakeup_channel(redis_server, r):
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("myapp:kiq:schedule-wakeup")
    pubsub.get_message(timeout=1)
    Client(redis_server.url, namespace="myapp").enqueue(ClientPlainJob, [], at=time.time() + 60)
    message = pubsub.get_message(timeout=2)
    pubsub.close()
    assert message is not None


def test_enqueue_by_wire_name(client, r):
    handle = client.enqueue("Billing::InvoiceJob", [42], {"notify": True})
    [payload] = queued(r)
    assert payload["class"] == "Billing::InvoiceJob"
    assert payload["args"] == [42]
    assert payload["kwargs"] == {"notify": True}
    assert payload["queue"] == "default"
    assert payload["retry"] is True
    assert handle.job_class == "Billing::InvoiceJob"
    client.enqueue("Billing::InvoiceJob", [43], queue="billing", retry=5)
    [other] = queued(r, "billing")
    assert other["retry"] == 5


# Serialization errors


@pytest.mark.parametrize(
    "enqueue",
    [
        lambda c: ClientPlainJob.perform_later(1, object()),
        lambda c: ClientPlainJob.perform_later(1, when=object()),
        lambda c: ClientPlainJob.set(wait=60).perform_later({"x": object()}),
        lambda c: c.enqueue("Ruby::Job", [float("nan")]),
        lambda c: c.enqueue_bulk(ClientPlainJob, [[1], [2], [object()]]),
        lambda c: ClientPlainJob.perform_bulk([[1], [object()]]),
    ],
    ids=["arg", "kwarg", "scheduled", "wire-name", "bulk", "perform-bulk"],
)
def test_unserializable_argument_fails_in_the_caller_and_writes_nothing(client, r, enqueue):
    with pytest.raises(kiq.SerializationError):
        enqueue(client)
    assert r.dbsize() == 0


def test_serialization_error_says_where_the_bad_value_is(client):
    with pytest.raises(kiq.SerializationError, match=r"args\[1\]"):
        ClientPlainJob.perform_later(1, object())


# Where the client finds Redis


def test_kiq_redis_url_wins_over_redis_url(monkeypatch, redis_server, r, no_default):
    monkeypatch.setenv("KIQ_REDIS_URL", redis_server.url)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert Client().redis_url == redis_server.url
    ClientPlainJob.perform_later(1)
    assert r.llen("queue:default") == 1


def test_redis_url_is_used_without_kiq_redis_url(monkeypatch, redis_server, r, no_default):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    assert Client().redis_url == redis_server.url
    ClientPlainJob.perform_later(1)
    assert r.llen("queue:default") == 1


def test_local_default_without_any_setting():
    # Building a client does not connect, so this touches no Redis.
    assert Client().redis_url == DEFAULT_URL == "redis://127.0.0.1:6379/0"
    assert Client().keys.prefix == ""


def test_explicit_url_wins_over_the_environment(monkeypatch, redis_server, r, no_default):
    monkeypatch.setenv("KIQ_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    kiq.configure(redis_url=redis_server.url)
    ClientPlainJob.perform_later(1)
    assert r.llen("queue:default") == 1
    assert Client(redis_server.url).redis_url == redis_server.url


def test_kiq_namespace_from_the_environment(monkeypatch, redis_server, r, no_default):
    monkeypatch.setenv("KIQ_REDIS_URL", redis_server.url)
    monkeypatch.setenv("KIQ_NAMESPACE", "envns")
    ClientPlainJob.perform_later(1)
    assert set(r.keys("*")) == {"envns:queues", "envns:queue:default"}


def test_explicit_namespace_wins_over_the_environment(monkeypatch, redis_server, r):
    monkeypatch.setenv("KIQ_NAMESPACE", "envns")
    Client(redis_server.url, namespace="").enqueue(ClientPlainJob, [1])
    Client(redis_server.url, namespace="other").enqueue(ClientPlainJob, [2])
    assert set(r.keys("*")) == {"queues", "queue:default", "other:queues", "other:queue:default"}


def test_bulk_with_a_bad_argument_in_a_later_batch_writes_nothing(client, r):
    args = [[n] for n in range(5)] + [[object()]]
    with pytest.raises(kiq.SerializationError):
        client.enqueue_bulk(ClientPlainJob, args, batch_size=2)
    assert r.dbsize() == 0


def test_a_queues_key_of_another_type_does_not_fail_a_push_that_happened(client, r):
    """The caller is told of a failure only when the job was not pushed: told otherwise, it
    would push the job again (a retry), and it would run twice."""
    r.set("queues", "not a set")
    job = client.enqueue("SomeJob", [1])
    client.enqueue_bulk("SomeJob", [[2], [3]])
    assert [json.loads(raw)["args"] for raw in reversed(r.lrange("queue:default", 0, -1))] == [[1], [2], [3]]
    assert json.loads(r.lindex("queue:default", -1))["jid"] == job.jid
    r.delete("queues", "queue:default")
    r.hset("queue:default", "x", "y")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        client.enqueue("SomeJob", [4])  # not pushed: the caller hears of it
