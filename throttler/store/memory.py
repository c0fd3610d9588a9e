"""The state table in memory, with the same rules as DynamoDB (tests, simulation, benchmark). Thread-safe."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from throttler.core.quotas import plain_item
from throttler.store.base import (
    ATTEMPTS_PREFIX,
    BATCH_PREFIX,
    DONE_PREFIX,
    KEY_SIGNAL_PREFIX,
    KEY_THROTTLE_KEY,
    KEY_USAGE_PREFIX,
    LAST_GOOD_KEY,
    LEASE_KEY,
    MAX_KEYS_PER_COMMIT,
    PAUSE_KEY,
    QUOTAS_KEY,
    STAGE_KEY,
    THROTTLE_KEY,
    TTL_ATTRIBUTE,
    USAGE_KEY,
    BatchRecord,
    Control,
    KeyMeterWrite,
    LeaseState,
    OpenBatch,
    StateStore,
    ThrottleSignal,
    UsageRecord,
    WorkerRecords,
    read_throttle_items,
    signal_fields,
    stored_signal,
    throttle_fields,
)


class _MemoryControl:
    """Control items and the lease (the first half of MemoryStateStore)."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ control
    def read_control(self) -> Control:
        with self._lock:
            pause = self.items.get(PAUSE_KEY)
            last_good = self.items.get(LAST_GOOD_KEY)
            quotas = self.items.get(QUOTAS_KEY)
            stage_signal, key_signals = read_throttle_items(self.items.get(THROTTLE_KEY), self.items.get(KEY_THROTTLE_KEY))
            return Control(
                copy.deepcopy({k: v for k, v in quotas.items() if k != "pk"}) if quotas else None,
                json.loads(last_good["item"]) if last_good else None,
                float(pause["until"]) if pause else None,
                pause.get("reason") if pause else None,
                stage_signal,
                _lease(self.items.get(LEASE_KEY)),
                json.loads(self.items[STAGE_KEY]["settings"]) if STAGE_KEY in self.items else None,
                key_signals,
            )

    def put_quotas(self, item: Mapping[str, Any]) -> None:
        with self._lock:
            self.items[QUOTAS_KEY] = {**copy.deepcopy(dict(item)), "pk": QUOTAS_KEY}

    def put_last_good(self, item: Mapping[str, Any]) -> None:
        with self._lock:
            self.items[LAST_GOOD_KEY] = {"pk": LAST_GOOD_KEY, "item": json.dumps(plain_item(item), sort_keys=True, default=str)}

    def put_stage_settings(self, settings: Mapping[str, Any]) -> None:
        with self._lock:
            self.items[STAGE_KEY] = {"pk": STAGE_KEY, "settings": json.dumps(dict(settings), sort_keys=True, default=str)}

    def set_pause(self, until: float, reason: str, extend_only: bool = True) -> None:
        with self._lock:
            current = self.items.get(PAUSE_KEY)
            if extend_only and current and float(current["until"]) >= until:
                return
            self.items[PAUSE_KEY] = {"pk": PAUSE_KEY, "until": until, "reason": reason}

    def clear_pause(self) -> None:
        with self._lock:
            self.items.pop(PAUSE_KEY, None)
            self.items.pop(THROTTLE_KEY, None)
            self.items.pop(KEY_THROTTLE_KEY, None)

    def publish_throttle(self, signal: ThrottleSignal, now: float | None = None) -> None:
        with self._lock:
            stage, keys = read_throttle_items(self.items.get(THROTTLE_KEY), self.items.get(KEY_THROTTLE_KEY))
            current = stage if signal.key is None else keys.get(signal.key)
            if current is not None and not signal.replaces(current, now):
                return
            if signal.key is None:
                self.items[THROTTLE_KEY] = {"pk": THROTTLE_KEY, **throttle_fields(signal)}
            else:
                item = self.items.setdefault(KEY_THROTTLE_KEY, {"pk": KEY_THROTTLE_KEY})
                item[KEY_SIGNAL_PREFIX + signal.key] = throttle_fields(signal)

    def forget_key_throttles(self, signals: Sequence[ThrottleSignal]) -> bool:
        with self._lock:
            _, keys = read_throttle_items(None, self.items.get(KEY_THROTTLE_KEY))
            if not all(s.key is not None and keys.get(s.key) is not None and keys[s.key].at == s.at for s in signals):
                return False
            for s in signals:
                self.items[KEY_THROTTLE_KEY].pop(KEY_SIGNAL_PREFIX + str(s.key), None)
            return True

    # ------------------------------------------------------------------ lease
    def acquire_lease(self, owner: str, now: float, ttl_s: float, runs_until: float | None = None) -> LeaseState:
        with self._lock:
            lease = self.items.get(LEASE_KEY)
            if lease and lease["owner"] != owner and float(lease["expires_at"]) > now:
                state = _lease(lease)
                assert state is not None
                return state
            self.items[LEASE_KEY] = {"pk": LEASE_KEY, "owner": owner, "expires_at": now + ttl_s}
            if runs_until is not None:
                self.items[LEASE_KEY]["runs_until"] = runs_until
            return LeaseState(owner, now + ttl_s, runs_until=runs_until)

    def request_handover(self, owner: str, holder: str, now: float, wait_s: float) -> bool:
        with self._lock:
            lease = self.items.get(LEASE_KEY)
            if not lease or lease["owner"] != holder:
                return False
            successor, until = lease.get("successor"), lease.get("successor_until")
            if successor not in (None, owner) and until is not None and float(until) > now:
                return False
            lease["successor"], lease["successor_until"] = owner, now + wait_s
            return True

    def hand_over(self, owner: str, successor: str, now: float, ttl_s: float) -> bool:
        with self._lock:
            lease = self.items.get(LEASE_KEY)
            if not lease or lease["owner"] != owner or lease.get("successor") != successor:
                return False
            self.items[LEASE_KEY] = {"pk": LEASE_KEY, "owner": successor, "expires_at": now + ttl_s}
            return True

    def renew_lease(self, owner: str, now: float, ttl_s: float, runs_until: float | None = None) -> bool:
        with self._lock:
            lease = self.items.get(LEASE_KEY)
            if not lease or lease["owner"] != owner:
                return False
            lease["expires_at"] = now + ttl_s
            if runs_until is not None:
                lease["runs_until"] = runs_until
            return True

    def release_lease(self, owner: str) -> None:
        with self._lock:
            if self.items.get(LEASE_KEY, {}).get("owner") == owner:
                del self.items[LEASE_KEY]


