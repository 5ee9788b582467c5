"""Unit tests for kiq.payload: what every layer knows about a job hash (decoding and wrapping are
exercised through kiq.processor in test_processor.py)."""

from __future__ import annotations

import math
import random
import shutil
import struct
import subprocess

import pytest

from kiq.payload import (
    ACTIVE_JOB_WRAPPER,
    dump,
    enqueued_seconds,
    epoch_seconds,
    job_data,
    job_name,
    mark_failed,
    new_jids,
)


def test_a_plain_payload_names_its_class():
    assert job_name({"class": "Billing::InvoiceJob", "args": []}) == "Billing::InvoiceJob"
    assert job_data({"class": "Billing::InvoiceJob", "args": []}) is None


def test_a_rails_wrapper_names_the_active_job_class():
    for wrapper in (ACTIVE_JOB_WRAPPER, "Sidekiq::ActiveJob::Wrapper"):
        payload = {"class": wrapper, "args": [{"job_class": "ResizeJob", "arguments": []}]}
        assert job_name(payload) == "ResizeJob"
        assert job_data(payload) == {"job_class": "ResizeJob", "arguments": []}


def test_a_wrapper_without_active_job_data_names_the_wrapper():
    assert job_name({"class": ACTIVE_JOB_WRAPPER, "args": [1, 2]}) == ACTIVE_JOB_WRAPPER


def test_mark_failed_writes_sidekiq_s_fields_and_keeps_a_retry_count():
    job = mark_failed({"class": "A", "args": [], "jid": "j", "retry_count": 4}, "kiq.PoisonPill", "why", 10.0)
    assert job == {"class": "A", "args": [], "jid": "j", "retry_count": 4, "error_class": "kiq.PoisonPill",
                   "error_message": "why", "failed_at": 10.0}
    assert mark_failed({"class": "A"}, "E", "m", 1.0)["retry_count"] == 0


def test_jids_are_24_hex_digits_and_distinct():
    jids = new_jids(1000)
    assert len(set(jids)) == 1000 and all(len(j) == 24 and int(j, 16) >= 0 for j in jids)


@pytest.mark.parametrize(("value", "seconds"), [
    (1_700_000_000.25, 1_700_000_000.25), (1_700_000_000_250, 1_700_000_000.25),
    (1_700_000_000, 1_700_000_000.0), ("1700000000", None), (True, None), (None, None),
    (10**400, None), (float("inf"), None), (float("nan"), None),  # what JSON can carry, read without failing
])
def test_epoch_seconds_reads_sidekiq_s_seconds_and_sidekiq_8_s_milliseconds(value, seconds):
    assert epoch_seconds(value) == seconds


@pytest.mark.parametrize(("raw", "seconds"), [
    ('{"enqueued_at":1700000000.5}', 1_700_000_000.5), ('{"enqueued_at":1700000000500}', 1_700_000_000.5),
    ('{"created_at":1700000000.5}', None), ("[1]", None), ("not json", None), ("[" * 100_000, None),
    ('{"enqueued_at":1' + "0" * 400 + "}", None), ('{"enqueued_at":1e999}', None),
])
def test_enqueued_seconds_reads_any_payload_without_failing(raw, seconds):
    """A worker's heartbeat reads its prefetched jobs' times with it: a crafted payload must not
    fail the beat (and let the worker's entry expire while it is alive)."""
    assert enqueued_seconds(raw) == seconds


@pytest.mark.parametrize(("value", "ruby"), [
    (1e-05, "1.0e-05"), (-1e-05, "-1.0e-05"), (1e16, "1.0e+16"), (1e15, "1.0e+15"),
    (1234567890123456.0, "1.234567890123456e+15"), (1039514241563211.8, "1039514241563211.8"),
    (1e14, "100000000000000.0"), (0.0001, "0.0001"), (1.5e-07, "1.5e-07"), (2.5, "2.5"), (-0.0, "-0.0"),
    (10**20, "100000000000000000000"), ("café \u2028\x01\t/", '"café \u2028\\u0001\\t/"'),
    ({"1e+5": ["1e+5", 1e+5]}, '{"1e+5":["1e+5",100000.0]}'),
    (['x"1e+5\\', 1e-05, "\\", 1e15], '["x\\"1e+5\\\\",1.0e-05,"\\\\",1.0e+15]'),
])
def test_dump_writes_what_ruby_json_writes(value, ruby):
    """Values whose text Python and Ruby write differently, as Ruby 3.1's JSON.generate wrote them."""
    assert dump(value) == ruby


def test_dump_agrees_with_ruby_on_thousands_of_floats(tmp_path):
    """Sidekiq re-encodes an entry to find it (reschedule, its Web UI's filter): every float
    kiq writes must come back from Ruby's JSON.parse and JSON.generate byte for byte."""
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("ruby is not installed (make system-deps installs it)")
    rng = random.Random(11)
    floats = [struct.unpack("d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(20_000)]
    floats += [m * 10.0**e for e in range(-25, 25) for m in (1, -1, 1.5, 9.999, 1.2345678901234567)]
    floats += [float(rng.randrange(10**14, 10**17)) for _ in range(3000)]
    lines = [dump([value, "é"]) for value in floats if math.isfinite(value)]
    (tmp_path / "lines").write_text("\n".join(lines) + "\n", encoding="utf-8")
    script = "STDIN.each_line { |line| puts JSON.generate(JSON.parse(line)) }"
    with open(tmp_path / "lines", "rb") as source:
        done = subprocess.run([ruby, "-rjson", "-e", script], stdin=source, capture_output=True, timeout=120,
                              check=True)
    assert done.stdout.decode("utf-8").splitlines() == lines


def test_dump_escapes_a_string_that_is_not_unicode_or_refuses_it_when_strict():
    assert dump(["\udcff"]) == '["\\udcff"]'
    with pytest.raises(UnicodeEncodeError):
        dump(["\udcff"], strict=True)
