"""Which jobs a worker's threads are running, in memory that its supervisor reads after a crash.

A job that kills its worker (a segfault, the OOM killer, a SIGKILL for not answering) is
charged towards the poison-pill limit; jobs the worker had only prefetched, or had finished
without acknowledging yet, must not be. The worker knows which is which but dies with that
knowledge, and telling Redis at every job start would cost a round trip per job. So each
processor thread writes the SHA-1 digest of the payload it runs into its own slot of a shared
anonymous mapping that the supervisor made before the fork: plain memory writes, and the
mapping outlives the worker. Recovery matches the digests against ``redis.sha1hex`` of each
job in the worker's in-progress lists.
"""

from __future__ import annotations

import hashlib
import mmap

from kiq.connection import wire

DIGEST = 20
EMPTY = bytes(DIGEST)
STOPPED = 1  # the first byte: the worker finished its stop (its unfinished jobs are no crash's)


class Ledger:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, 1 + slots * DIGEST)

    def start(self, slot: int, payload: str) -> None:
        offset = 1 + slot * DIGEST
        self._map[offset:offset + DIGEST] = hashlib.sha1(wire(payload), usedforsecurity=False).digest()

    def finish(self, slot: int) -> None:
        offset = 1 + slot * DIGEST
        self._map[offset:offset + DIGEST] = EMPTY

    def stopped(self) -> None:
        """Mark a worker that stopped as told: whatever it still ran is not a crash's doing."""
        self._map[0] = STOPPED

    def running(self) -> list[str]:
        """Hex digests of the payloads being run, unless the worker stopped as told."""
        if self._map[0] == STOPPED:
            return []
        found = []
        for slot in range(self.slots):
            digest = self._map[1 + slot * DIGEST:1 + (slot + 1) * DIGEST]
            if digest != EMPTY:
                found.append(digest.hex())
        return found

    def close(self) -> None:
        self._map.close()
