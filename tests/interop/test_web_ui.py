"""Sidekiq's Web UI (6.4 and 7.3) shows kiq's processes, running jobs, retries, dead and scheduled jobs,
and its buttons act on them: kiq runs what it retries and obeys its Quiet and Stop."""

from __future__ import annotations

import html
import json
import re
import socket

import pytest
from conftest import alive, wait_for

pytestmark = pytest.mark.slow


def rows(page: str) -> list[str]:
    """The table rows of a page, tags and all."""
    return re.findall(r"<tr[^>]*>(.*?)</tr>", page, flags=re.S)


def row_with(page: str, text: str) -> str:
    [row] = [row for row in rows(page) if text in row]
    return row


def text(fragment: str) -> str:
    """A fragment of HTML as the text a person reads: no tags, entities decoded, spaces squeezed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def keys(page: str) -> dict[str, str]:
    """The ``score-jid`` keys of a set page's checkboxes, by jid."""
    return {value.split("-", 1)[1]: value for value in re.findall(r"name='key\[\]' value='([^']+)'", page)}


def attempts(r, token: str) -> int:
    return sum(json.loads(entry)["token"] == token for entry in r.lrange("py:attempts", 0, -1))


def test_busy_page_shows_kiq_workers_and_their_jobs_and_quiet_and_stop_act_on_one_worker(
        r, web_ui, interop_kiq, kiq_python):
    kiq = interop_kiq(processes=2, concurrency=2, tag="interop")
    pids = kiq.wait_workers(2)
    gate = kiq_python("from interop.jobs import GateJob\nprint(GateJob.perform_later('g1').jid)").strip()
    started = json.loads(wait_for(lambda: r.lindex("py:started", 0), timeout=30))
    identities = {json.loads(r.hget(ident, "info"))["pid"]: ident for ident in r.smembers("processes")}
    assert sorted(identities) == pids

    def row_cells(page: str, identity: str) -> list[str]:
        row = row_with(page, f'value="{identity}"')
        return [text(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)]

    # The page reads the processes' busy counts and their jobs in separate calls, so one
    # rendering can fall between two heartbeats: wait for one that shows both.
    busy = wait_for(lambda: (page := web_ui.get("/busy")) and gate in page
                    and row_cells(page, identities[started["pid"]])[4] == "1" and page, timeout=30)
    for pid, identity in identities.items():
        cells = row_cells(busy, identity)
        assert cells[0].startswith(f"{socket.gethostname()}:{pid} interop")
        assert "Queues: default" in cells[0] and "quiet" not in cells[0]
        assert cells[3:5] == ["2", "1" if pid == started["pid"] else "0"]  # threads, busy
    job = text(row_with(busy, gate))
    assert identities[started["pid"]] in job and "GateJob" in job and '"g1"' in job and "default" in job

    # Quiet the idle worker from its row: it stops taking jobs, the other one takes them all.
    quiet_pid = next(pid for pid in pids if pid != started["pid"])
    quiet = identities[quiet_pid]
    assert web_ui.post("/busy", [("identity", quiet), ("quiet", "1")]) == "/busy"
    wait_for(lambda: r.hget(quiet, "quiet") == "true", timeout=30)
    assert 'label-danger">quiet' in row_with(web_ui.get("/busy"), f'value="{quiet}"')
    kiq_python("from interop.jobs import PidJob\nPidJob.perform_bulk([[f'p{i}'] for i in range(6)])")
    done = wait_for(lambda: len(entries := r.lrange("py:done", 0, -1)) == 6 and entries, timeout=30)
    assert {json.loads(entry)["pid"] for entry in done} == {started["pid"]}

    # Stop it: that worker exits, is not replaced, and leaves the Busy page; the other works on.
    assert web_ui.post("/busy", [("identity", quiet), ("stop", "1")]) == "/busy"
    wait_for(lambda: not alive(quiet_pid) and quiet not in r.smembers("processes"), timeout=30)
    assert kiq.workers() == [started["pid"]] and kiq.process.poll() is None
    assert quiet not in web_ui.get("/busy")
    r.rpush("py:release:g1", "go")
    kiq_python("from interop.jobs import PidJob\nPidJob.perform_later('after')")
    wait_for(lambda: r.llen("py:done") == 7, timeout=30)
    assert json.loads(r.lindex("py:done", -1)) == {"token": "after", "pid": started["pid"]}


