"""The run's timers, shared by the parts of a run (one place, so that each part's decisions line up)."""

from __future__ import annotations

import math
from dataclasses import dataclass

CONTROL_REFRESH_S = 2.0  # configuration, pause and hand-over requests take effect within this (+ a batch)
RECEIVE_AHEAD_S = 2.0  # receive only when the stage's next slot is at most this far away
DELETE_FLUSH_S = 1.0


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

    @property
    def next_refresh(self) -> float:
        return self.refreshed_at + CONTROL_REFRESH_S
