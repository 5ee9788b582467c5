"""Periodic (cron) jobs: their entries, and enqueueing each tick exactly once however many masters run.

Entries come from ``periodic:`` in the config file (``entries_from_config``) or
from Python (``kiq.periodic(...)`` in a required module). An entry that names
no queue or retry takes its job class's, which are known only once the app is
imported: each generation binds the entries to the classes (``bind_jobs``),
owns one ``Periodic`` and calls ``fire_due`` when ``next_wakeup`` says a tick
is due, quiet or not.

Exactly once: every master tries to enqueue every tick of every entry, and the
FIRE script decides in Redis, atomically, which try wins. For entry E and tick
T (epoch seconds) it ZADDs T with NX into ``kiq:periodic:E:ticks`` and LPUSHes
the job only if that added T; so one job per (entry, tick), whichever master
comes first, and no clock has to agree with another. A master that dies has
either run the whole script or none of it, and the others go on trying every
tick, so killing one changes nothing. The set keeps ticks for ``window``
seconds (by Redis' clock); a tick that is older than that when a master tries
it is refused rather than risk a second job for it once it has been trimmed.

Missed ticks: a ``Periodic`` fires only ticks after it was created (a master
that starts late or restarts does not fire old ticks), and none older than
``since``, when the schedule was first recorded (by Redis's clock, or the
recording master's start if that was earlier): a master whose clock is slow
offers ticks from before any master ran. A master whose clock is behind
Redis's offers ticks after the others have moved on: from it, none older than
the newest tick fired (``last``) fires either; they were fired, or missed
while no master ran. (A master with a right clock that was only stalled does
fire the ticks nobody fired, as long as they are within ``window``.) With ``catch_up`` it
also tries the most recent tick at or before its start, once: the script fires
it only if it is newer than the entry's ``last`` tick and than ``since`` (when
the entry's current schedule was first seen), so a tick is caught up only if
it really was missed, and only by one master. A master that was stalled for
longer than ``window`` skips the ticks older than that (a catch-up entry fires
the newest of them, under the same rule).

Reloads: the state is per entry name and tick, so a new ``Periodic`` or a new
entry list (``update``) can never fire a tick twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import redis

from kiq import log
from kiq.client import Client, build_payload
from kiq.cron import Cron, CronError, last_at_or_before, next_after, parse
from kiq.errors import ConfigError, shown
from kiq.job import Job, lookup
from kiq.keys import Keys
from kiq.lua import IS_A
from kiq.payload import dump
from kiq.serialize import SerializationError, serialize_args, serialize_kwargs

WINDOW = 3600.0  # seconds a tick may be late and still fire; also how long fired ticks are remembered
BLOCKED_PAUSE = dt.timedelta(seconds=1)  # how often an entry blocked by a key of another type tries again
NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")
CONFIG_KEYS = ("name", "cron", "class", "args", "kwargs", "queue", "tz", "catch_up", "retry")
INHERITED = frozenset({"queue", "retry"})  # what an entry that does not give them takes from its job class

EARLY = 1.0  # seconds a due tick may be ahead of Redis's clock, which judges every tick
BLOCKED, AHEAD = -1, -2  # the script's answers for an entry that did not fire and waits

# KEYS: queues set, then per item: state hash, fired-ticks sorted set, queue list.
# ARGV: window, caller's now, 1 if the caller vouches for its clock (it gave its own ``now``) else
# 0, then per item: mode (init, due, catchup), tick (init: the caller's start), schedule, queue
# name, payload, jid. Returns 1 per item that pushed a job, else 0 (-1: a key of another type
# kept it from firing; -2: a due tick more than EARLY ahead of Redis's clock, from a host whose
# clock is fast, to offer again). Unless vouched for, the caller's clock is checked by Redis's.
FIRE = IS_A + """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local window, vouched = tonumber(ARGV[1]), ARGV[3] == '1'
local behind = not vouched and now - tonumber(ARGV[2]) > __EARLY__  -- the caller's clock is slow
local pushed = {}
for i = 0, (#KEYS - 1) / 3 - 1 do
  local state, fired, queue = KEYS[3 * i + 2], KEYS[3 * i + 3], KEYS[3 * i + 4]
  local a = 6 * i + 4
  local mode, tick = ARGV[a], tonumber(ARGV[a + 1])
  local done = 0
  if not (is_a(state, 'hash') and is_a(fired, 'zset') and is_a(queue, 'list')) then
    done = -1  -- a key of another type, written by something else: this entry waits, the others fire
  elseif mode == 'init' then
    if redis.call('HGET', state, 'schedule') ~= ARGV[a + 2] then
      redis.call('HSET', state, 'schedule', ARGV[a + 2], 'since', vouched and tick or math.min(now, tick))
    end
  else
    local last = tonumber(redis.call('HGET', state, 'last') or '')
    local since = tonumber(redis.call('HGET', state, 'since') or '')
    local ok
    if mode == 'catchup' then
      ok = since ~= nil and tick > since and (last == nil or tick > last)
    elseif not vouched and tick - now > __EARLY__ then
      done = -2
    else  -- not older than the window or the schedule; from a slow clock, nor than the newest fired
      ok = now - tick <= window and (since == nil or tick >= since)
        and (not behind or last == nil or tick > last)
    end
    if ok and redis.call('ZADD', fired, 'NX', tick, ARGV[a + 1]) == 1 then
      if last == nil or tick > last then
        redis.call('HSET', state, 'last', ARGV[a + 1], 'jid', ARGV[a + 5], 'enqueued_at', now)
      end
      redis.pcall('SADD', KEYS[1], ARGV[a + 3])
      redis.call('LPUSH', queue, ARGV[a + 4])
      done = 1
    end
    redis.call('ZREMRANGEBYSCORE', fired, '-inf', '(' .. string.format('%d', now - window - 60))
  end
  pushed[#pushed + 1] = done
end
return pushed
""".replace("__EARLY__", repr(EARLY))


@dataclass(frozen=True)
class Entry:
    """One periodic job. Constructing it validates it: a ConfigError names ``periodic.NAME``."""

    name: str
    cron: str
    job: str  # the job's wire name (the payload's ``class``)
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str = "default"
    tz: str = "UTC"
    catch_up: bool = False
    retry: bool | int = True
    from_job: frozenset[str] = frozenset()  # "queue", "retry": not given, so bind_jobs takes the job class's

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            raise ConfigError(
                f"periodic.{self.name}" if isinstance(self.name, str) and self.name else "periodic.name",
                f"entry name {shown(self.name)} must be 1 to 200 letters, digits, '_', '.' or '-'",
            )
        try:
            parse(self.cron)
        except CronError as error:
            raise self.error("cron", f"bad cron expression: {error}") from None
        if not isinstance(self.job, str) or not self.job:
            raise self.error("class", f"must be a job's name, not {shown(self.job)}")
        if not isinstance(self.args, (list, tuple)):
            raise self.error("args", f"must be a list, not {shown(self.args)}")
        object.__setattr__(self, "args", tuple(self.args))
        if not isinstance(self.kwargs, Mapping):
            raise self.error("kwargs", f"must be a mapping, not {shown(self.kwargs)}")
        try:
            serialize_args(self.args)
            serialize_kwargs(self.kwargs)
        except SerializationError as error:
            raise self.error("args" if str(error).startswith("args") else "kwargs", str(error)) from None
        if not isinstance(self.queue, str) or not self.queue:
            raise self.error("queue", f"must be a queue name, not {shown(self.queue)}")
        if not isinstance(self.tz, str):
            raise self.error("tz", f"must be a time zone name such as Europe/Berlin, not {shown(self.tz)}")
        try:
            ZoneInfo(self.tz)
        except (ValueError, KeyError, OSError):
            raise self.error("tz", f"unknown time zone {shown(self.tz)}") from None
        if not isinstance(self.catch_up, bool):
            raise self.error("catch_up", f"must be true or false, not {shown(self.catch_up)}")
        if not isinstance(self.retry, (bool, int)) or self.retry < 0:
            raise self.error("retry", f"must be true, false or a number of retries, not {shown(self.retry)}")
        if not self.from_job <= INHERITED:
            raise ValueError(f"from_job names settings other than {', '.join(sorted(INHERITED))}")

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"periodic.{self.name}.{key}", message)

    @property
    def schedule(self) -> Cron:
        return parse(self.cron)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        return next_after(self.schedule, moment, self.zone)

    def payload(self, tick: int) -> dict[str, Any]:
        """The job hash for ``tick``; the ``periodic`` field names the entry and the tick. The job
        class's ``backtrace`` option applies, as to any enqueue of it."""
        payload = build_payload(self.job, self.args, self.kwargs or None, queue=self.queue, retry=self.retry)
        payload["periodic"] = {"name": self.name, "tick": tick}
        job_class = lookup(self.job)
        if job_class is not None and job_class.backtrace:
            payload["backtrace"] = job_class.backtrace
        return payload


# -- declaring ----------------------------------------------------------------

_declared: dict[str, Entry] = {}


def periodic(
    cron: str,
    job: type[Job] | str,
    *,
    name: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    queue: str | None = None,
    tz: str | ZoneInfo = "UTC",
    catch_up: bool = False,
    retry: bool | int | None = None,
) -> Entry:
    """Declare a periodic job: ``kiq.periodic("0 3 * * *", CleanupJob, name="nightly-cleanup")``.

    ``job`` is a job class (its wire name, queue and retry are the defaults) or a
    wire name (whose class gives them once the app is loaded). Declaring one name
    twice differently raises ConfigError.
    """
    if not isinstance(args, (list, tuple)):
        raise ConfigError(f"periodic.{name}.args", f"must be a list or tuple, not {shown(args)}")
    from_job: frozenset[str] = frozenset()
    if isinstance(job, type) and issubclass(job, Job):
        wire, default_queue, default_retry = job.job_name, job.queue, job.retry
    elif isinstance(job, str):
        wire, default_queue, default_retry = job, "default", True
        from_job = frozenset(key for key, value in (("queue", queue), ("retry", retry)) if value is None)
    else:
        raise ConfigError(f"periodic.{name}.class",
                          f"must be a kiq.Job subclass or a job name, not {shown(job)}")
    entry = Entry(
        name=name,
        cron=cron,
        job=wire,
        args=tuple(args),
        kwargs=dict(kwargs or {}),
        queue=queue or default_queue,
        tz=tz.key if isinstance(tz, ZoneInfo) else tz,
        catch_up=catch_up,
        retry=default_retry if retry is None else retry,
        from_job=from_job,
    )
    existing = _declared.get(name)
    if existing is not None and existing != entry:
        raise ConfigError(f"periodic.{name}", "declared twice with different settings")
    _declared[name] = entry
    return entry


def declared() -> list[Entry]:
    """Entries declared from Python, in declaration order."""
    return list(_declared.values())


def clear() -> None:
    """Forget the entries declared from Python (before importing the app again, and in tests)."""
    _declared.clear()


def entries_from_config(raw: Any) -> list[Entry]:
    """Entries from the config file's ``periodic:`` list; a ConfigError names the bad entry."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError("periodic", "must be a list of entries with name, cron and class")
    entries = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ConfigError(f"periodic[{index}]", "must be a mapping with name, cron and class")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"periodic[{index}].name", "is required: every entry needs a name")
        for key in item:
            if key not in CONFIG_KEYS:
                raise ConfigError(f"periodic.{name}.{key}", f"unknown setting; use {', '.join(CONFIG_KEYS)}")
        for key in ("cron", "class"):
            if key not in item:
                raise ConfigError(f"periodic.{name}.{key}", "is required")
        args: Any = item.get("args")
        kwargs: Any = item.get("kwargs")
        entries.append(Entry(
            name=name,
            cron=item["cron"],
            job=item["class"],
            args=() if args is None else args,
            kwargs={} if kwargs is None else kwargs,
            queue=item.get("queue") or "default",
            tz=item.get("tz") or "UTC",
            catch_up=item.get("catch_up", False),
            retry=item.get("retry", True),
            from_job=frozenset(key for key in INHERITED if item.get(key) is None),
        ))
    return merge(entries)


def merge(*groups: Iterable[Entry]) -> list[Entry]:
    """All entries of ``groups`` (the file's and Python's, say); one name twice is a ConfigError."""
    seen: dict[str, Entry] = {}
    for group in groups:
        for entry in group:
            if entry.name in seen:
                raise ConfigError(f"periodic.{entry.name}", "two entries have this name")
            seen[entry.name] = entry
    return list(seen.values())


def bind_jobs(entries: Iterable[Entry], classes: Mapping[str, type[Job]]) -> list[Entry]:
    """The entries, each with the settings it did not give (``from_job``) taken from its
    job class in ``classes`` (wire name -> class); ConfigError for the first entry whose
    job is not there.

    Run where the app is imported (a generation), with ``kiq.job.registered()``.
    """
    bound = []
    for entry in entries:
        job = classes.get(entry.job)
        if job is None:
            raise entry.error("class", f"unknown job {shown(entry.job)}: no job class has this name")
        settings: dict[str, Any] = {"queue": job.queue, "retry": job.retry}
        bound.append(dataclasses.replace(entry, **{key: settings[key] for key in entry.from_job},
                                         from_job=frozenset()))
    return bound


# -- firing ---------------------------------------------------------------------


class _State:
    """What one ``Periodic`` knows of one entry."""

    def __init__(self, entry: Entry, start: dt.datetime) -> None:
        self.entry = entry
        self.start = start  # with Redis's clock, the ``since`` of a schedule this state records first
        self.next = entry.next_after(start)
        self.ready = False  # the entry's schedule has been recorded in Redis
        self.blocked = False  # a key of the entry is of another type (said once, until it fires)
        self.ahead = False  # its tick was ahead of Redis's clock (said once, until it fires)
        self.held_until: dt.datetime | None = None  # a blocked entry's next try
        self.catch_up = last_at_or_before(entry.schedule, start, entry.zone) if entry.catch_up else None

    def wakes(self) -> dt.datetime:
        """When this entry wants ``fire_due`` next: its next tick, or a blocked entry's next try."""
        return self.held_until if self.held_until is not None else self.next


@dataclass
class _Item:
    state: _State
    mode: str
    tick: int
    payload: dict[str, Any] | None = None
    startup: bool = False  # the catch-up tried once when the entry's state was created


class Periodic:
    """Enqueues the due ticks of a list of entries; one per generation, in its supervisor.

    Not thread-safe: one thread calls ``fire_due`` and ``next_wakeup``. A reload starts a new
    generation, with a new ``Periodic``: the ticks already fired are in Redis, so none fires twice.
    """

    def __init__(
        self,
        conn: redis.Redis,
        keys: Keys,
        entries: Iterable[Entry],
        *,
        now: dt.datetime | None = None,
        window: float = WINDOW,
    ) -> None:
        """``now`` (default: the clock) is when this master starts: only later ticks fire."""
        self.conn = conn
        self.keys = keys
        self.window = dt.timedelta(seconds=window)
        self.log = log.get("kiq.periodic")
        self._fire = conn.register_script(FIRE)
        start = _aware(now)
        self._states = {entry.name: _State(entry, start) for entry in merge(entries)}

    @property
    def entries(self) -> list[Entry]:
        return [state.entry for state in self._states.values()]

    def next_wakeup(self, now: dt.datetime | None = None) -> dt.datetime | None:
        """When the next tick of any entry is due (UTC); None without entries.

        Ticks are computed from the last ``fire_due`` (or the start), so ``now`` is
        not needed; the result is at or before ``now`` while a due tick waits for
        ``fire_due``, and the caller should then not sleep. An entry blocked by a key of
        another type is tried again BLOCKED_PAUSE later, not at once and again.
        """
        return min((state.wakes() for state in self._states.values()), default=None)

    def fire_due(self, now: dt.datetime | None = None) -> list[tuple[str, int]]:
        """Try every tick due by ``now`` (default: the clock) in one script call; returns the
        ticks this call enqueued a job for, as (entry name, epoch seconds), not those another
        master fired first.

        If Redis fails, nothing is marked done here and the next call tries the same
        ticks again; the script makes a repeated try harmless. Without ``now``, Redis's clock
        checks this host's: a tick still more than EARLY ahead of it (this host's clock is fast)
        waits, and a schedule recorded first is ``since`` no later than Redis's now. A caller
        that gives ``now`` vouches for its clock (tests, tools).
        """
        moment = _aware(now)
        items: list[_Item] = []
        advanced: list[tuple[_State, dt.datetime]] = []
        for state in self._states.values():
            if state.held_until is None or state.held_until <= moment:
                items += self._plan(state, moment, advanced)
        if not items:
            return []
        results = self._try(items, moment, vouched=now is not None)
        # An entry whose keys are of another type, or whose tick is still ahead of Redis's clock
        # (this host's is fast), waits: it offers the same ticks again a pause later.
        held = {id(item.state): pushed for item, pushed in zip(items, results, strict=True) if pushed < 0}
        for state, following in advanced:
            if id(state) not in held:
                state.next = following
        for state in {id(item.state): item.state for item in items}.values():
            self._say_held(state, held.get(id(state)))
            state.held_until = moment + BLOCKED_PAUSE if id(state) in held else None
        fired = []
        for item, pushed in zip(items, results, strict=True):
            if pushed < 0:
                continue
            if item.mode == "init":
                item.state.ready = True
            if item.startup:
                item.state.catch_up = None
            if pushed:
                fired.append((item.state.entry.name, item.tick))
        return fired

    def _say_held(self, state: _State, held: int | None) -> None:
        """Log why an entry waits, once until it fires again."""
        if held == BLOCKED and not state.blocked:
            self.log.error("periodic entry not fired: one of its keys (its state, its ticks or its "
                           "queue) is of another type; fix or delete it", entry=state.entry.name)
        if held == AHEAD and not state.ahead:
            self.log.warning("periodic tick not fired yet: this host's clock is ahead of Redis's, whose "
                             "clock decides; it fires when Redis's clock reaches it (check NTP here)",
                             entry=state.entry.name)
        state.blocked, state.ahead = held == BLOCKED, held == AHEAD

    def _plan(self, state: _State, now: dt.datetime,
              advanced: list[tuple[_State, dt.datetime]]) -> list[_Item]:
        entry = state.entry
        items = [] if state.ready else [_Item(state, "init", int(state.start.timestamp()))]
        if state.catch_up is not None:
            items.append(self._item(state, "catchup", state.catch_up, startup=True))
        following = state.next
        if following > now:
            return items
        oldest = now - self.window
        stalled = None
        if following < oldest:
            stalled = last_at_or_before(entry.schedule, oldest, entry.zone)
            following = entry.next_after(oldest)
            self.log.warning("periodic ticks skipped: more than the window late", entry=entry.name,
                             window=self.window.total_seconds())
        while following <= now:
            items.append(self._item(state, "due", following))
            following = entry.next_after(following)
        if stalled is not None and entry.catch_up:
            items.append(self._item(state, "catchup", stalled))  # after newer ticks: fires only if none did
        advanced.append((state, following))
        return items

    def _item(self, state: _State, mode: str, tick: dt.datetime, startup: bool = False) -> _Item:
        seconds = int(tick.timestamp())
        return _Item(state, mode, seconds, state.entry.payload(seconds), startup)

    def _try(self, items: list[_Item], now: dt.datetime, vouched: bool) -> list[int]:
        """Offer every item's tick to the FIRE script in one call; per item 1 if it enqueued."""
        keys = [self.keys.queues]
        args: list[str | float] = [self.window.total_seconds(), now.timestamp(), int(vouched)]
        for item in items:
            entry = item.state.entry
            keys += [self.keys.periodic(entry.name), self.keys.periodic_ticks(entry.name),
                     self.keys.queue(entry.queue)]
            payload = item.payload or {}
            args += [item.mode, str(item.tick), f"{entry.cron}|{entry.tz}", entry.queue,
                     dump(payload), str(payload.get("jid", ""))]
        return [int(flag) for flag in self._fire(keys=keys, args=args)]


def enqueue_now(client: Client, entry: Entry) -> str:
    """Enqueue one run of ``entry`` now, outside its schedule (the dashboard's "enqueue now"); returns
    its jid. Its ``periodic`` field names the entry, this moment as the tick, and ``manual``. No
    tick is recorded: the schedule goes on as before."""
    payload = entry.payload(int(time.time()))
    payload["periodic"]["manual"] = True
    return client.push(payload)


def describe(conn: redis.Redis, keys: Keys, entries: Iterable[Entry], now: dt.datetime | None = None
             ) -> list[dict[str, Any]]:
    """One row per entry for ``kiq periodic``: its settings, the last tick fired (from Redis,
    with that job's jid) and the next tick after ``now``; times are aware UTC datetimes."""
    entries = list(entries)
    moment = _aware(now)
    pipe = conn.pipeline(transaction=False)
    for entry in entries:
        pipe.hgetall(keys.periodic(entry.name))
    rows = []
    for entry, state in zip(entries, pipe.execute(raise_on_error=False), strict=True):
        state = state if isinstance(state, dict) else {}  # a key of another type: as if none
        rows.append({
            "name": entry.name,
            "cron": entry.cron,
            "tz": entry.tz,
            "class": entry.job,
            "queue": entry.queue,
            "catch_up": entry.catch_up,
            "last": _tick_time(state.get("last")),
            "last_jid": state.get("jid") or None,
            "next": entry.next_after(moment),
        })
    return rows


def _tick_time(last: str | None) -> dt.datetime | None:
    """The time of the tick a state hash names as its last; None for none, or for what no tick
    is (written by something else)."""
    try:
        return dt.datetime.fromtimestamp(int(last or ""), dt.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None


def _aware(moment: dt.datetime | None) -> dt.datetime:
    if moment is None:
        return dt.datetime.now(dt.timezone.utc)
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{shown(moment)} has no time zone; pass an aware datetime")
    return moment
