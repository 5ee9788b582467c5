"""Job log lines: what every line logged during a job carries, in a real process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

CODE = textwrap.dedent("""
    import logging, structlog, sys, kiq
    from kiq import log, processor
    from kiq.client import build_payload
    import json

    def process(queue, raw):  # a worker's processor thread: prepare, then handle
        prepared = processor.prepare(queue, raw)
        return prepared if isinstance(prepared, kiq.retry.Outcome) else processor.handle(*prepared, queue)

    class TaggingJob(kiq.Job):
        queue = "mail"
        def perform(self, tag):
            structlog.contextvars.bind_contextvars(tag=tag)
            structlog.get_logger("app").info("from structlog")
            logging.getLogger("app").warning("from logging")
            try:
                1 / 0
            except ZeroDivisionError:
                logging.getLogger("app").exception("caught by logging")

    class PlainJob(kiq.Job):
        def perform(self):
            structlog.get_logger("app").info("plain")

    log.setup(sys.argv[1], "json")
    for cls, args in ((TaggingJob, ["first"]), (PlainJob, [])):
        raw = json.dumps(build_payload(cls.job_name, args, queue=cls.queue))
        print(process(cls.queue, raw))
""")


def run_jobs(level: str = "info") -> list[dict[str, object]]:
    done = subprocess.run([sys.executable, "-c", CODE, level], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)
    return [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]


def test_every_line_of_a_job_names_it_and_nothing_leaks_into_the_next_job() -> None:
    lines = run_jobs()
    by_event = {line["event"]: line for line in lines}
    tagged = by_event["from structlog"]
    assert tagged["class"] == "TaggingJob" and tagged["queue"] == "mail" and tagged["tag"] == "first"
    assert len(str(tagged["jid"])) == 24
    stdlib = by_event["from logging"]
    assert (stdlib["class"], stdlib["jid"], stdlib["tag"]) == ("TaggingJob", tagged["jid"], "first")
    caught = by_event["caught by logging"]  # the standard library's exception(): its traceback, rendered
    assert "Traceback (most recent call last)" in caught["exception"]
    assert "ZeroDivisionError" in caught["exception"]
    assert "exc_info" not in caught
    plain = by_event["plain"]
    assert plain["class"] == "PlainJob" and plain["queue"] == "default" and plain["jid"] != tagged["jid"]
    assert "tag" not in plain  # bound by the previous job on this thread
    done = [line for line in lines if line["event"] == "done"]
    assert [line["class"] for line in done] == ["TaggingJob", "PlainJob"]
    assert all(isinstance(line["elapsed_ms"], float) for line in done)


def test_the_per_job_lines_follow_the_level() -> None:
    events = [line["event"] for line in run_jobs("debug")]
    assert events.count("start") == 2 and events.count("done") == 2
    events = [line["event"] for line in run_jobs("warning")]
    assert "start" not in events and "done" not in events and "from logging" in events


FAILURES = textwrap.dedent("""
    import sys, json, kiq
    from kiq import log, processor
    from kiq.client import build_payload

    def process(queue, raw):  # a worker's processor thread: prepare, then handle
        prepared = processor.prepare(queue, raw)
        return prepared if isinstance(prepared, kiq.retry.Outcome) else processor.handle(*prepared, queue)

    def inner(value):
        raise ValueError(f"bad value {value}")

    class BrokenJob(kiq.Job):
        def perform(self, value):
            inner(value)

    class FineJob(kiq.Job):
        def perform(self):
            pass

    log.setup("info", sys.argv[1])
    jobs = [("FineJob", [], {}), ("BrokenJob", [7], {"retry_count": 2}), ("FineJob", [], {}),
            ("Missing::Job", [1], {}), ("FineJob", [], {})]
    for name, args, fields in jobs:
        payload = build_payload(name, args)
        payload.update(fields)
        process("default", json.dumps(payload))
    process("default", "not json")
