"""The messages a run holds: per group in queue order, per key for fair sharing, with their receipts.

The inbox only keeps books; the run does the SQS calls (receive, delete, change visibility) and tells the
inbox what it did. A held message is invisible to everyone else until `visible_until`; its whole group
is blocked in SQS meanwhile (FIFO), which is what keeps a group's order while the run decides.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from throttler.core.fairness import fair_key
from throttler.queue import QueuedMessage


@dataclass
class Held:
    msg: QueuedMessage
    job_id: str
    key: str | None
    cost: int
    spec_bytes: int  # what this job adds to a batch request, in the bytes Lambda counts
    visible_until: float
    received_at: float
    # Read a dozen times per job while it is planned, sent and settled: kept, not derived each time.
    group: str = field(init=False)  # the message's group (a message received again keeps its group)
    fair_key: str = field(init=False)  # the key it is shared fairly under (jobs without a key: NO_KEY)

    def __post_init__(self) -> None:
        self.group = self.msg.group
        self.fair_key = fair_key(self.key)


@dataclass
class Inbox:
    groups: OrderedDict[str, deque[Held]] = field(default_factory=OrderedDict)
    # key -> its groups with held messages, in round-robin order (the next to serve first)
    by_key: dict[str, OrderedDict[str, None]] = field(default_factory=dict)
    # key -> those of its groups served since they came: a key that takes turns through SQS hides them again
    served: dict[str, set[str]] = field(default_factory=dict)
    by_message: dict[str, Held] = field(default_factory=dict)
    group_keys: dict[str, set[str]] = field(default_factory=dict)
    pending_deletes: list[str] = field(default_factory=list)
    deletes_sent: int = 0  # receipts taken from pending_deletes so far (oldest first)
    succeeded_by_receipt: dict[str, str] = field(default_factory=dict)  # pending deletes of successes: job ids

    def __len__(self) -> int:
        return len(self.by_message)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self.by_message

    def add(self, held: Held) -> None:
        """A newly received message: it goes behind the messages of its group already held."""
        self.by_message[held.msg.message_id] = held
        group, key = held.group, held.fair_key
        # (get, not setdefault: setdefault's default would be built for every message)
        queue = self.groups.get(group)
        if queue is None:
            queue = self.groups[group] = deque()
        queue.append(held)
        keys = self.group_keys.get(group)
        if keys is None:
            keys = self.group_keys[group] = set()
        keys.add(key)
        groups = self.by_key.get(key)
        if groups is None:
            groups = self.by_key[key] = OrderedDict()
        groups[group] = None

    def refresh_receipt(self, msg: QueuedMessage, visible_until: float) -> None:
        """The same message received again (its visibility ran out while held): keep the newest receipt."""
        held = self.by_message.get(msg.message_id)
        if held is not None:
            held.msg, held.visible_until = msg, visible_until

    def head(self, group: str) -> Held | None:
        queue = self.groups.get(group)
        return queue[0] if queue else None

    def at(self, group: str, index: int) -> Held | None:
        queue = self.groups.get(group)
        return queue[index] if queue is not None and index < len(queue) else None

    def keys(self) -> list[str]:
        return list(self.by_key)

    def groups_of(self, key: str) -> list[str]:
        return list(self.by_key.get(key, ()))

    def rotate(self, key: str, group: str) -> None:
        """Round-robin within a key: the group just served goes to the back."""
        groups = self.by_key.get(key)
        if groups is not None and group in groups:
            groups.move_to_end(group)
            self.served.setdefault(key, set()).add(group)

    def take(self, group: str, count: int) -> list[Held]:
        """Remove the first `count` messages of a group (they were dispatched)."""
        queue = self.groups.get(group)
        taken: list[Held] = []
        while queue and len(taken) < count:
            held = queue.popleft()
            self.by_message.pop(held.msg.message_id, None)
            taken.append(held)
        if queue is not None and not queue:
            self._drop_group(group)
        return taken

    def put_back(self, group: str, held: Iterable[Held]) -> None:
        """Jobs not attempted go back to the head of their group, in order."""
        back = list(held)
        if not back:
            return
        queue = self.groups.setdefault(group, deque())
        queue.extendleft(reversed(back))
        self.groups.move_to_end(group, last=False)
        for item in back:
            self.by_message[item.msg.message_id] = item
            groups = self.by_key.setdefault(item.fair_key, OrderedDict())
            groups[group] = None
            groups.move_to_end(group, last=False)
            self._unserve(item.fair_key, group)
            self.group_keys.setdefault(group, set()).add(item.fair_key)

    def remove_group(self, group: str) -> list[Held]:
        """Every held message of a group (it is released or hidden as a whole)."""
        queue = self.groups.get(group)
        if not queue:
            return []
        removed = list(queue)
        for held in removed:
            self.by_message.pop(held.msg.message_id, None)
        self._drop_group(group)
        return removed

    def remove_all(self) -> list[Held]:
        removed = list(self.by_message.values())
        self.groups.clear()
        self.by_key.clear()
        self.served.clear()
        self.by_message.clear()
        self.group_keys.clear()
        return removed

    def held_of_key(self, key: str) -> int:
        return sum(len(self.groups.get(g, ())) for g in self.by_key.get(key, ()))

    def __iter__(self) -> Iterator[Held]:
        return iter(list(self.by_message.values()))

    def _drop_group(self, group: str) -> None:
        self.groups.pop(group, None)
        for key in self.group_keys.pop(group, set()):
            groups = self.by_key.get(key)
            if groups is not None and group in groups:
                del groups[group]
                if not groups:
                    del self.by_key[key]
            self._unserve(key, group)

    def _unserve(self, key: str, group: str) -> None:
        served = self.served.get(key)
        if served is not None and group in served:
            served.discard(group)
            if not served:
                del self.served[key]
