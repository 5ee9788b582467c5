"""Jobs that the process-level tests run in real workers; each records what it did in Redis."""

from __future__ import annotations

import os
import threading
import time

import redis

import kiq
from kiq.callbacks import retry_on
from kiq.connection import connect

_conn: tuple[int, redis.Redis] | None = None
_conn_lock = threading.Lock()


def conn() -> redis.Redis:
    """One client per process, made after the fork, once: a second client made by a racing
    thread would replace the first, whose collection closes its pool's connections under a
    thread still using one (a job then fails with "Bad file descriptor")."""
    global _conn
    with _conn_lock:
        if _conn is None or _conn[0] != os.getpid():
            _conn = (os.getpid(), connect(os.environ["KIQ_REDIS_URL"], retry=True))
        return _conn[1]


class RecordJob(kiq.Job):
    def perform(self, token: str, **extra: object) -> None:
        conn().rpush("results", token)


class NoopJob(kiq.Job):
    """Does nothing: a very short job (see conftest.warm_up)."""

    def perform(self) -> None:
        pass


class EchoJob(kiq.Job):
    """Records its arguments as JSON so tests can compare them exactly."""

    def perform(self, *args: object, **kwargs: object) -> None:
        import json

        from kiq.serialize import serialize_args, serialize_kwargs

        conn().rpush("echo", json.dumps([serialize_args(args), serialize_kwargs(kwargs)]))


class TimedJob(kiq.Job):
    """Records when it ran, to check scheduled jobs never run early."""

    def perform(self, token: str) -> None:
        conn().hset("ran_at", token, repr(time.time()))


class SlowJob(kiq.Job):
    def perform(self, token: str, seconds: float) -> None:
        conn().rpush("started", f"{token}:{os.getpid()}")
        time.sleep(seconds)
        conn().rpush("results", token)


class OrderJob(kiq.Job):
    """Records the queue it came from, to check weighted and strict order."""

    def perform(self, queue: str) -> None:
        conn().rpush("order", queue)


class FailJob(kiq.Job):
    retry = 1

    def perform(self, token: str) -> None:
        conn().rpush("attempts", token)
        raise ValueError(f"boom {token}")


class NoRetryJob(kiq.Job):
    retry = False

    def perform(self) -> None:
        conn().rpush("attempts", "noretry")
        raise RuntimeError("dropped")


class StraightToDeadJob(kiq.Job):
    retry = 0

    def perform(self) -> None:
        raise RuntimeError("to the morgue")


class PidJob(kiq.Job):
    """Records which worker process ran it, and when, after a short pause.

    One transaction writes the three records, so that a run is in all of them or in none
    (a Redis crash loses them together): the chaos test explains each duplicate from them.
    """

    def perform(self, token: str, seconds: float = 0.0) -> None:
        time.sleep(seconds)
        pid = os.getpid()
        with conn().pipeline() as pipe:
            pipe.rpush("results", token)
            pipe.hset("pids", token, pid)
            pipe.rpush("runs", f"{token} {pid} {time.time():.6f}")
            pipe.execute()


class TimeoutJob(kiq.Job):
    timeout = 0.5
    retry = 3

    def perform(self, seconds: float) -> None:
        conn().rpush("started", str(os.getpid()))
        time.sleep(seconds)
        conn().rpush("results", "finished-late")


