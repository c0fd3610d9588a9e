"""Receiving: take from the queue only what is about to go out, refuse bad messages at once, and keep
what waits out of SQS's way without receiving it again and again.

- A message that can never run (not JSON, wrong envelope, unknown task, a host or header not allowed, a
  cost over a tier's limit) is dead-lettered at once with its reason: it never blocks its group.
- A message whose call already succeeded (found after a crash) is deleted, never called again.
- A key with no room for a while has its messages hidden until its next slot (in whole seconds, at most
  SQS's 12 hours): one receive per wait, not one per run (promise 4).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from throttler.core.envelope import Job
from throttler.core.errors import InvalidJob
from throttler.core.protocol import JobSpec
from throttler.core.quotas import QuotaConfig
from throttler.dispatch.inbox import Held, Inbox
from throttler.queue import DeadLetter, JobQueue, QueuedMessage
from throttler.store.base import StateStore

logger = logging.getLogger(__name__)
MAX_VISIBILITY_S = 43_200
# A wait shorter than this is spent holding the message; a longer one, hidden in SQS.
HOLD_MAX_S = 10.0
# A key that can never send at its limits (a limit of 0) is looked at again after this, doubling with
# each receive of the message (at most 12 hours): a few receives a day.
NEVER_RECHECK_S = 300.0


@dataclass
class Refused:
    message: QueuedMessage
    reason: str


class Intake:
    def __init__(self, *, queue: JobQueue, store: StateStore, parse: Callable[[QueuedMessage], Job], inbox: Inbox):
        self.queue = queue
        self.store = store
        self.parse = parse
        self.inbox = inbox
        self.received = 0
        self.refused = 0
        self.done_deleted = 0
        # While set, hides wait here and go out together (`balance` hides a group or two of each of many keys:
        # a request per key cost more than the jobs it shared out)
        self._deferred: list[tuple[str, float]] | None = None

    def accept(
        self,
        messages: Sequence[QueuedMessage],
        now: float,
        visible_until: float,
        config: QuotaConfig,
        known_done: Callable[[list[Held]], set[str]],
    ) -> list[Held]:
        """File received messages; returns the newly held ones (the caller loads their keys' meters)."""
        fresh: list[Held] = []
        refused: list[DeadLetter] = []
        for msg in messages:
            if msg.message_id in self.inbox:
                self.inbox.refresh_receipt(msg, visible_until)
                continue
            self.received += 1
            try:
                job = self.parse(msg)
                max_cost = config.max_cost(job.key)
                if job.cost > max_cost:
                    raise InvalidJob(f"cost {job.cost} exceeds the limit of a tier that applies to it ({max_cost})")
            except InvalidJob as exc:
                logger.warning(
                    "bad message dead-lettered", extra={"message_id": msg.message_id, "group": msg.group, "reason": str(exc)}
                )
                refused.append(DeadLetter(msg, str(exc), 0))
                continue
            spec = JobSpec(job.job_id, msg.group, msg.body, 0.0, 0.0, job.key, job.cost)
            fresh.append(Held(msg, job.job_id, job.key, job.cost, spec.size_bytes() + 40, visible_until, now))
        if refused:
            self.queue.dead_letter(refused)
            self.refused += len(refused)
        # A message received before may belong to a job whose call already succeeded (its run died before
        # deleting it): delete it, never call it again.
        again = [h for h in fresh if h.msg.receive_count > 1]
        done = known_done(again) if again else set()
        for held in fresh:
            if held.job_id in done:
                self.inbox.pending_deletes.append(held.msg.receipt)
                self.done_deleted += 1
            else:
                self.inbox.add(held)
        return [h for h in fresh if h.job_id not in done]

    # ------------------------------------------------------------------ holding and hiding
    def hide_groups(
        self, groups: Sequence[str], until: float | None, now: float, stagger_s: float = 0.0
    ) -> list[tuple[float, str]]:
        """Hide these groups until `until` (None: re-check later, backing off): the head message waits in
        SQS (its whole group with it, FIFO); the rest are released at once (they stay behind it). With
        `stagger_s`, the n-th group comes back n x stagger_s later: when one key's groups wait for its slots,
        each comes back near its own turn instead of all at the first slot (and all but one hidden again).
        Returns (hidden until, receipt) of each group's head: the run may make it visible sooner."""
        changes: list[tuple[str, float]] = []
        heads: list[tuple[float, str]] = []
        for n, group in enumerate(groups):
            held = self.inbox.remove_group(group)
            if not held:
                continue
            head, rest = held[0], held[1:]
            when = until + n * stagger_s if until is not None else None
            seconds = hide_seconds(when, now, head.msg.receive_count)
            changes.append((head.msg.receipt, seconds))
            changes += [(h.msg.receipt, 0.0) for h in rest]
            heads.append((now + seconds, head.msg.receipt))
        if changes:
            if self._deferred is not None:
                self._deferred += changes
            else:
                self.queue.change_visibility(changes)
        return heads

    @contextmanager
    def hides_together(self) -> Iterator[None]:
        """Send the hides made inside in as few requests as SQS allows (10 a request). Nothing inside may
        receive: a group's head and the rest of it are changed in the order `hide_groups` lists them."""
        self._deferred = []
        try:
            yield
        finally:
            changes, self._deferred = self._deferred, None
            if changes:
                self.queue.change_visibility(changes)

    def release_all(self) -> int:
        """Make every held message visible again at once (end of run, a pause, a blocked stage)."""
        held = self.inbox.remove_all()
        if held:
            self.queue.change_visibility([(h.msg.receipt, 0.0) for h in held])
        return len(held)

    def release_groups(self, groups: Sequence[str]) -> None:
        changes = [(h.msg.receipt, 0.0) for g in groups for h in self.inbox.remove_group(g)]
        if changes:
            self.queue.change_visibility(changes)

    def groups_headed_by(self, key: str) -> list[str]:
        return [g for g in self.inbox.groups_of(key) if (head := self.inbox.head(g)) is not None and head.fair_key == key]

    def surplus_groups(self, key: str, share: int) -> list[str]:
        """The key's groups beyond its share of what the run holds (their messages would only wait here)."""
        groups = self.groups_headed_by(key)
        kept, out = 0, []
        for group in groups:
            if kept >= share:
                out.append(group)
            kept += len(self.inbox.groups.get(group, ()))
        return out


def hide_seconds(until: float | None, now: float, receive_count: int) -> float:
    """Whole seconds to hide a message: until `until` (its key's next slot, less the batch lead), or a
    backing-off re-check."""
    if until is None:
        seconds = NEVER_RECHECK_S * 2 ** max(0, min(receive_count, 10) - 1)
    else:
        seconds = until - now
    return float(max(0, min(MAX_VISIBILITY_S, math.ceil(seconds))))