""")


def run_failures(fmt: str) -> str:
    done = subprocess.run([sys.executable, "-c", FAILURES, fmt], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stderr


def test_a_failed_job_logs_its_traceback_attempt_and_next_retry() -> None:
    lines = [json.loads(line) for line in run_failures("json").splitlines() if line.startswith("{")]
    [fail] = [line for line in lines if line["event"] == "fail"]
    assert fail["class"] == "BrokenJob" and fail["error"] == "ValueError: bad value 7"
    assert "Traceback (most recent call last)" in fail["exception"]
    assert "in perform" in fail["exception"] and "in inner" in fail["exception"]
    assert fail["attempt"] == 4 and fail["then"] == "retry"  # runs had no retry_count, then 0, 1 and 2
    assert str(fail["retry_at"]).startswith("20") and str(fail["retry_at"]).endswith("+00:00")


def test_lines_about_a_payload_that_cannot_run_name_it_not_the_previous_job() -> None:
    lines = [json.loads(line) for line in run_failures("json").splitlines() if line.startswith("{")]
    fine_jids = {line["jid"] for line in lines if line.get("class") == "FineJob"}
    [unknown] = [line for line in lines if line["event"] == "unknown job class"]
    assert unknown["class"] == "Missing::Job" and unknown["jid"] not in fine_jids
    assert unknown["then"] == "retry" and unknown["attempt"] == 1
    [invalid] = [line for line in lines if line["event"] == "invalid payload"]
    assert "jid" not in invalid and "class" not in invalid and invalid["queue"] == "default"


def test_a_fail_line_says_drop_for_the_retry_policy_and_discard_for_discard_on() -> None:
    code = textwrap.dedent("""
        import json, sys, kiq
        from kiq import log, processor
        from kiq.callbacks import discard_on
        from kiq.client import build_payload

        class DroppedJob(kiq.Job):
            retry = False
            def perform(self):
                raise ValueError("dropped")

        @discard_on(ValueError)
        class DiscardedJob(kiq.Job):
            def perform(self):
                raise ValueError("discarded")

        log.setup("info", "json")
        for name in ("DroppedJob", "DiscardedJob"):
            job_class, payload = processor.prepare("default", json.dumps(build_payload(name, [], retry=True)))
            payload["retry"] = job_class.retry
            processor.handle(job_class, payload, "default")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    fails = {line["class"]: line["then"] for line in map(json.loads, done.stderr.splitlines())
             if line["event"] == "fail"}
    assert fails == {"DroppedJob": "drop", "DiscardedJob": "discard"}


def test_the_console_format_shows_the_traceback_too() -> None:
    output = run_failures("console")
    assert "Traceback (most recent call last)" in output and "in inner" in output