class MemoryStateStore(_MemoryControl, StateStore, WorkerRecords):
    """Items by partition key, as plain dicts. Serves both the throttler's and the worker's views."""

    # ------------------------------------------------------------------ usage
    def load_usage(self) -> UsageRecord:
        with self._lock:
            usage = self.items.get(USAGE_KEY)
            if not usage:
                return UsageRecord(0, None)
            return UsageRecord(
                int(usage["version"]),
                usage.get("meter"),
                {b: OpenBatch(v["owner"], float(v["until"]), v.get("last")) for b, v in usage.get("open", {}).items()},
                usage.get("done_until"),
                copy.deepcopy(usage.get("keys", {})),
            )

    def load_key_meters(self, keys: Sequence[str]) -> dict[str, str | None]:
        with self._lock:
            found = {}
            for key in keys:
                item = self.items.get(KEY_USAGE_PREFIX + key)
                found[key] = item.get("meter") if item else None
            return found

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
        if len(key_meters) > MAX_KEYS_PER_COMMIT:
            raise ValueError(f"at most {MAX_KEYS_PER_COMMIT} key meters per commit")
        with self._lock:
            usage = self.items.get(USAGE_KEY)
            current = int(usage["version"]) if usage else 0
            if current != expected_version:
                return False
            usage = usage or {"pk": USAGE_KEY, "open": {}}
            usage["version"] = expected_version + 1
            if stage_meter is not None:
                usage["meter"] = stage_meter
            opened = usage.setdefault("open", {})
            for batch_id in open_remove:
                opened.pop(batch_id, None)
            for batch_id, batch in open_add.items():
                opened[batch_id] = {"owner": batch.owner, "until": batch.until, "last": batch.last}
            if done_until is not None:
                usage["done_until"] = max(done_until, float(usage.get("done_until") or 0))
            if keys_summary is not None:
                usage["keys"] = copy.deepcopy(dict(keys_summary))
            self.items[USAGE_KEY] = usage
            for key, write in key_meters.items():
                self.items[KEY_USAGE_PREFIX + key] = {
                    "pk": KEY_USAGE_PREFIX + key,
                    "meter": write.meter_json,
                    TTL_ATTRIBUTE: write.ttl_at,
                }
            return True

    def close_open_batches(self, batch_ids: Iterable[str]) -> None:
        with self._lock:
            usage = self.items.get(USAGE_KEY)
            if usage:
                for batch_id in batch_ids:
                    usage.get("open", {}).pop(batch_id, None)

    # ------------------------------------------------------------------ attempts and successes
    def add_attempt(self, job_id: str, ttl_at: float) -> int:
        with self._lock:
            item = self.items.setdefault(ATTEMPTS_PREFIX + job_id, {"pk": ATTEMPTS_PREFIX + job_id, "count": 0})
            item["count"] += 1
            item[TTL_ATTRIBUTE] = ttl_at
            return int(item["count"])

    def get_attempts(self, job_ids: Sequence[str]) -> dict[str, int]:
        with self._lock:
            return {j: int(self.items.get(ATTEMPTS_PREFIX + j, {}).get("count", 0)) for j in job_ids}

    def reset_attempts(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                self.items.pop(ATTEMPTS_PREFIX + job_id, None)

    def mark_done(self, job_ids: Sequence[str], ttl_at: float) -> None:
        with self._lock:
            for job_id in job_ids:
                self.items[DONE_PREFIX + job_id] = {"pk": DONE_PREFIX + job_id, TTL_ATTRIBUTE: ttl_at}

    def done_ids(self, job_ids: Sequence[str]) -> set[str]:
        with self._lock:
            return {j for j in job_ids if DONE_PREFIX + j in self.items}

    def read_batches(self, batch_ids: Sequence[str]) -> dict[str, BatchRecord]:
        with self._lock:
            return {b: _batch(self.items[BATCH_PREFIX + b]) for b in batch_ids if BATCH_PREFIX + b in self.items}

    # ------------------------------------------------------------------ the worker's records
    def claim(self, batch_id: str, run_id: str, now: float, ttl_at: float) -> bool:
        with self._lock:
            key = BATCH_PREFIX + batch_id
            if key in self.items:
                return False
            self.items[key] = {
                "pk": key,
                "run": run_id,
                "claimed_at": now,
                "ok": set(),
                "called": set(),
                "final": False,
                TTL_ATTRIBUTE: ttl_at,
            }
            return True

    def record(
        self,
        batch_id: str,
        succeeded: Iterable[str],
        called: Iterable[str],
        final: bool,
        throttled_at: float | None = None,
        met_429: ThrottleSignal | None = None,
    ) -> None:
        with self._lock:
            item = self.items.setdefault(
                BATCH_PREFIX + batch_id,
                {"pk": BATCH_PREFIX + batch_id, "run": "", "claimed_at": 0.0, "ok": set(), "called": set(), "final": False},
            )
            item["ok"] |= set(succeeded)
            item["called"] |= set(called)
            item["final"] = item["final"] or final
            if throttled_at is not None:
                item["throttled_at"] = throttled_at
            if met_429 is not None:
                item["met_429"] = signal_fields(met_429)

    def throttle(self, signal: ThrottleSignal, now: float | None = None) -> None:
        self.publish_throttle(signal, now)

    def watch(self, batch_ids: Sequence[str]) -> tuple[list[ThrottleSignal], set[str]]:
        with self._lock:
            final = {b for b in batch_ids if self.items.get(BATCH_PREFIX + b, {}).get("final")}
            stage, keys = read_throttle_items(self.items.get(THROTTLE_KEY), self.items.get(KEY_THROTTLE_KEY))
            return [*([stage] if stage else []), *keys.values()], final


def _lease(item: Mapping[str, Any] | None) -> LeaseState | None:
    if not item:
        return None
    until, runs_until = item.get("successor_until"), item.get("runs_until")
    return LeaseState(
        str(item["owner"]),
        float(item["expires_at"]),
        item.get("successor"),
        float(until) if until is not None else None,
        float(runs_until) if runs_until is not None else None,
    )


def _batch(item: Mapping[str, Any]) -> BatchRecord:
    throttled = item.get("throttled_at")
    return BatchRecord(
        str(item["pk"])[len(BATCH_PREFIX) :],
        str(item.get("run", "")),
        float(item.get("claimed_at", 0.0)),
        frozenset(item.get("ok", ())),
        frozenset(item.get("called", ())),
        bool(item.get("final")),
        float(throttled) if throttled is not None else None,
        stored_signal(item.get("met_429")),
    )
