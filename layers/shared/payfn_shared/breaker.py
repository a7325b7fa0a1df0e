"""Circuit breaker with Resilience4j semantics, its state shared by every process through Redis.

Why not pybreaker alone
-----------------------
pybreaker (the library the spec names) gives the interface this module keeps:
``call(func, *args, **kwargs)``, listeners (:class:`pybreaker.CircuitBreakerListener`:
``before_call``, ``success``, ``failure``, ``state_change``), the error family
(:class:`CallNotPermittedError` is a :class:`pybreaker.CircuitBreakerError`) and
excluded exceptions (``exclude=``, business errors that do not signal a broken
dependency). Its state machine and its ``CircuitRedisStorage`` are not enough:
the storage is a set of separate GET/SET/INCR commands (two processes can both
see "closed", both trip, both half-open and let several trial calls through),
and the machine counts *consecutive* failures, while the seed's Resilience4j
breaker evaluates a failure *rate* and a slow-call *rate* over a count-based
sliding window, with a minimum number of calls and N permitted half-open calls.

How the state is kept
---------------------
One Redis hash per breaker (``payfn:cb:{<name>}``; the braces are a cluster
hash tag) holds the state, an *epoch* (bumped on every transition), the time
the state was entered, the window as a ring of outcome codes (one character
per call: 0 success, 1 failure, 2 slow success, 3 slow failure) plus running
counters, the not-permitted counter and the number of half-open permits
issued. Every operation is ONE Lua script (acquire, record, admin transition,
snapshot), so every decision and transition is atomic fleet-wide: half-open
hands out exactly ``permitted`` permits however many processes ask.

A result counts only in the state generation (epoch) that admitted its call:
a call admitted while CLOSED that finishes after the breaker opened does not
leak into the next HALF_OPEN window (Resilience4j, being in-process, has no
such race to guard against).

Time: the caller passes its clock (milliseconds) to every script, rather than
the scripts reading Redis ``TIME``, so that unit tests drive the very same
decisions with a controllable clock. Across hosts, clock skew shifts the
OPEN → HALF_OPEN moment by the skew only, which NTP keeps far below the 30 s
wait. Durations (slow calls) are measured with the same injectable clock.

Round trips
-----------
CLOSED success path: ONE round trip. Each answer from Redis (state, epoch) is
cached; while the cached state is CLOSED (or DISABLED) and younger than
``state_cache_seconds`` the permission is granted locally, the call runs, and
the record script both records the outcome and returns the new state, which
refreshes the cache. So a steadily used breaker costs one EVALSHA per call;
only a process that has been idle longer than the cache age pays a second
round trip (the acquire script). The cost of the cache: a process that has
not made a call since another process tripped the breaker may let calls
through for at most ``state_cache_seconds``; their results are dropped by the
epoch rule. The cache age is capped at half the OPEN wait, so a stale CLOSED
cache can never admit a call while the fleet is HALF_OPEN. Every other
state goes to Redis for each permission (OPEN must count not-permitted calls,
HALF_OPEN must hand out permits atomically). ``tests/load/bench_breaker.py``
measures this (µs per call, Redis commands per call).

Automatic OPEN → HALF_OPEN: evaluated inside the scripts once the wait has
passed — on acquire always, and on snapshot/record when
``automatic_transition_from_open_to_half_open_enabled`` (so the status API
shows HALF_OPEN without waiting for a call, as Resilience4j's timer would).

Fallback: if Redis fails (connection, timeout, any RedisError) the breaker logs
it and runs on an in-process store with the same logic (:class:`LocalBreakerStore`,
the Python twin of the Lua scripts, tested against them), says
``"storage": "local-fallback"`` in its snapshot, and tries Redis again every
``redis_retry_seconds``. The Lua source lives in this module (not in ``.lua``
files) so that the layer needs no package data to work on Lambda.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar

import pybreaker
import redis

from payfn_shared.config import ConfigError, load_dataclass
from payfn_shared.redis_client import get_redis, register_script

logger = logging.getLogger(__name__)

T = TypeVar("T")

CLOSED = "CLOSED"
OPEN = "OPEN"
HALF_OPEN = "HALF_OPEN"
DISABLED = "DISABLED"
FORCED_OPEN = "FORCED_OPEN"
STATES = (CLOSED, OPEN, HALF_OPEN, DISABLED, FORCED_OPEN)

#: Outcome codes stored in the window (bit 0: failure, bit 1: slow).
SUCCESS, FAILURE, SLOW_SUCCESS, SLOW_FAILURE = 0, 1, 2, 3

#: Environment prefix of :class:`BreakerConfig` (e.g. ``PAYFN_BREAKER_SLIDING_WINDOW_SIZE``).
CONFIG_PREFIX = "PAYFN_BREAKER_"
KEY_PREFIX = "payfn:cb:"

#: Snapshot ``storage`` values.
STORAGE_REDIS = "redis"
STORAGE_LOCAL_FALLBACK = "local-fallback"


@dataclass(frozen=True)
class BreakerConfig:
    """Resilience4j settings (the seed's values are the defaults) plus payfn's own knobs.

    ``max_wait_duration_in_half_open_state_seconds`` is Resilience4j's
    ``maxWaitDurationInHalfOpenState`` (0: wait for the permitted calls forever).
    ``state_cache_seconds`` bounds how long a cached CLOSED state may grant
    permissions without asking Redis; ``redis_retry_seconds`` is how often a
    breaker running on its local fallback tries Redis again.
    """

    ENV_PREFIX: ClassVar[str] = CONFIG_PREFIX

    sliding_window_size: int = 100
    minimum_number_of_calls: int = 5
    failure_rate_threshold: float = 50.0
    slow_call_rate_threshold: float = 50.0
    slow_call_duration_threshold_seconds: float = 5.0
    wait_duration_in_open_state_seconds: float = 30.0
    permitted_number_of_calls_in_half_open_state: int = 3
    automatic_transition_from_open_to_half_open_enabled: bool = True
    max_wait_duration_in_half_open_state_seconds: float = 0.0
    state_cache_seconds: float = 1.0
    redis_retry_seconds: float = 5.0

    def validate(self) -> None:
        for name in ("sliding_window_size", "minimum_number_of_calls",
                     "permitted_number_of_calls_in_half_open_state"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{CONFIG_PREFIX}{name.upper()} must be >= 1")
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            if not 0 < getattr(self, name) <= 100:
                raise ConfigError(f"{CONFIG_PREFIX}{name.upper()} must be in (0, 100]")
        for name in ("slow_call_duration_threshold_seconds", "wait_duration_in_open_state_seconds",
                     "redis_retry_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{CONFIG_PREFIX}{name.upper()} must be > 0")
        if self.max_wait_duration_in_half_open_state_seconds < 0:
            raise ConfigError(f"{CONFIG_PREFIX}MAX_WAIT_DURATION_IN_HALF_OPEN_STATE_SECONDS must be >= 0")
        if self.state_cache_seconds < 0:
            raise ConfigError(f"{CONFIG_PREFIX}STATE_CACHE_SECONDS must be >= 0")

    @property
    def closed_cache_seconds(self) -> float:
        """How long a cached CLOSED/DISABLED state may grant permissions locally.

        Capped at half the OPEN wait, so that a stale CLOSED cache can never admit
        a call once the fleet is HALF_OPEN (CI shortens the wait without having to
        shorten the cache too).
        """
        return min(self.state_cache_seconds, self.wait_duration_in_open_state_seconds / 2)

    @property
    def closed_minimum(self) -> int:
        """Resilience4j caps minimumNumberOfCalls at the window size."""
        return min(self.minimum_number_of_calls, self.sliding_window_size)


def load_breaker_config() -> BreakerConfig:
    """The breaker settings from ``PAYFN_BREAKER_*`` (CI shortens the durations)."""
    config: BreakerConfig = load_dataclass(BreakerConfig)
    return config


class Answer(NamedTuple):
    """What acquire / record / transition return: permission, and the state after the operation."""

    permitted: bool
    state: str
    epoch: int


class RawSnapshot(NamedTuple):
    """Counters of the current state's metrics, as stored (rates are derived in Python)."""

    state: str
    epoch: int
    buffered: int
    failed: int
    slow: int
    slow_failed: int
    not_permitted: int
    minimum: int


class BreakerStore(Protocol):
    """Where a breaker's state lives; every method is one atomic step of the state machine."""

    storage: str

    def acquire(self, now_ms: int) -> Answer: ...

    def record(self, now_ms: int, epoch: int, outcome: int) -> Answer: ...

    def transition(self, now_ms: int, target: str) -> Answer: ...

    def snapshot(self, now_ms: int) -> RawSnapshot: ...


# --------------------------------------------------------------------------------------------
# The state machine, twice: in Lua (Redis) and in Python (local store). Same names, same steps;
# tests/integration/test_breaker_redis.py runs both on the same sequences and compares them.
# --------------------------------------------------------------------------------------------

_LUA_PRELUDE = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local WINDOW = tonumber(ARGV[2])
local MINIMUM = tonumber(ARGV[3])
local FAILURE_THRESHOLD = tonumber(ARGV[4])
local SLOW_THRESHOLD = tonumber(ARGV[5])
local WAIT_MS = tonumber(ARGV[6])
local PERMITTED = tonumber(ARGV[7])
local AUTOMATIC = ARGV[8] == '1'
local HALF_OPEN_MAX_WAIT_MS = tonumber(ARGV[9])
local NUMERIC = {'ep', 'at', 'sz', 'mn', 'hd', 'n', 'f', 's', 'sf', 'np', 'hi'}

local function reset_metrics(c, size, minimum)
  c.sz = size; c.mn = minimum
  c.hd = 0; c.n = 0; c.f = 0; c.s = 0; c.sf = 0; c.np = 0; c.hi = 0; c.r = ''
end

local function enter(c, state, keep_metrics)
  c.st = state; c.ep = c.ep + 1; c.at = now
  if keep_metrics then return end
  if state == 'HALF_OPEN' then
    reset_metrics(c, PERMITTED, PERMITTED)
  else
    reset_metrics(c, WINDOW, MINIMUM)
  end
end

local function load()
  local v = redis.call('HMGET', key, 'st', 'r', unpack(NUMERIC))
  if not v[1] then
    local c = {st = 'CLOSED', ep = now, at = now}
    reset_metrics(c, WINDOW, MINIMUM)
    return c
  end
  local c = {st = v[1], r = v[2] or ''}
  for i, name in ipairs(NUMERIC) do c[name] = tonumber(v[i + 2]) end
  return c
end

local function save(c)
  local args = {'st', c.st, 'r', c.r}
  for _, name in ipairs(NUMERIC) do
    args[#args + 1] = name
    args[#args + 1] = c[name]
  end
  redis.call('HSET', key, unpack(args))
end

local function advance(c, acquiring)
  if c.st == 'OPEN' and (acquiring or AUTOMATIC) and now - c.at >= WAIT_MS then
    enter(c, 'HALF_OPEN', false)
  elseif c.st == 'HALF_OPEN' and HALF_OPEN_MAX_WAIT_MS > 0 and now - c.at >= HALF_OPEN_MAX_WAIT_MS then
    enter(c, 'OPEN', true)
  end
end

local function push(c, code)
  local idx = c.hd
  if c.n == c.sz then
    local old = tonumber(string.sub(c.r, idx + 1, idx + 1))
    c.f = c.f - old % 2
    if old >= 2 then c.s = c.s - 1 end
    if old == 3 then c.sf = c.sf - 1 end
  else
    c.n = c.n + 1
  end
  c.r = string.sub(c.r, 1, idx) .. code .. string.sub(c.r, idx + 2)
  c.hd = (idx + 1) % c.sz
  c.f = c.f + code % 2
  if code >= 2 then c.s = c.s + 1 end
  if code == 3 then c.sf = c.sf + 1 end
end

-- nil: fewer calls than the minimum; true/false: a rate reached its threshold or not
local function exceeded(c)
  if c.n < c.mn then return nil end
  return c.f * 100 >= FAILURE_THRESHOLD * c.n or c.s * 100 >= SLOW_THRESHOLD * c.n
end
"""

_LUA_ACQUIRE = _LUA_PRELUDE + """
local c = load()
advance(c, true)
local permitted = 0
if c.st == 'CLOSED' or c.st == 'DISABLED' then
  permitted = 1
elseif c.st == 'HALF_OPEN' and c.hi < c.sz then
  c.hi = c.hi + 1
  permitted = 1
else
  c.np = c.np + 1
end
save(c)
return {permitted, c.st, c.ep}
"""

_LUA_RECORD = _LUA_PRELUDE + """
local epoch = tonumber(ARGV[10])
local code = tonumber(ARGV[11])
local c = load()
advance(c, false)
if c.ep == epoch and (c.st == 'CLOSED' or c.st == 'HALF_OPEN') then
  push(c, code)
  local over = exceeded(c)
  if over then
    enter(c, 'OPEN', true)
  elseif over == false and c.st == 'HALF_OPEN' then
    enter(c, 'CLOSED', false)
  end
end
save(c)
return {1, c.st, c.ep}
"""

_LUA_TRANSITION = _LUA_PRELUDE + """
local c = load()
enter(c, ARGV[10], false)
save(c)
return {1, c.st, c.ep}
"""

_LUA_SNAPSHOT = _LUA_PRELUDE + """
local c = load()
advance(c, false)
save(c)
return {c.st, c.ep, c.n, c.f, c.s, c.sf, c.np, c.mn}
"""


@dataclass
class BreakerRecord:
    """The Python twin of the Redis hash (same fields as the Lua table ``c``)."""

    state: str
    epoch: int
    entered_at: int
    size: int = 0
    minimum: int = 0
    head: int = 0
    buffered: int = 0
    failed: int = 0
    slow: int = 0
    slow_failed: int = 0
    not_permitted: int = 0
    half_open_issued: int = 0
    ring: list[int] = field(default_factory=list)


class StateMachine:
    """The Python twin of ``_LUA_PRELUDE`` and the four script bodies, step for step."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.wait_ms = int(config.wait_duration_in_open_state_seconds * 1000)
        self.half_open_max_wait_ms = int(config.max_wait_duration_in_half_open_state_seconds * 1000)

    def new_record(self, now_ms: int) -> BreakerRecord:
        record = BreakerRecord(state=CLOSED, epoch=now_ms, entered_at=now_ms)
        self._reset_metrics(record, self.config.sliding_window_size, self.config.closed_minimum)
        return record

    @staticmethod
    def _reset_metrics(record: BreakerRecord, size: int, minimum: int) -> None:
        record.size, record.minimum = size, minimum
        record.head = record.buffered = record.failed = record.slow = record.slow_failed = 0
        record.not_permitted = record.half_open_issued = 0
        record.ring = []

    def _enter(self, record: BreakerRecord, state: str, now_ms: int, keep_metrics: bool) -> None:
        record.state, record.epoch, record.entered_at = state, record.epoch + 1, now_ms
        if keep_metrics:
            return
        if state == HALF_OPEN:
            permitted = self.config.permitted_number_of_calls_in_half_open_state
            self._reset_metrics(record, permitted, permitted)
        else:
            self._reset_metrics(record, self.config.sliding_window_size, self.config.closed_minimum)

    def _advance(self, record: BreakerRecord, now_ms: int, acquiring: bool) -> None:
        automatic = self.config.automatic_transition_from_open_to_half_open_enabled
        if record.state == OPEN and (acquiring or automatic) and now_ms - record.entered_at >= self.wait_ms:
            self._enter(record, HALF_OPEN, now_ms, keep_metrics=False)
        elif (record.state == HALF_OPEN and self.half_open_max_wait_ms > 0
              and now_ms - record.entered_at >= self.half_open_max_wait_ms):
            self._enter(record, OPEN, now_ms, keep_metrics=True)

    @staticmethod
    def _push(record: BreakerRecord, code: int) -> None:
        index = record.head
        if record.buffered == record.size:
            old = record.ring[index]
            record.failed -= old % 2
            record.slow -= int(old >= 2)
            record.slow_failed -= int(old == 3)
            record.ring[index] = code
        else:
            record.buffered += 1
            record.ring.append(code)
        record.head = (index + 1) % record.size
        record.failed += code % 2
        record.slow += int(code >= 2)
        record.slow_failed += int(code == 3)

    def _exceeded(self, record: BreakerRecord) -> bool | None:
        if record.buffered < record.minimum:
            return None
        return (record.failed * 100 >= self.config.failure_rate_threshold * record.buffered
                or record.slow * 100 >= self.config.slow_call_rate_threshold * record.buffered)

    def acquire(self, record: BreakerRecord, now_ms: int) -> Answer:
        self._advance(record, now_ms, acquiring=True)
        permitted = record.state in (CLOSED, DISABLED)
        if not permitted and record.state == HALF_OPEN and record.half_open_issued < record.size:
            record.half_open_issued += 1
            permitted = True
        elif not permitted:
            record.not_permitted += 1
        return Answer(permitted, record.state, record.epoch)

    def record(self, record: BreakerRecord, now_ms: int, epoch: int, outcome: int) -> Answer:
        self._advance(record, now_ms, acquiring=False)
        if record.epoch == epoch and record.state in (CLOSED, HALF_OPEN):
            self._push(record, outcome)
            over = self._exceeded(record)
            if over:
                self._enter(record, OPEN, now_ms, keep_metrics=True)
            elif over is False and record.state == HALF_OPEN:
                self._enter(record, CLOSED, now_ms, keep_metrics=False)
        return Answer(True, record.state, record.epoch)

    def transition(self, record: BreakerRecord, now_ms: int, target: str) -> Answer:
        self._enter(record, target, now_ms, keep_metrics=False)
        return Answer(True, record.state, record.epoch)

    def snapshot(self, record: BreakerRecord, now_ms: int) -> RawSnapshot:
        self._advance(record, now_ms, acquiring=False)
        return RawSnapshot(record.state, record.epoch, record.buffered, record.failed, record.slow,
                           record.slow_failed, record.not_permitted, record.minimum)


class LocalBreakerStore:
    """In-process store: the Redis fallback, and the unit-testable twin of the Lua scripts."""

    def __init__(self, config: BreakerConfig, storage: str = STORAGE_LOCAL_FALLBACK) -> None:
        self.storage = storage
        self._machine = StateMachine(config)
        self._record: BreakerRecord | None = None
        self._lock = threading.Lock()

    def _current(self, now_ms: int) -> BreakerRecord:
        if self._record is None:
            self._record = self._machine.new_record(now_ms)
        return self._record

    def acquire(self, now_ms: int) -> Answer:
        with self._lock:
            return self._machine.acquire(self._current(now_ms), now_ms)

    def record(self, now_ms: int, epoch: int, outcome: int) -> Answer:
        with self._lock:
            return self._machine.record(self._current(now_ms), now_ms, epoch, outcome)

    def transition(self, now_ms: int, target: str) -> Answer:
        with self._lock:
            return self._machine.transition(self._current(now_ms), now_ms, target)

    def snapshot(self, now_ms: int) -> RawSnapshot:
        with self._lock:
            return self._machine.snapshot(self._current(now_ms), now_ms)


class RedisBreakerStore:
    """The shared store: one Redis hash per breaker, one Lua script (EVALSHA) per operation."""

    storage = STORAGE_REDIS

    def __init__(self, client: redis.Redis, name: str, config: BreakerConfig) -> None:
        self.key = f"{KEY_PREFIX}{{{name}}}"
        self._acquire = register_script(client, _LUA_ACQUIRE)
        self._record = register_script(client, _LUA_RECORD)
        self._transition = register_script(client, _LUA_TRANSITION)
        self._snapshot = register_script(client, _LUA_SNAPSHOT)
        self._config_args: list[str | int | float] = [
            config.sliding_window_size,
            config.closed_minimum,
            repr(float(config.failure_rate_threshold)),
            repr(float(config.slow_call_rate_threshold)),
            int(config.wait_duration_in_open_state_seconds * 1000),
            config.permitted_number_of_calls_in_half_open_state,
            1 if config.automatic_transition_from_open_to_half_open_enabled else 0,
            int(config.max_wait_duration_in_half_open_state_seconds * 1000),
        ]

    @staticmethod
    def _answer(reply: list[Any]) -> Answer:
        return Answer(bool(reply[0]), reply[1].decode(), int(reply[2]))

    def acquire(self, now_ms: int) -> Answer:
        return self._answer(self._acquire(keys=[self.key], args=[now_ms, *self._config_args]))

    def record(self, now_ms: int, epoch: int, outcome: int) -> Answer:
        return self._answer(self._record(keys=[self.key], args=[now_ms, *self._config_args, epoch, outcome]))

    def transition(self, now_ms: int, target: str) -> Answer:
        return self._answer(self._transition(keys=[self.key], args=[now_ms, *self._config_args, target]))

    def snapshot(self, now_ms: int) -> RawSnapshot:
        reply = self._snapshot(keys=[self.key], args=[now_ms, *self._config_args])
        return RawSnapshot(reply[0].decode(), *(int(value) for value in reply[1:]))


def build_snapshot(raw: RawSnapshot, storage: str) -> dict[str, Any]:
    """The spec's snapshot (Resilience4j's metric names) plus where the state lives.

    Rates are -1.0 while fewer than minimumNumberOfCalls are buffered, as in Resilience4j.
    """
    enough = raw.buffered >= raw.minimum
    return {
        "state": raw.state,
        "numberOfSuccessfulCalls": raw.buffered - raw.failed,
        "numberOfFailedCalls": raw.failed,
        "numberOfSlowCalls": raw.slow,
        "numberOfSlowSuccessfulCalls": raw.slow - raw.slow_failed,
        "numberOfSlowFailedCalls": raw.slow_failed,
        "numberOfBufferedCalls": raw.buffered,
        "numberOfNotPermittedCalls": raw.not_permitted,
        "failureRate": raw.failed * 100.0 / raw.buffered if enough else -1.0,
        "slowCallRate": raw.slow * 100.0 / raw.buffered if enough else -1.0,
        "storage": storage,
    }


# --------------------------------------------------------------------------------------------
# The breaker
# --------------------------------------------------------------------------------------------


class CallNotPermittedError(pybreaker.CircuitBreakerError):
    """The breaker is OPEN / FORCED_OPEN, or HALF_OPEN with every trial permit taken."""

    def __init__(self, name: str, state: str) -> None:
        super().__init__(f"circuit breaker {name!r} is {state} and does not permit further calls")
        self.name = name
        self.state = state


class BreakerListener(pybreaker.CircuitBreakerListener):
    """pybreaker's listener, plus a not-permitted event.

    ``state_change`` receives Resilience4j state *names* (``"OPEN"``…) rather than
    pybreaker's state objects, which only know three states. It fires in each
    process when that process observes a new state (its own transition or
    another process's), like pybreaker's Redis-backed breakers do.
    """

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        """Called with (breaker, previous state name, new state name)."""

    def call_not_permitted(self, cb: Any) -> None:
        """Called when a call is rejected without running."""


class _Permit(NamedTuple):
    store: BreakerStore
    epoch: int
    state: str


ExcludeRule = type[BaseException] | Callable[[BaseException], bool]


class RedisCircuitBreaker:
    """A named breaker whose state every process shares through Redis (see module docstring)."""

    def __init__(
        self,
        name: str = "kafka-publisher",
        config: BreakerConfig | None = None,
        redis_client: redis.Redis | None = None,
        *,
        store: BreakerStore | None = None,
        clock: Callable[[], float] = time.time,
        listeners: Iterable[pybreaker.CircuitBreakerListener] = (),
        exclude: Iterable[ExcludeRule] = (),
    ) -> None:
        """``store`` replaces the Redis store (unit tests pass a :class:`LocalBreakerStore`);
        ``clock`` returns seconds and must be comparable across processes (wall time)."""
        self.name = name
        self.config = config or load_breaker_config()
        self._primary: BreakerStore = store or RedisBreakerStore(
            redis_client or get_redis(), name, self.config)
        self._fallback = LocalBreakerStore(self.config)
        self._clock = clock
        self._listeners: list[pybreaker.CircuitBreakerListener] = list(listeners)
        self._exclude: list[ExcludeRule] = list(exclude)
        self._lock = threading.Lock()
        self._cached: Answer | None = None
        self._cached_at = 0.0
        self._observed: str | None = None
        self._retry_primary_at: float | None = None

    # -- pybreaker-style surface ---------------------------------------------------------------

    @property
    def listeners(self) -> tuple[pybreaker.CircuitBreakerListener, ...]:
        return tuple(self._listeners)

    def add_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        with self._lock:
            self._listeners.remove(listener)

    def is_system_error(self, exc: BaseException) -> bool:
        """pybreaker's rule: an excluded exception is a business outcome, recorded as success."""
        for rule in self._exclude:
            if isinstance(rule, type):
                if isinstance(exc, rule):
                    return False
            elif rule(exc):
                return False
        return True

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``func`` if the breaker permits it and record its outcome and duration.

        Raises :class:`CallNotPermittedError` without running ``func`` when not
        permitted; ``func``'s own exception is re-raised unchanged after recording.
        """
        permit = self._acquire()
        self._notify("before_call", func, *args, **kwargs)
        start = self._clock()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            slow = self._clock() - start >= self.config.slow_call_duration_threshold_seconds
            if self.is_system_error(exc):
                self._record(permit, SLOW_FAILURE if slow else FAILURE)
                self._notify("failure", exc)
            else:
                self._record(permit, SLOW_SUCCESS if slow else SUCCESS)
                self._notify("success")
            raise
        slow = self._clock() - start >= self.config.slow_call_duration_threshold_seconds
        self._record(permit, SLOW_SUCCESS if slow else SUCCESS)
        self._notify("success")
        return result

    # -- Resilience4j-style surface ------------------------------------------------------------

    @property
    def state(self) -> str:
        """The current state (one round trip: the snapshot script)."""
        return str(self.snapshot()["state"])

    def snapshot(self) -> dict[str, Any]:
        """The spec's snapshot of the current state's metrics, plus ``storage``."""
        now = self._clock()
        store, raw = self._run(now, lambda s: s.snapshot(int(now * 1000)))
        self._observe(store, Answer(True, raw.state, raw.epoch), now)
        return build_snapshot(raw, store.storage)

    def transition_to_disabled(self) -> None:
        """Admin: always permit, record nothing (Resilience4j transitionToDisabledState)."""
        self._admin(DISABLED)

    def transition_to_forced_open(self) -> None:
        """Admin: reject everything until another admin transition."""
        self._admin(FORCED_OPEN)

    def transition_to_closed(self) -> None:
        """Admin: CLOSED with an empty window."""
        self._admin(CLOSED)

    def reset(self) -> None:
        """Admin: Resilience4j's reset, i.e. CLOSED with fresh metrics (as transition_to_closed)."""
        self._admin(CLOSED)

    # -- internals -----------------------------------------------------------------------------

    def _admin(self, target: str) -> None:
        now = self._clock()
        store, answer = self._run(now, lambda s: s.transition(int(now * 1000), target))
        self._observe(store, answer, now)

    def _in_fallback(self, now: float) -> bool:
        return self._retry_primary_at is not None and now < self._retry_primary_at

    def _run(self, now: float, operation: Callable[[BreakerStore], T]) -> tuple[BreakerStore, T]:
        """Run one store operation on Redis, or on the local store while Redis is failing."""
        if not self._in_fallback(now):
            try:
                result = operation(self._primary)
            except redis.RedisError as exc:
                self._enter_fallback(now, exc)
            else:
                if self._retry_primary_at is not None:
                    self._retry_primary_at = None
                    logger.warning("circuit breaker %s: Redis answers again, shared state resumed", self.name)
                return self._primary, result
        return self._fallback, operation(self._fallback)

    def _enter_fallback(self, now: float, exc: Exception) -> None:
        if self._retry_primary_at is None:
            logger.error("circuit breaker %s: Redis failed (%s); using the local in-process breaker",
                         self.name, exc)
        self._retry_primary_at = now + self.config.redis_retry_seconds
        self._cached = None

    def _acquire(self) -> _Permit:
        now = self._clock()
        cached = self._cached
        if (cached is not None and cached.state in (CLOSED, DISABLED)
                and now - self._cached_at < self.config.closed_cache_seconds):
            return _Permit(self._primary, cached.epoch, cached.state)
        store, answer = self._run(now, lambda s: s.acquire(int(now * 1000)))
        self._observe(store, answer, now)
        if not answer.permitted:
            self._notify("call_not_permitted")
            raise CallNotPermittedError(self.name, answer.state)
        return _Permit(store, answer.epoch, answer.state)

    def _record(self, permit: _Permit, outcome: int) -> None:
        """Record where the permission came from; DISABLED records nothing (and costs nothing)."""
        if permit.state == DISABLED:
            return
        now = self._clock()
        try:
            answer = permit.store.record(int(now * 1000), permit.epoch, outcome)
        except redis.RedisError as exc:
            self._enter_fallback(now, exc)
            return
        self._observe(permit.store, answer, now)

    def _observe(self, store: BreakerStore, answer: Answer, now: float) -> None:
        """Refresh the state cache and tell listeners when this process sees a new state."""
        if store is self._primary:
            self._cached, self._cached_at = answer, now
        with self._lock:
            previous, self._observed = self._observed, answer.state
        if previous is not None and previous != answer.state:
            logger.info("circuit breaker %s: %s -> %s (%s)", self.name, previous, answer.state, store.storage)
            self._notify("state_change", previous, answer.state)

    def _notify(self, event: str, *args: Any, **kwargs: Any) -> None:
        """Call listeners; a failing listener is logged, never allowed to fail the guarded call."""
        for listener in self.listeners:
            handler = getattr(listener, event, None)
            if handler is None:
                continue
            try:
                handler(self, *args, **kwargs)
            except Exception:
                logger.exception("circuit breaker %s: listener %r failed on %s", self.name, listener, event)


_breakers: dict[str, RedisCircuitBreaker] = {}
_breakers_lock = threading.Lock()


def get_breaker(name: str = "kafka-publisher") -> RedisCircuitBreaker:
    """The process-wide breaker called ``name`` (configured from ``PAYFN_BREAKER_*``)."""
    with _breakers_lock:
        breaker = _breakers.get(name)
        if breaker is None:
            breaker = RedisCircuitBreaker(name)
            _breakers[name] = breaker
        return breaker