def test_the_console_format_escapes_what_would_command_the_terminal() -> None:
    """A queue's name and a job's error come from Redis, where anything with access may have
    put escape sequences: the console shows them, it does not obey them."""
    code = textwrap.dedent("""
        import logging, kiq
        from kiq import log, processor
        from kiq.client import build_payload

        class HostileJob(kiq.Job):
            def perform(self):
                raise ValueError("boom \\x1b]0;owned\\x07\\x1b[2J \\u202eevil")

        log.setup("info", "console")
        queue = "mail\\x1b[8m"
        payload = build_payload("HostileJob", [], retry=False)
        processor.handle(HostileJob, payload, queue)
        logging.getLogger("app").warning("from the standard library \\x1b[31mred")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    output = done.stderr
    assert "\x1b" not in output and "\x07" not in output and "\u202e" not in output, output
    assert "boom \\x1b]0;owned\\x07\\x1b[2J \\u202eevil" in output, output
    assert "mail\\x1b[8m" in output and "\\x1b[31mred" in output, output
    assert "Traceback (most recent call last)" in output and "\n" in output  # line breaks stay



MIDDLEWARE = textwrap.dedent("""
    import sys, json, time, structlog, kiq
    from kiq import log, middleware, processor
    from kiq.client import build_payload

    class Noting(middleware.Middleware):
        def around_perform(self, job, call):
            structlog.get_logger("app").info("before the job")
            time.sleep(0.05)
            return call()

    class QuietJob(kiq.Job):
        queue = "mail"
        def perform(self):
            pass

    log.setup("info", "json")
    middleware.add(Noting())
    if sys.argv[1] == "without":  # kiq's log member taken out of the chain
        [member] = [m for m in middleware.builtins() if isinstance(m, processor.JobLog)]
        middleware.remove(member)
    payload = build_payload("QuietJob", [], queue="mail")
    processor.handle(QuietJob, payload, "mail")
    print(payload["jid"])
""")


def run_middleware(chain: str) -> tuple[str, list[dict[str, object]]]:
    done = subprocess.run([sys.executable, "-c", MIDDLEWARE, chain], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return done.stdout.strip(), lines


def test_a_line_the_apps_middleware_logs_names_the_job_and_its_time_counts() -> None:
    jid, lines = run_middleware("with")
    by_event = {line["event"]: line for line in lines}
    noted = by_event["before the job"]
    assert (noted["jid"], noted["class"], noted["queue"]) == (jid, "QuietJob", "mail")
    assert float(by_event["done"]["elapsed_ms"]) >= 50  # type: ignore[arg-type]


def test_the_job_fields_are_bound_by_kiqs_log_member_of_the_chain() -> None:
    _, lines = run_middleware("without")
    assert [line.get("jid") for line in lines if line["event"] in ("before the job", "done")] == [None, None]


TRACED = textwrap.dedent("""
    import json, logging, structlog, sys
    from opentelemetry.sdk.trace import TracerProvider
    from kiq import log, processor
    from kiq.client import build_payload
    from kiq.otel import KiqInstrumentor
    import kiq

    class LoggingJob(kiq.Job):
        def perform(self):
            structlog.get_logger("app").info("from structlog")
            logging.getLogger("app").warning("from logging")

    def run():
        payload = build_payload("LoggingJob", [])
        processor.handle(LoggingJob, payload, "default")

    log.setup("info", "json")
    KiqInstrumentor().instrument(tracer_provider=TracerProvider())
    run()
    structlog.get_logger("app").info("between jobs")
    KiqInstrumentor().uninstrument()
    run()
""")


def test_lines_written_while_a_traced_job_runs_carry_its_trace_and_span_ids() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is not installed")
    done = subprocess.run([sys.executable, "-c", TRACED], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    traced, untraced = lines[:3], lines[4:]
    assert [line["event"] for line in traced] == ["from structlog", "from logging", "done"]
    assert len({(line["trace_id"], line["span_id"]) for line in traced}) == 1
    assert len(str(traced[0]["trace_id"])) == 32 and len(str(traced[0]["span_id"])) == 16
    assert lines[3]["event"] == "between jobs" and "trace_id" not in lines[3]
    assert [line["event"] for line in untraced] == ["from structlog", "from logging", "done"]
    assert all("trace_id" not in line and "span_id" not in line for line in untraced)


FORKS = textwrap.dedent("""
    import logging, os, signal, structlog, threading, time
    from kiq import log

    read_fd, write_fd = os.pipe()  # stderr: a pipe drained here, so nothing piles up in memory
    os.dup2(write_fd, 2)

    def drain():
        while True:
            os.read(read_fd, 1 << 16)

    threading.Thread(target=drain, daemon=True).start()
    log.setup("info", "json")
    big = "x" * 200_000  # longer than a pipe holds: each write waits with its locks held

    def chatter(emit):
        while True:
            emit(big)

    threading.Thread(target=chatter, args=(lambda m: structlog.get_logger("t").info(m),), daemon=True).start()
    threading.Thread(target=chatter, args=(logging.getLogger("t").warning,), daemon=True).start()
    outcomes = []
    for _ in range(4):
        time.sleep(0.05)
        pid = os.fork()
        if pid == 0:
            structlog.get_logger("child").info("child line")
            logging.getLogger("child").warning("child stdlib line")
            os._exit(0)
        deadline = time.monotonic() + 10
        while not (status := os.waitpid(pid, os.WNOHANG))[0]:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                outcomes.append("hung")
                break
            time.sleep(0.01)
        else:
            outcomes.append(os.waitstatus_to_exitcode(status[1]))
    print(outcomes, flush=True)
""")


def test_a_child_forked_while_other_threads_log_can_log() -> None:
    """The master forks while its scheduler and metrics threads may be writing a line: the
    child exits only once both of its lines went through (structlog's and the standard
    library's), instead of hanging on a lock a thread of its parent held."""
    done = subprocess.run([sys.executable, "-c", FORKS], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=True)
    assert done.stdout.strip() == "[0, 0, 0, 0]", done.stdout


def test_a_thread_that_dies_of_an_exception_says_so_in_a_line_of_the_log() -> None:
    """Python's default hook writes a thread's traceback as bare text between the JSON lines,
    where a log shipper splits it into lines of their own."""
    code = textwrap.dedent("""
        import sys, threading
        from kiq import log
        log.setup("info", "json")
        def die():
            raise ValueError("from a thread")
        thread = threading.Thread(target=die, name="app-thread")
        thread.start()
        thread.join()
        ended = threading.Thread(target=sys.exit, name="exits")  # SystemExit ends a thread quietly
        ended.start()
        ended.join()
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    [line] = [json.loads(line) for line in done.stderr.splitlines()]
    assert line["event"] == "a thread ended with an exception" and line["thread"] == "app-thread"
    assert "ValueError: from a thread" in line["exception"] and line["level"] == "error"


def test_an_exc_info_of_any_true_value_logs_the_exception_being_handled() -> None:
    """``exc_info=1`` (any true value, as logging reads it) failed the line with a TypeError, in
    whichever thread logged it; a tuple that is no exc_info tuple named no exception."""
    code = textwrap.dedent("""
        from kiq import log
        log.setup("info", "json")
        logger = log.get("app")
        try:
            1 / 0
        except ZeroDivisionError:
            for value in (1, "yes", True, (1, 2)):
                logger.error("handled", exc_info=value)
        logger.error("nothing handled", exc_info=1)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    handled = [line for line in lines if line["event"] == "handled"]
    assert len(handled) == 4 and all("ZeroDivisionError" in line["exception"] for line in handled)
    [nothing] = [line for line in lines if line["event"] == "nothing handled"]
    assert "exception" not in nothing
