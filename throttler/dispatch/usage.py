"""The run's copy of the reservations: the stage's meter, the keys' meters, open batches, and the commit.

Every reservation is one conditional write of the usage item's version (with the keys' meters in the
same transaction). A run whose writes keep succeeding knows nobody else changed any meter it holds;
when one fails, it reloads everything and plans again (two overlapping runs can never both reserve
the same room).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from throttler.core.pacing import Meter
from throttler.store.base import MAX_KEYS_PER_COMMIT, KeyMeterWrite, OpenBatch, StateStore, UsageRecord

logger = logging.getLogger(__name__)
# A key's state is kept this long after its longest window (then DynamoDB's TTL forgets it).
KEY_STATE_GRACE_S = 3600.0


@dataclass
class UsageBook:
    store: StateStore
    owner: str
    version: int = 0
    stage: Meter = field(default_factory=Meter)
    keys: dict[str, Meter] = field(default_factory=dict)
    mine: dict[str, OpenBatch] = field(default_factory=dict)  # our batches, until they settle
    foreign: dict[str, OpenBatch] = field(default_factory=dict)  # other runs' batches still listed as open
    to_close: set[str] = field(default_factory=set)  # settled: remove from the open list at the next commit
    done_until: float | None = None
    conflicts: int = 0
    commits: int = 0
    key_window_s: dict[str, float] = field(default_factory=dict)  # longest window per key (for its TTL)
    keys_seen: dict[str, Any] = field(default_factory=dict)  # the busiest keys' backlog, as last written
    known_done: set[str] = field(default_factory=set)  # jobs that succeeded in other runs' batches
    foreign_read: set[str] = field(default_factory=set)  # other runs' batches whose final record we read

    def load(self) -> None:
        """Everything from the state table (at start, and after a lost race: every meter held may be stale)."""
        record: UsageRecord = self.store.load_usage()
        self.version = record.version
        self.stage = Meter.from_json(record.stage_meter)
        held = list(self.keys)
        self.keys.clear()
        self.load_keys(held)
        self.foreign = {b: o for b, o in record.open_batches.items() if o.owner != self.owner}
        self.mine = {b: o for b, o in record.open_batches.items() if o.owner == self.owner}
        self.done_until = record.done_until
        self.keys_seen = dict(record.keys)

    def key_meter(self, key: str) -> Meter:
        """A key's meter (the run loads keys in batches as their messages arrive; a miss reads it now)."""
        meter = self.keys.get(key)
        if meter is None:
            self.load_keys([key])
            meter = self.keys[key]
        return meter

    def load_keys(self, keys: Iterable[str]) -> None:
        missing = [k for k in dict.fromkeys(keys) if k not in self.keys]
        for start in range(0, len(missing), 100):
            chunk = missing[start : start + 100]
            for key, text in self.store.load_key_meters(chunk).items():
                self.keys[key] = Meter.from_json(text)

    def commit(
        self, now: float, open_add: dict[str, OpenBatch] | None = None, keys_summary: dict[str, Any] | None = None
    ) -> bool:
        """Write every change since the last commit; False (and everything reloaded) on a lost race."""
        dirty_keys = [k for k, m in self.keys.items() if m.dirty]
        chunks: list[Sequence[str]] = [
            dirty_keys[i : i + MAX_KEYS_PER_COMMIT] for i in range(0, len(dirty_keys), MAX_KEYS_PER_COMMIT)
        ] or [[]]
        opened = dict(open_add or {})
        closing = set(self.to_close) - set(opened)
        for n, chunk in enumerate(chunks):
            writes = {
                k: KeyMeterWrite(self.keys[k].to_json(), now + self.key_window_s.get(k, 86400.0) + KEY_STATE_GRACE_S)
                for k in chunk
            }
            ok = self.store.commit_usage(
                self.version,
                self.stage.to_json() if n == 0 else None,
                writes,
                opened if n == 0 else {},
                closing if n == 0 else (),
                self.done_until if n == 0 else None,
                keys_summary if n == 0 else None,
            )
            if not ok:
                self.conflicts += 1
                logger.warning("usage changed under us, reloading", extra={"version": self.version})
                self.load()
                return False
            self.version += 1
            for key in chunk:
                self.keys[key].dirty = False
        self.stage.dirty = False
        self.commits += 1
        self.mine.update(opened)
        for batch_id in closing:
            self.mine.pop(batch_id, None)
            self.foreign.pop(batch_id, None)
        self.to_close -= closing
        return True

    def settled(self, batch_id: str) -> None:
        self.to_close.add(batch_id)

    def foreign_last(self) -> float:
        """The last slot of other runs' open batches: this run's batches come after it, so that every batch's
        calls follow those of the batches sent before it (a later batch's 429 cannot stop an earlier one's)."""
        return max((o.last for o in self.foreign.values() if o.last is not None), default=-math.inf)

    def watch_list(self, now: float, unsettled: Iterable[str]) -> tuple[str, ...]:
        """Batches a new batch must watch: ours still unsettled, and other runs' still running."""
        foreign = [b for b, o in self.foreign.items() if o.until > now]
        return tuple(dict.fromkeys([*unsettled, *foreign]))

    def unread_foreign(self) -> list[str]:
        """Other runs' open batches whose final record we have not read yet."""
        return [b for b in self.foreign if b not in self.foreign_read]

    def stale_foreign(self, now: float) -> list[str]:
        """Other runs' batches whose workers must have finished (their run died before settling them). Their
        messages can come back as soon as this (visibility lasts past `until`): recover them first."""
        return [b for b, o in self.foreign.items() if o.until < now]

    def drop_settled_elsewhere(self, batch_ids: Sequence[str]) -> list[str]:
        """Of these other runs' batches, those the usage item still lists as open. The rest their own run
        settled (a run that hands over settles its last batches after we loaded the item): forgotten here."""
        listed = self.store.load_usage().open_batches
        for batch_id in batch_ids:
            if batch_id not in listed:
                self.foreign.pop(batch_id, None)
        return [b for b in batch_ids if b in listed]

    def forget_foreign(self, batch_ids: Sequence[str]) -> None:
        self.to_close |= set(batch_ids)