class KillerJob(kiq.Job):
    """A poison pill: takes its own worker down with SIGKILL every time it runs."""

    def perform(self) -> None:
        import signal

        conn().rpush("attempts", str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


class SegfaultJob(kiq.Job):
    """A poison pill of the commonest kind: a crash in native code takes its worker down."""

    def perform(self) -> None:
        import ctypes

        conn().rpush("attempts", str(os.getpid()))
        ctypes.string_at(0)



class AsyncJob(kiq.Job):
    """An ``async def perform``: runs on the worker's event loop."""

    async def perform(self, token: str) -> None:
        import asyncio

        await asyncio.sleep(0.01)
        conn().rpush("results", token)
        conn().hset("loops", token, f"{os.getpid()}:{id(asyncio.get_running_loop())}")


class TickJob(kiq.Job):
    """Records which periodic tick enqueued it."""

    def perform(self) -> None:
        conn().rpush("ticks", str(self.payload["periodic"]["tick"]))


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this error cannot be printed")


class UnprintableErrorJob(kiq.Job):
    """Raises an error whose ``__str__`` raises too."""

    def perform(self) -> None:
        conn().rpush("attempts", "unprintable")
        raise UnprintableError


class UnrenderableErrorJob(kiq.Job):
    """Raises errors whose tracebacks the traceback module itself cannot render: a SyntaxError
    whose offset is no number (as a template language's parser may give), notes that raise, a
    class whose name raises. Each once killed every processor thread that logged it."""

    def perform(self, kind: str) -> None:
        conn().rpush("attempts", kind)
        if kind == "syntax":
            raise SyntaxError("bad template", ("tpl.html", 3, "col 5", "{{ x }"))
        if kind == "notes":
            raise NotesError("notes")
        raise NamelessError("nameless")


class NotesError(Exception):
    @property
    def __notes__(self) -> list[str]:
        raise RuntimeError("no notes here")


class Nameless(type):
    def __getattribute__(cls, name: str) -> object:
        if name in ("__qualname__", "__name__", "__module__"):
            raise RuntimeError("no name here")
        return super().__getattribute__(name)


class NamelessError(Exception, metaclass=Nameless):
    pass


class HugeErrorJob(kiq.Job):
    """Raises an error of a 5 MB message at the end of a chain of 3,000 causes."""

    def perform(self) -> None:
        conn().rpush("attempts", "huge")
        error: BaseException = ValueError("A" * 5_000_000)
        for n in range(3000):
            try:
                raise error
            except BaseException as cause:
                error = RuntimeError(f"cause {n}")
                error.__cause__ = cause
        raise error


class AsyncExitJob(kiq.Job):
    """An ``async def perform`` that exits: asyncio lets SystemExit out of the event loop."""

    async def perform(self) -> None:
        import sys

        conn().rpush("attempts", "async-exit")
        sys.exit(3)


class BrokenInitJob(kiq.Job):
    """A job whose class cannot be made (its ``__init__`` reads a setting that is missing)."""

    def __init__(self) -> None:
        super().__init__()
        raise KeyError("SETTING")

    def perform(self) -> None:
        conn().rpush("results", "never")


class ForkJob(kiq.Job):
    """Forks and lets the child return from ``perform`` into the worker's code, as a job that
    forgets to end its child does; the parent records the child's pid."""

    def perform(self) -> None:
        child = os.fork()
        if child:
            conn().rpush("children", str(child))


def _wait_that_raises(executions: int) -> float:
    raise ZeroDivisionError("the retry_on wait callable broke")


@retry_on(ValueError, wait=_wait_that_raises)
class BadWaitJob(kiq.Job):
    def perform(self) -> None:
        conn().rpush("attempts", "badwait")
        raise ValueError("retry me")


@retry_on(ValueError, attempts=3)
class CountedRetryJob(kiq.Job):
    def perform(self) -> None:
        conn().rpush("attempts", "counted")
        raise ValueError("counted")


class ThreadDeath(BaseException):
    """Raised into a processor thread from outside, as a bug in kiq could end one."""


class ThreadKillerJob(kiq.Job):
    """Makes a processor thread of its worker die soon after the job ends: the one that is then
    watching a queue for work (an idle worker always has one)."""

    def perform(self) -> None:
        import ctypes
        import sys

        def watching() -> int | None:
            for ident, frame in sys._current_frames().items():
                current: object = frame
                while current is not None:
                    if current.f_code.co_name == "watch" and current.f_code.co_filename.endswith("watch.py"):  # type: ignore[attr-defined]
                        return ident
                    current = current.f_back  # type: ignore[attr-defined]
            return None

        def kill() -> None:
            while (ident := watching()) is None:
                time.sleep(0.01)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(ThreadDeath))

        threading.Thread(target=kill, daemon=True).start()
        conn().rpush("results", "killer")


class FileJob(kiq.Job):
    """Appends its token to a file after a pause: a record of each run that writes nothing to Redis."""

    def perform(self, path: str, token: str, seconds: float = 0.0) -> None:
        time.sleep(seconds)
        with open(path, "a") as runs:
            runs.write(token + "\n")


class SlowKillerJob(kiq.Job):
    """A poison pill that runs a while before it takes its worker down (a job that runs out of memory)."""

    def perform(self, seconds: float) -> None:
        import signal

        conn().rpush("attempts", str(os.getpid()))
        time.sleep(seconds)
        os.kill(os.getpid(), signal.SIGKILL)
