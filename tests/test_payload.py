"""Unit tests for kiq.payload: what every layer knows about a job hash (decoding and wrapping are
exercised through kiq.processor in test_processor.py)."""

from __future__ import annotations

import ast

import pytest
from conftest import ROOT

from kiq.payload import ACTIVE_JOB_WRAPPER, epoch_seconds, job_data, job_name, mark_failed, new_jids


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


def test_the_layers_below_the_job_runtime_never_import_it():
    """The scheduler, recovery and the fetcher run in the master or below the job runtime: reading
    payloads must not pull in job classes, arguments, global IDs or adapters (the import graph of
    kiq's modules, read from their source: module-level imports only)."""
    runtime = {"processor", "job", "activejob", "globalid", "serialize", "adapters", "client", "callbacks"}
    for module in ("payload", "scheduler", "recovery", "sweep", "fetch", "lease", "ledger", "heartbeat"):
        reached = imports_of(module)
        assert not runtime & reached, f"kiq.{module} imports {sorted(runtime & reached)}"


def imports_of(module: str) -> set[str]:
    """The kiq modules that ``kiq.<module>`` imports at module level, directly or not."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        tree = ast.parse((ROOT / "kiq" / f"{todo.pop()}.py").read_text())
        for node in tree.body:
            for name in _kiq_modules(node):
                if name not in seen and (ROOT / "kiq" / f"{name}.py").exists():
                    seen.add(name)
                    todo.append(name)
    return seen


def _kiq_modules(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("kiq.")]
    if isinstance(node, ast.ImportFrom) and node.module == "kiq":
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kiq."):
        return [node.module.split(".")[1]]
    return []


@pytest.mark.parametrize(("value", "seconds"), [
    (1_700_000_000.25, 1_700_000_000.25), (1_700_000_000_250, 1_700_000_000.25),
    (1_700_000_000, 1_700_000_000.0), ("1700000000", None), (True, None), (None, None),
])
def test_epoch_seconds_reads_sidekiq_s_seconds_and_sidekiq_8_s_milliseconds(value, seconds):
    assert epoch_seconds(value) == seconds
