"""What is in force right now: the quota configuration and the pauses (the one resolver of each).

The run, the CLI's `quota show` and `status`, and the dashboard all call these, so they can never
disagree about which configuration applies or whether the stage is paused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from throttler.core.errors import ConfigError
from throttler.core.quotas import QuotaConfig, defaults_item, parse_quota_item, plain_item
from throttler.store.base import KEY_SIGNAL_KEEP_S, OPERATOR_SIGNAL, Control, ThrottleSignal

STATE_TABLE = "state table"
STAGE_DEFAULT = "stage default"
LAST_GOOD = "last good configuration"
# A 429 without a usable Retry-After pauses for BACKOFF_BASE_S, doubling with each 429 in a row, at most
# BACKOFF_MAX_S (an auto tier's 429 at most one window of that tier: SPEC "The API's own signals").
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 300.0
# After this many 429s in a row across runs (no success between), every pause is lengthened to a backoff that
# doubles up to STORM_MAX_S, whatever Retry-After says: each pause costs a waiting job a receive, and SQS moves a
# message to the DLQ at its 1,000th. At one receive per 30 minutes, a job waits out 14 days (SQS's longest
# retention) of uninterrupted 429s in 672 receives.
STORM_AFTER = 4
STORM_MAX_S = 1800.0
# An operator's pause without an end is stored as this far ahead ("until resume").
INDEFINITE_PAUSE_S = 10 * 365 * 86400.0
# A key's auto-tier window (for a 429 without Retry-After), by key.
KeyWindow = Callable[[str], float | None] | None


@dataclass(frozen=True)
class QuotaInForce:
    config: QuotaConfig | None
    source: str  # where `config` comes from (STATE_TABLE, STAGE_DEFAULT, LAST_GOOD), or "none"
    error: str | None = None  # why the stored item (or the stage default) is not usable
    item: dict[str, Any] | None = None  # the stored item as plain data (what an operator sees)

    @property
    def invalid(self) -> bool:
        """An operator's item exists but does not validate (the throttler alarms on this)."""
        return self.error is not None and self.item is not None


def resolve_quotas(control: Control, stage_defaults: str) -> QuotaInForce:
    """The stored item if valid; else the stage's defaults when there is no item; else the last good one."""
    item = plain_item(control.quotas) if control.quotas is not None else None
    try:
        if item is not None:
            return QuotaInForce(parse_quota_item(item), STATE_TABLE, None, item)
        default = defaults_item(stage_defaults)
        if default is None:
            raise ConfigError("no quota item and no stage default quotas: nothing is dispatched")
        return QuotaInForce(parse_quota_item(default), STAGE_DEFAULT, None, None)
    except ConfigError as exc:
        error = str(exc)
    if control.last_good is not None:
        try:
            return QuotaInForce(parse_quota_item(control.last_good), LAST_GOOD, error, item)
        except ConfigError:
            pass
    return QuotaInForce(None, "none", error, item)


# A worker publishes a 429 at its arrival, and the run dates the one in its answer from the call's start and
# duration: the same 429 may differ by this much.
PUBLISHED_SLACK_S = 0.05


@dataclass(frozen=True)
class _Read:
    signal: ThrottleSignal  # as read (bounded)
    until: float  # the pause it made
    forgettable_at: float  # from then on a run may remove it from the record (a key's, ended); never, the stage's