def test_retry_delete_and_kill_buttons_act_on_kiq_entries_and_kiq_honours_them(
        r, web_ui, interop_kiq, kiq_python):
    interop_kiq()
    r.sadd("py:failing", "f-retry", "f-delete", "f-kill")
    jids = json.loads(kiq_python("""
import json
from interop.jobs import DoomedJob, EchoJob, FlakyJob

jids = {token: FlakyJob.perform_later(token).jid for token in ("f-retry", "f-delete", "f-kill")}
jids["d1"] = DoomedJob.perform_later("d1").jid
jids["s-add"] = EchoJob.set(wait=600).perform_later("s-add", size="large").jid
jids["s-delete"] = EchoJob.set(wait=600).perform_later("s-delete").jid
jids["waiting"] = EchoJob.set(queue="waiting").perform_later("w1", size="small").jid
print(json.dumps(jids))
"""))
    wait_for(lambda: r.zcard("retry") == 3 and r.zcard("dead") == 1, timeout=30)

    queues = web_ui.get("/queues")
    assert text(row_with(queues, "/queues/waiting")).startswith("waiting 1")
    waiting = text(row_with(web_ui.get("/queues/waiting"), jids["waiting"]))
    assert "EchoJob" in waiting and '"w1"' in waiting

    retries = web_ui.get("/retries")
    retry_keys = keys(retries)
    assert sorted(retry_keys) == sorted(jids[token] for token in ("f-retry", "f-delete", "f-kill"))
    for token in ("f-retry", "f-delete", "f-kill"):
        row = text(row_with(retries, retry_keys[jids[token]]))
        assert "FlakyJob" in row and f'"{token}"' in row and f"ValueError: boom {token}" in row
        assert " 0 default " in f" {row} "  # retry count, queue
    detail = text(web_ui.get(f"/retries/{retry_keys[jids['f-retry']]}"))
    assert jids["f-retry"] in detail and "ValueError" in detail and "boom f-retry" in detail

    morgue = web_ui.get("/morgue")
    [dead_key] = keys(morgue).values()
    assert "DoomedJob" in text(morgue) and "RuntimeError: doomed d1" in text(morgue)
    assert "doomed d1" in text(web_ui.get(f"/morgue/{dead_key}"))

    scheduled = web_ui.get("/scheduled")
    scheduled_keys = keys(scheduled)
    assert sorted(scheduled_keys) == sorted([jids["s-add"], jids["s-delete"]])
    assert '"s-add"' in text(row_with(scheduled, scheduled_keys[jids["s-add"]]))
    detail = text(web_ui.get(f"/scheduled/{scheduled_keys[jids['s-add']]}"))
    assert '"s-add"' in detail and 'Extras {"kwargs"=>{"size"=>"large"}}' in detail  # kiq's own field

    # Retry Now: kiq runs it at once (and it passes this time).
    r.srem("py:failing", "f-retry")
    retry_now = [("key[]", retry_keys[jids["f-retry"]]), ("retry", "Retry Now")]
    assert web_ui.post("/retries", retry_now) == "/retries"
    wait_for(lambda: r.lrange("py:done", 0, -1) == ['"f-retry"'], timeout=30)
    # Delete: gone from everywhere; Kill: moved to the dead set. kiq runs neither.
    assert web_ui.post(f"/retries/{retry_keys[jids['f-delete']]}", [("delete", "Delete")]) == "/retries"
    assert web_ui.post("/retries", [("key[]", retry_keys[jids["f-kill"]]), ("kill", "Kill")]) == "/retries"
    assert r.zcard("retry") == 0
    dead = {json.loads(raw)["jid"]: json.loads(raw) for raw in r.zrange("dead", 0, -1)}
    assert sorted(dead) == sorted([jids["d1"], jids["f-kill"]])
    assert dead[jids["f-kill"]]["error_message"] == "boom f-kill"
    assert "boom f-kill" in text(web_ui.get("/morgue"))

    # The morgue's Retry Now: kiq runs the dead job again (it dies again); its Delete removes one.
    assert web_ui.post("/morgue", [("key[]", dead_key), ("retry", "Retry Now")], page="/morgue") == "/morgue"
    wait_for(lambda: attempts(r, "d1") == 2 and r.zcard("dead") == 2, timeout=30)
    kill_key = keys(web_ui.get("/morgue"))[jids["f-kill"]]
    assert web_ui.post(f"/morgue/{kill_key}", [("delete", "Delete")], page="/morgue") == "/morgue"
    assert [json.loads(raw)["jid"] for raw in r.zrange("dead", 0, -1)] == [jids["d1"]]

    # Scheduled: Add to Queue runs it now in kiq; Delete drops it.
    add = [("key[]", scheduled_keys[jids["s-add"]]), ("add_to_queue", "Add to Queue")]
    assert web_ui.post("/scheduled", add) == "/scheduled"
    ran = json.loads(wait_for(lambda: r.lpop("py:echo"), timeout=30))
    assert (ran["jid"], ran["args"], ran["kwargs"]) == (jids["s-add"], ["s-add"], {"size": "large"})
    delete = [("key[]", scheduled_keys[jids["s-delete"]]), ("delete", "Delete")]
    assert web_ui.post("/scheduled", delete) == "/scheduled"
    assert r.zcard("schedule") == 0

    assert [attempts(r, token) for token in ("f-retry", "f-delete", "f-kill")] == [2, 1, 1]
    stats = wait_for(lambda: (s := json.loads(web_ui.get("/stats"))["sidekiq"])["processed"] == 7 and s,
                     timeout=30)
    assert (stats["retries"], stats["dead"], stats["scheduled"], stats["enqueued"]) == (0, 1, 0, 1)
    assert stats["failed"] == 5 and stats["processes"] == 1
