"""Every exit code kiq's processes and commands use, in one place.

``kiq start`` exits 0 after a stop, 2 for a bad config, 3 when the app cannot be loaded (an
import error, or no load within ``boot_timeout``), 4 when every worker failed to boot, 5 when
Redis refuses kiq's login or commands. The operator commands use 1 for a job or process not
found, 2 for a bad config, 3 when Redis cannot be reached. A worker stopped through its
signals list (Sidekiq's Web UI) exits 10, which tells its supervisor not to replace it; a
supervisor whose every worker was stopped so exits 10 too, and its master then stops (exit 0),
as a Sidekiq process exits after its Stop. A worker whose fetcher thread died exits 11, and is
replaced.
"""

from __future__ import annotations

NOT_FOUND = 1
CONFIG = 2
APP_LOAD = 3
REDIS_UNREACHABLE = 3
BOOT_FAILED = 4
REDIS_REFUSED = 5
REMOTE_STOP = 10
FETCHER_DIED = 11  # a worker whose fetcher thread died (kiq.worker): replaced like a crash