@dataclass
class Pauses:
    """The operator's pause, the API's (a 429 anywhere in the stage) and per-key ones (key-scoped signals)."""

    operator_until: float | None = None
    operator_reason: str = ""
    api_until: float | None = None
    api_reason: str = ""
    consecutive_429: int = 0
    last_signal_at: float = 0.0
    keys: dict[str, float] = field(default_factory=dict)
    # What the shared record held at the last read, by scope (None: the stage; else a key).
    read: dict[str | None, _Read] = field(default_factory=dict)
    # A batch whose answer was lost was stopped by another batch's 429 (then), which is in the shared record only:
    # read it before the next batch (`check_unread_429`).
    unread_429: float | None = None
    learnt: list[ThrottleSignal] = field(default_factory=list)  # from workers' answers and records, not yet compared

    def from_control(
        self, control: Control, now: float, auto_window_s: float | None, streak: int = 0, key_window_s: KeyWindow = None
    ) -> None:
        self.operator_until = control.pause_until if control.pause_until is not None and control.pause_until > now else None
        self.operator_reason = control.pause_reason or ""
        stored: dict[str | None, ThrottleSignal] = {}
        stored.update(control.key_throttles)
        if control.throttle is not None and control.throttle.batch_id != OPERATOR_SIGNAL:
            stored[None] = control.throttle
        if not stored:
            if any(r.until > now and r.forgettable_at > now for r in self.read.values()):
                # A signal still in force left the record, where nothing but `resume` could remove it: the run
                # forgets the 429s too. Not otherwise: a 429 the run learnt from a worker's answer or record whose
                # worker could not publish it (the state table refused three times) stands until its end (review
                # rev8: calls 1.3 s after it), and so does one whose signal ended and was forgotten (review rev9).
                self.api_until = None
                self.keys.clear()
                self.learnt.clear()  # lifted too: never written back (review rev10: the run re-created the pause)
            self.read.clear()
            return
        for scope in [s for s in self.read if s not in stored]:  # ended and forgotten (a key's), or replaced
            del self.read[scope]
        for scope, entry in stored.items():
            signal = entry.bounded(now)
            seen = self.read.get(scope)
            if seen is not None and seen.signal == signal:
                continue  # read before: applied once
            # Applied whenever the entry changed, not only when dated later: a worker's clock may run ahead (up to
            # THROTTLE_SKEW_S), and a real 429 dated earlier then takes its place (review rev9).
            window = auto_window_s if scope is None or key_window_s is None else key_window_s(scope)
            until = self.on_429(signal, window, streak)
            forgettable_at = math.inf if scope is None else signal.ends_at + KEY_SIGNAL_KEEP_S
            self.read[scope] = _Read(signal, until, forgettable_at)

    def from_worker(self, signal: ThrottleSignal, auto_window_s: float | None, streak: int = 0) -> float:
        """A 429 from a worker's answer (or its batch's record): paused from at once; compared with the shared
        record at the next read (`unpublished`)."""
        self.learnt.append(signal)
        return self.on_429(signal, auto_window_s, streak)

    def unpublished(self) -> list[ThrottleSignal]:
        """After a read: the 429s learnt from workers that the shared record lacks (their workers could not
        publish them, the state table refused three times). The run writes them there, so that a successor, and
        the workers of long batches, pause for them too (review rev9: the next run called within the
        Retry-After)."""
        learnt, self.learnt = self.learnt, []
        out = []
        for signal in learnt:
            seen = self.read.get(signal.key)
            if seen is None or seen.signal.ends_at < signal.ends_at - PUBLISHED_SLACK_S:
                out.append(signal)
        return out

    def check_unread_429(self, auto_window_s: float | None, streak: int = 0) -> None:
        """After the read that `unread_429` asked for: if the shared record had no signal from then on (its worker
        could not publish it), back off from the batch's 429 as from one without Retry-After, the whole stage."""
        at, self.unread_429 = self.unread_429, None
        if at is None:
            return
        if max((r.signal.at for r in self.read.values()), default=-math.inf) < at:
            self.on_429(ThrottleSignal(at, None, ""), auto_window_s, streak)

    def on_429(self, signal: ThrottleSignal, auto_window_s: float | None, streak: int = 0) -> float:
        """A 429 met at `signal.at`: pause until its Retry-After, or back off; returns the pause's end.
        `streak`: 429s in a row across runs (the stage's record); from STORM_AFTER of them on, the pause is
        at least the backoff, whatever Retry-After says."""
        if signal.at > self.last_signal_at:
            self.consecutive_429 += 1
            self.last_signal_at = signal.at
        in_a_row = streak
        if signal.retry_after_s is not None:
            delay = signal.retry_after_s
        else:
            delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (max(self.consecutive_429, streak) - 1))
            if auto_window_s is not None:
                delay = min(delay, auto_window_s)
        if in_a_row >= STORM_AFTER:
            delay = max(delay, min(STORM_MAX_S, BACKOFF_BASE_S * 2 ** (in_a_row - STORM_AFTER)))
        until = signal.at + max(0.0, delay)
        if signal.key is not None:
            self.keys[signal.key] = max(self.keys.get(signal.key, 0.0), until)
        elif self.api_until is None or until > self.api_until:
            self.api_until = until
            self.api_reason = "429 from the API" + (
                f" (Retry-After {signal.retry_after_s:g} s)" if signal.retry_after_s is not None else ""
            ) + (f"; {in_a_row} in a row: backing off" if in_a_row >= STORM_AFTER else "")
        return until

    def on_success(self) -> None:
        self.consecutive_429 = 0

    def until(self, now: float) -> float | None:
        """When dispatch of the whole stage may go on (None: not paused)."""
        ends = [t for t in (self.operator_until, self.api_until) if t is not None and t > now]
        return max(ends) if ends else None

    def reason(self, now: float) -> str:
        if self.operator_until is not None and self.operator_until > now:
            return f"operator: {self.operator_reason}" if self.operator_reason else "operator"
        if self.api_until is not None and self.api_until > now:
            return self.api_reason
        return ""

    def key_paused(self, now: float) -> dict[str, float]:
        return {k: t for k, t in self.keys.items() if t > now}
