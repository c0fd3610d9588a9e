"""The state table's contract: what the throttler and the worker keep there, and the rules of each write.

`StateStore` is the throttler's (and the operator's) view; `WorkerRecords` is the worker's, and it can
touch `worker#*` items only, as the worker's IAM role allows (promise 8). Backends: `DynamoStateStore`
/ `DynamoWorkerRecords` (production, injected client) and `MemoryStateStore` (tests, simulation; it
serves both views). One contract suite (tests/contract) runs over every backend. Times are epoch seconds
passed in by the caller; expected outcomes (a lease held by someone else, a usage write that lost a race)
are return values, not exceptions.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

QUOTAS_KEY = "quotas"
STAGE_KEY = "stage"  # the settings the throttler runs with (so an installed CLI needs no serverless.yml)
LAST_GOOD_KEY = "quotas#last-good"
PAUSE_KEY = "pause"
LEASE_KEY = "lease"
USAGE_KEY = "usage"
KEY_USAGE_PREFIX = "usage#key#"
ATTEMPTS_PREFIX = "attempts#"
DONE_PREFIX = "done#"
WORKER_PREFIX = "worker#"
BATCH_PREFIX = "worker#batch#"
THROTTLE_KEY = "worker#throttle"  # the stage-wide signal (a 429, or the operator's pause mirrored)
# Key-scoped 429s (signals_scope=key): one attribute per key in an item of their own, so that one key's 429
# never takes the place of another key's, and however many keys 429 at once the stage's item stays small.
KEY_THROTTLE_KEY = "worker#throttle#keys"
KEY_SIGNAL_PREFIX = "key#"
# A key's signal is forgotten this long after it ended: every batch that watches looks within a second.
KEY_SIGNAL_KEEP_S = 10.0
TTL_ATTRIBUTE = "ttl"
# The batch id of a throttle signal that mirrors an operator's pause (not a 429: no backoff, no learning).
OPERATOR_SIGNAL = "operator"
# One transaction writes the usage item and at most this many key items (DynamoDB allows 100 actions).
MAX_KEYS_PER_COMMIT = 99


@dataclass(frozen=True)
class ThrottleSignal:
    """The latest 429 a worker met: when, what Retry-After said, in which batch, for which key (or None).

    The record is written by workers (the part that talks to the internet), so its readers bound it
    (`bounded`) and a record dated further ahead than THROTTLE_SKEW_S may be replaced by a real 429."""

    at: float
    retry_after_s: float | None
    batch_id: str
    key: str | None = None

    @property
    def ends_at(self) -> float:
        """When its Retry-After ends (its time, without one). Of two stage-wide signals, the record keeps the
        one that ends later: a second 429 with a shorter Retry-After must not shorten the pause."""
        retry = self.retry_after_s
        return self.at + (min(max(0.0, retry), MAX_THROTTLE_S) if retry is not None and math.isfinite(retry) else 0.0)

    def replaces(self, stored: ThrottleSignal, now: float | None = None) -> bool:
        """Whether this signal takes the place of the stored one of its scope (the stage, or its key): the one
        that ends later stays; a record dated implausibly far ahead always gives way."""
        if stored.at > max(self.at, now or self.at) + THROTTLE_SKEW_S:
            return True
        return self.ends_at > stored.ends_at


    def bounded(self, now: float) -> ThrottleSignal:
        """This signal as far as a reader may trust it: dated no later than now + THROTTLE_SKEW_S, and a
        Retry-After of at most MAX_THROTTLE_S (what the API's own Retry-After parsing accepts)."""
        at = min(self.at, now + THROTTLE_SKEW_S) if math.isfinite(self.at) else now
        retry = self.retry_after_s
        if retry is not None:
            retry = min(max(0.0, retry), MAX_THROTTLE_S) if math.isfinite(retry) else MAX_THROTTLE_S
        return ThrottleSignal(at, retry, self.batch_id, self.key)


# How far a worker's clock may run ahead of a reader's; a throttle record dated later is not believed.
THROTTLE_SKEW_S = 5.0
MAX_THROTTLE_S = 86_400.0 + 300.0


def throttle_fields(signal: ThrottleSignal) -> dict[str, Any]:
    """A signal as stored (at the throttle item's top level for the stage, in a key's attribute for a key)."""
    fields: dict[str, Any] = {"at": signal.at, "batch": signal.batch_id, "ends": signal.ends_at}
    if signal.retry_after_s is not None:
        fields["retry_after_s"] = signal.retry_after_s
    return fields


def read_throttle_items(
    stage_item: Mapping[str, Any] | None, keys_item: Mapping[str, Any] | None
) -> tuple[ThrottleSignal | None, dict[str, ThrottleSignal]]:
    """The stage-wide signal and the key-scoped ones (plain values of the two throttle items). A stage item in
    the format before key items (a top-level `key`) holds a key's signal from before an upgrade: not the
    stage's, and not kept as a key's either (the run that met it paused the key from its own results)."""
    stage = None
    if stage_item and stage_item.get("at") is not None and not stage_item.get("key"):
        stage = _stored_signal(stage_item, None)
    keys = {}
    for name, value in (keys_item or {}).items():
        if name.startswith(KEY_SIGNAL_PREFIX) and isinstance(value, Mapping) and value.get("at") is not None:
            key = name[len(KEY_SIGNAL_PREFIX) :]
            keys[key] = _stored_signal(value, key)
    return stage, keys


def signal_fields(signal: ThrottleSignal) -> dict[str, Any]:
    """A signal with its key, as a batch record keeps it."""
    return {**throttle_fields(signal), **({"key": signal.key} if signal.key is not None else {})}


def stored_signal(fields: Mapping[str, Any] | None) -> ThrottleSignal | None:
    """What `signal_fields` wrote (None: nothing, or not a signal)."""
    if not isinstance(fields, Mapping) or fields.get("at") is None:
        return None
    key = fields.get("key")
    return _stored_signal(fields, str(key) if key is not None else None)


def _stored_signal(fields: Mapping[str, Any], key: str | None) -> ThrottleSignal:
    retry = fields.get("retry_after_s")
    return ThrottleSignal(float(fields["at"]), float(retry) if retry is not None else None, str(fields.get("batch", "")), key)


@dataclass(frozen=True)
class LeaseState:
    owner: str
    expires_at: float
    successor: str | None = None
    successor_until: float | None = None
    runs_until: float | None = None  # the holder's deadline: no successor is needed long before it


@dataclass(frozen=True)
class Control:
    """What a run re-reads every couple of seconds, in one request."""

    quotas: dict[str, Any] | None
    last_good: dict[str, Any] | None
    pause_until: float | None
    pause_reason: str | None
    throttle: ThrottleSignal | None = None  # the stage-wide signal (a 429, or the operator's pause mirrored)
    lease: LeaseState | None = None
    stage_settings: dict[str, Any] | None = None  # default_quotas, allowed_hosts, max_message_bytes, default_latency
    key_throttles: Mapping[str, ThrottleSignal] = field(default_factory=dict)  # key-scoped 429s, by key


@dataclass(frozen=True)
class OpenBatch:
    """A batch reserved and sent, not yet settled: whose it is, and until when its worker may run."""

    owner: str
    until: float
    last: float | None = None  # its last call's slot: later batches start after it (no 429 of theirs can come first)


@dataclass(frozen=True)
class UsageRecord:
    version: int
    stage_meter: str | None  # pacing.Meter JSON
    open_batches: Mapping[str, OpenBatch] = field(default_factory=dict)
    done_until: float | None = None  # until then, done#<job> records may exist (written after a crash)
    keys: Mapping[str, Any] = field(default_factory=dict)  # the busiest keys' backlog: {key: {"held", "hidden", "seen_at"}}


@dataclass(frozen=True)
class KeyMeterWrite:
    meter_json: str
    ttl_at: float  # forget the key's state once its longest window has passed


@dataclass(frozen=True)
class BatchRecord:
    batch_id: str
    run_id: str
    claimed_at: float
    succeeded: frozenset[str] = frozenset()
    called: frozenset[str] = frozenset()  # attempted and not succeeded (or not known yet)
    final: bool = False
    throttled_at: float | None = None
    met_429: ThrottleSignal | None = None  # the 429 of its own calls that ends last, as published (or tried)


class StateStore(ABC):
    """The throttler's and operator's view of the state table."""

    # ------------------------------------------------------------------ control
    @abstractmethod
    def read_control(self) -> Control:
        """Quota item, last good quota item, pause, the latest 429 and the lease, in one read."""

    @abstractmethod
    def put_quotas(self, item: Mapping[str, Any]) -> None:
        """Replace the quota item (the CLI validates first)."""

    @abstractmethod
    def put_last_good(self, item: Mapping[str, Any]) -> None:
        """Remember a quota item that validated, for when a later edit does not."""

    @abstractmethod
    def put_stage_settings(self, settings: Mapping[str, Any]) -> None:
        """Record the settings the throttler runs with (its stage defaults and allow-list)."""

    @abstractmethod
    def set_pause(self, until: float, reason: str, extend_only: bool = True) -> None:
        """Pause dispatch until `until`; with extend_only an earlier deadline never shortens it."""

    @abstractmethod
    def clear_pause(self) -> None:
        """Resume at once: lift the operator's pause and forget the latest 429."""

    @abstractmethod
    def publish_throttle(self, signal: ThrottleSignal, now: float | None = None) -> None:
        """Write the shared throttle record the workers watch (the throttler mirrors an operator's pause there)."""

    @abstractmethod
    def forget_key_throttles(self, signals: Sequence[ThrottleSignal]) -> bool:
        """Remove these key-scoped signals from the shared record if each is still the one stored (else none:
        False)."""

    # ------------------------------------------------------------------ lease and hand-over
    @abstractmethod
    def acquire_lease(self, owner: str, now: float, ttl_s: float, runs_until: float | None = None) -> LeaseState:
        """Take the stage's run lease if it is free, expired or already ours (noting until when our run may
        go on); returns the lease as it now stands (`owner == owner` when taken)."""

    @abstractmethod
    def request_handover(self, owner: str, holder: str, now: float, wait_s: float) -> bool:
        """Ask `holder` to hand the lease over to `owner`: set the successor if there is none (or it gave
        up, its `successor_until` passed). False if the holder changed or another successor waits."""

    @abstractmethod
    def hand_over(self, owner: str, successor: str, now: float, ttl_s: float) -> bool:
        """Give the lease to the waiting successor (only if we hold it and it is still that successor)."""

    @abstractmethod
    def renew_lease(self, owner: str, now: float, ttl_s: float, runs_until: float | None = None) -> bool:
        """Extend our lease; False if we no longer hold it."""

    @abstractmethod
    def release_lease(self, owner: str) -> None:
        """Give the lease back if `owner` still holds it."""

    # ------------------------------------------------------------------ usage (reservations)
    @abstractmethod
    def load_usage(self) -> UsageRecord:
        """The stage's meter, open batches and version (0 when nothing was ever written)."""

    @abstractmethod
    def load_key_meters(self, keys: Sequence[str]) -> dict[str, str | None]:
        """Each key's meter JSON (None for a key with no state), strongly consistent."""

    @abstractmethod
    def commit_usage(
        self,
        expected_version: int,
        stage_meter: str | None,
        key_meters: Mapping[str, KeyMeterWrite],
        open_add: Mapping[str, OpenBatch],
        open_remove: Iterable[str],
        done_until: float | None = None,
        keys_summary: Mapping[str, Any] | None = None,
    ) -> bool:
        """Atomically: if the stored version is `expected_version`, write version+1, the stage meter (None:
        unchanged), at most MAX_KEYS_PER_COMMIT key meters, the open-batch changes and (when given) the
        busiest keys' backlog. False if another
        writer came first (nothing written). Every writer of key meters bumps the version, so a run whose
        writes keep succeeding knows that nobody else changed any meter it holds."""

    @abstractmethod
    def close_open_batches(self, batch_ids: Iterable[str]) -> None:
        """Remove settled batches from the open list without touching the version (a run that handed
        over settles its last batches while its successor reserves)."""

    # ------------------------------------------------------------------ attempts and successes
    @abstractmethod
    def add_attempt(self, job_id: str, ttl_at: float) -> int:
        """Count one real attempt of a job; returns the new total."""

    @abstractmethod
    def get_attempts(self, job_ids: Sequence[str]) -> dict[str, int]:
        """Real attempts made so far, per job (0 if none)."""

    @abstractmethod
    def reset_attempts(self, job_ids: Sequence[str]) -> None:
        """Forget the attempts of these jobs (a redriven job starts afresh)."""

    @abstractmethod
    def mark_done(self, job_ids: Sequence[str], ttl_at: float) -> None:
        """Record that these jobs succeeded (found in a crashed run's batches), so they are never called again."""

    @abstractmethod
    def done_ids(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these jobs have a success record."""

    @abstractmethod
    def read_batches(self, batch_ids: Sequence[str]) -> dict[str, BatchRecord]:
        """The workers' records of these batches (absent: never claimed, or expired)."""


class WorkerRecords(ABC):
    """The worker's view: its own `worker#*` items only."""

    @abstractmethod
    def claim(self, batch_id: str, run_id: str, now: float, ttl_at: float) -> bool:
        """Claim a batch before any call; False if it was claimed already (a second delivery of one invoke)."""

    @abstractmethod
    def record(
        self,
        batch_id: str,
        succeeded: Iterable[str],
        called: Iterable[str],
        final: bool,
        throttled_at: float | None = None,
        met_429: ThrottleSignal | None = None,
    ) -> None:
        """Add to the batch's succeeded and called job ids (and mark it final when the batch is over). `met_429`:
        the 429 the batch met, in its record too, for a run that never gets the worker's answer (and whose
        worker may not have published it)."""

    @abstractmethod
    def throttle(self, signal: ThrottleSignal, now: float | None = None) -> None:
        """Publish a 429 to every worker and run, in its scope (the stage, or its key): of two signals of one
        scope the one that ends later stays, unless the stored one is dated more than THROTTLE_SKEW_S ahead of
        the writer's clock `now` (default: the signal's time): then this one replaces it."""

    @abstractmethod
    def watch(self, batch_ids: Sequence[str]) -> tuple[list[ThrottleSignal], set[str]]:
        """The stored 429s (the stage's, then each key's), and which of these batches are final, in one read."""
