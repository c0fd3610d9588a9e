"""The run's timers, shared by the parts of a run (one place, so that each part's decisions line up)."""

from __future__ import annotations

import math
from dataclasses import dataclass

CONTROL_REFRESH_S = 2.0  # configuration, pause and hand-over requests take effect within this (+ a batch)
# While nothing is in flight and the stage cannot send for longer than this (a spent minute tier), the
# configuration is read this often, and again within CONTROL_REFRESH_S of the next slot: a quota change
# still takes effect within 5 s (SPEC), at half the reads of a long wait.
QUIET_REFRESH_S = 4.0
RECEIVE_AHEAD_S = 2.0  # receive only when the stage's next slot is at most this far away
DELETE_FLUSH_S = 3.0
DONE_TTL_S = 14 * 86400.0  # success records outlive any message (SQS keeps a message at most 14 days)


@dataclass
class Timing:
    deadline: float = math.inf  # plan no slot at or after this
    refreshed_at: float = -math.inf  # the last control read
    next_plan_at: float = -math.inf
    planned_until: float = -math.inf  # the next batch's slots come after this one
    receive_after: float = -math.inf  # no receive before (the queue looked empty, or FIFO hid the rest)
    last_flush: float = -math.inf  # deletes were last sent then
    queue_empty: bool = False  # nothing held, nothing in flight, and the last receive found nothing
    lead_s: float = 0.25  # a batch goes to a worker this long before its first slot (RunSettings.batch_lead_s)
    quiet_until: float = -math.inf  # the stage cannot send before this, and no batch is in flight

    @property
    def next_refresh(self) -> float:
        quiet = self.quiet_until - self.refreshed_at > QUIET_REFRESH_S
        return self.refreshed_at + (QUIET_REFRESH_S if quiet else CONTROL_REFRESH_S)
