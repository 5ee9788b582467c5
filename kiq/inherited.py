"""What a forked supervisor lets go of: every socket of the master.

A child shares each descriptor it inherits with its parent. A supervisor that kept
the master's sockets kept its metrics port bound and its Redis connections open
for as long as it, or any worker forked from it, lives: after a master's SIGKILL,
orphaned workers finishing their jobs held the port, and the next master could
not serve metrics; Redis never saw the dead master's connections close.

The master never imports the app, so every socket it holds is kiq's own (Redis
connections of its threads, the metrics socket, a scrape in flight): a supervisor
keeps none. A supervisor closes its own Redis connections before it forks a
worker (kiq.supervisor), and leaves alone the sockets the app opened while it
was imported.
"""

from __future__ import annotations

import os
import stat


def close_sockets() -> None:
    """In a freshly forked child: point every inherited socket except stdin, stdout and
    stderr (journald's, under systemd) at /dev/null.

    Not a plain ``close``: the parent's socket objects still exist in this process
    and close their descriptor numbers when collected. Had a number been freed, a file
    opened since would get it, and that collection would close the wrong file.
    """
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in _descriptors():
            if fd > 2 and fd != null and _is_socket(fd):
                os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)


def _descriptors() -> list[int]:
    folder = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    return [int(name) for name in os.listdir(folder)]


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:  # the listing's own descriptor, closed since
        return False
