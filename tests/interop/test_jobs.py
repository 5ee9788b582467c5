"""Jobs cross between Ruby Sidekiq (6.4 and 7.3) and kiq in both directions, with their arguments
intact."""

from __future__ import annotations

import json
import time

import pytest
from conftest import wait_for

from kiq.scheduler import MAX_SLEEP

pytestmark = pytest.mark.slow

# Ruby values as a Ruby app writes them, and what they are in JSON (so in Python).
RUBY_ARGS = """[
  "plain", "ünïcødé ✓ 🚀", "", "quote \\" and \\\\ backslash",
  0, -7, 2**62, 3.25, -0.5, 1.0e-9, true, false, nil,
  [1, [2, [3, []]], "x"],
  {"name" => "kiq", "tags" => ["a", "b"], "nested" => {"deep" => [1, {"x" => nil}]}, "empty" => {}},
  SYMBOLS,
  []
]"""
# Sidekiq 7 refuses arguments that are not JSON's own types (strict_args!, on by default): a 7 app
# cannot push symbols, so its hash has the strings JSON turns them into.
SYMBOLS = {"6.4": "{count: 3, symbol: :value}", "7.3": '{"count" => 3, "symbol" => "value"}'}
PYTHON_ARGS = [
    "plain", "ünïcødé ✓ 🚀", "", 'quote " and \\ backslash',
    0, -7, 2**62, 3.25, -0.5, 1.0e-9, True, False, None,
    [1, [2, [3, []]], "x"],
    {"name": "kiq", "tags": ["a", "b"], "nested": {"deep": [1, {"x": None}]}, "empty": {}},
    {"count": 3, "symbol": "value"},
    [],
]


def echoes(r, key: str, count: int) -> dict[str, dict]:
    """The first ``count`` records of an echo list, by jid (waits for them)."""
    wait_for(lambda: r.llen(key) >= count, timeout=30)
    return {entry["jid"]: entry for entry in map(json.loads, r.lrange(key, 0, -1))}


def test_ruby_client_pushes_run_as_the_python_job_with_exactly_those_arguments(r, ruby, interop_kiq):
    interop_kiq()
    pushed = ruby(f"""
      args = {RUBY_ARGS.replace("SYMBOLS", SYMBOLS[ruby.version])}
      at = Time.now.to_f + 1.5
      {{
        "args" => JSON.parse(JSON.generate(args)),
        "jid" => Sidekiq::Client.push("class" => "EchoJob", "queue" => "default", "args" => args),
        "bulk" => Sidekiq::Client.push_bulk("class" => "EchoJob", "queue" => "default",
                                            "args" => [[1], ["two", {{"three" => [3]}}]]),
        "later" => Sidekiq::Client.push("class" => "EchoJob", "queue" => "default", "args" => ["later"],
                                        "at" => at),
        "at" => at,
      }}
    """)
    assert pushed["args"] == PYTHON_ARGS  # the test's two spellings of the arguments agree

    ran = echoes(r, "py:echo", 4)
    assert ran[pushed["jid"]]["args"] == PYTHON_ARGS
    assert ran[pushed["jid"]]["kwargs"] == {}
    first, second = pushed["bulk"]
    assert ran[first]["args"] == [1]
    assert ran[second]["args"] == ["two", {"three": [3]}]

    # Scheduled by Ruby: kiq's scheduler moves it when due, not before. A Ruby client does not
    # wake kiq's scheduler, which then finds the entry within MAX_SLEEP (Sidekiq's own scheduler
    # polls every 2.5 to 7.5 s).
    later = echoes(r, "py:echo", 4)[pushed["later"]]
    assert later["args"] == ["later"]
    assert pushed["at"] <= later["ran_at"] < pushed["at"] + MAX_SLEEP + 2


def test_kiq_perform_later_runs_in_ruby_sidekiq_with_the_same_arguments_on_time(r, kiq_python, sidekiq):
    sidekiq(queues=("ruby",))
    enqueued = json.loads(kiq_python(f"""
import json
from interop.jobs import EchoJob

now = EchoJob.set(queue="ruby").perform_later(*{PYTHON_ARGS!r})
keywords = EchoJob.set(queue="ruby").perform_later(1, "two", size="large")
later = EchoJob.set(queue="ruby", wait=2).perform_later("later", {{"at": "two seconds"}})
print(json.dumps({{"now": now.jid, "keywords": keywords.jid, "later": later.jid, "at": later.at}}))
"""))

    ran = echoes(r, "ruby:echo", 2)
    assert ran[enqueued["now"]]["args"] == PYTHON_ARGS
    # Ruby Sidekiq passes args only: kiq's keyword arguments travel in a field it ignores.
    assert ran[enqueued["keywords"]]["args"] == [1, "two"]

    later = echoes(r, "ruby:echo", 3)[enqueued["later"]]
    assert later["args"] == ["later", {"at": "two seconds"}]
    # Sidekiq's own scheduler polls every 0.1 to 0.3 s here (ruby/app.rb).
    assert enqueued["at"] <= later["ran_at"] < enqueued["at"] + 3
    assert time.time() >= enqueued["at"]


def test_sidekiq_retry_options_of_a_ruby_push_are_honoured_by_kiq(r, ruby, interop_kiq):
    interop_kiq()
    r.sadd("py:failing", "options", "undead")
    pushed = ruby("""
      {
        "options" => Sidekiq::Client.push("class" => "FlakyJob", "queue" => "default", "args" => ["options"],
                                          "retry" => 3, "retry_queue" => "low", "backtrace" => 2),
        "undead" => Sidekiq::Client.push("class" => "FlakyJob", "queue" => "default", "args" => ["undead"],
                                         "retry" => 0, "dead" => false),
      }
    """)
    wait_for(lambda: r.get("stat:failed") == "2", timeout=30)
    # "dead": false: out of retries, the job is dropped instead of filed in the dead set.
    assert r.zcard("dead") == 0
    [entry] = ruby("""
      Sidekiq::RetrySet.new.map { |job|
        job.item.slice("jid", "queue", "retry", "retry_count", "error_class")
                .merge("backtrace" => job.error_backtrace)
      }
    """)
    # "retry_queue": the retry goes to that queue; "backtrace": N innermost lines, compressed as Sidekiq does.
    assert entry["jid"] == pushed["options"]
    assert (entry["queue"], entry["retry"], entry["retry_count"], entry["error_class"]) == (
        "low", 3, 0, "ValueError")
    assert len(entry["backtrace"]) == 2
    assert "interop/jobs.py" in entry["backtrace"][0] and "perform" in entry["backtrace"][0]
