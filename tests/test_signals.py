"""kiq.signals: a signal sent to a freshly forked child waits for the child's own handlers."""

from __future__ import annotations

import os
import signal
import time

import pytest

from kiq import signals
from kiq.signals import SignalQueue, fork_holding


def test_a_signal_sent_right_after_the_fork_reaches_the_child_s_queue():
    """Sent before the child has its SignalQueue, the signal waits, pending, and arrives once the
    queue claims it: it neither runs the parent's handler in the child nor is lost."""
    pid = fork_holding([signal.SIGUSR1])
    if pid == 0:
        try:
            deadline = time.monotonic() + 10
            while signal.SIGUSR1 not in signal.sigpending():  # sent before the queue exists
                if time.monotonic() > deadline:
                    os._exit(3)
                time.sleep(0.001)
            received = SignalQueue([signal.SIGUSR1]).wait(2.0)
            os._exit(0 if received == [signal.SIGUSR1] else 1)
        finally:
            os._exit(2)
    os.kill(pid, signal.SIGUSR1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the parent's, as it was


def test_the_parent_s_signals_are_not_left_held_when_the_fork_fails(monkeypatch):
    def refuse() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(signals.os, "fork", refuse)
    with pytest.raises(BlockingIOError):
        fork_holding([signal.SIGUSR1, signal.SIGTERM])
    held = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.SIGUSR1 not in held and signal.SIGTERM not in held
