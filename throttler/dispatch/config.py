"""The configuration in force during a run: the quota item (through the one resolver), and the pacer and
planner built on it, rebuilt when an operator's edit changes it (within a control read, 2 s)."""

from __future__ import annotations

import logging
import math
from typing import Any

from throttler.core.fairness import FairShare, quota_key
from throttler.core.pacing import Pacer
from throttler.core.quotas import QuotaConfig
from throttler.dispatch.control import LAST_GOOD, STATE_TABLE, QuotaInForce, resolve_quotas
from throttler.dispatch.planner import Planner
from throttler.dispatch.summary import RunSettings, RunSummary
from throttler.dispatch.usage import UsageBook
from throttler.store.base import Control, StateStore

logger = logging.getLogger(__name__)


class InForce:
    def __init__(self, settings: RunSettings, store: StateStore, usage: UsageBook, fair: FairShare, summary: RunSummary):
        self.s = settings
        self.store = store
        self.usage = usage
        self.fair = fair
        self.summary = summary
        self.quota: QuotaInForce | None = None
        self.pacer: Pacer | None = None
        self.planner: Planner | None = None
        self._resolved: tuple[str, QuotaInForce] | None = None  # (quota item, last good item) as read, and the result

    @property
    def config(self) -> QuotaConfig | None:
        return self.quota.config if self.quota is not None else None

    def apply(self, control: Control, now: float) -> bool:
        """Take what a control read found: publish the stage's settings, resolve the quota, remember a good one.
        True when the quotas in force changed."""
        wanted = self.s.published()
        stored = control.stage_settings
        if stored is None or {k: v for k, v in stored.items() if k != "written_at"} != wanted:
            self.store.put_stage_settings({**wanted, "written_at": now})
        quota = self._resolve(control)
        self.summary.invalid_config = self.summary.invalid_config or quota.invalid
        self.summary.no_config = quota.config is None
        if quota.error:
            logger.error("invalid quota configuration", extra={"error": quota.error, "source": quota.source})
        previous = self.config
        self.quota = quota
        if quota.config is None:
            self.pacer = self.planner = None
            return previous is not None
        if (
            quota.source == STATE_TABLE
            and quota.item is not None
            and (previous != quota.config or not self.summary.last_good_written)
        ):
            self.store.put_last_good(quota.item)
            self.summary.last_good_written = True
        if previous != quota.config or self.pacer is None:
            if previous is not None:
                logger.info("quota configuration changed", extra={"quotas": quota.config.describe()})
            self.rebuild()
            return True
        if quota.source == LAST_GOOD and previous is None:
            self.rebuild()
            return True
        return False

    def _resolve(self, control: Control) -> QuotaInForce:
        """`resolve_quotas`, worked out again only when the items it reads changed (they seldom do, and parsing them
        at every control read cost more than the rest of the read)."""
        # repr, not ==: True == 1 == Decimal(1), and a BOOL typed in the console is refused where the number is not.
        read = repr((control.quotas, control.last_good))
        cached = self._resolved
        if cached is not None and cached[0] == read:
            return cached[1]
        quota = resolve_quotas(control, self.s.default_quotas)
        self._resolved = (read, quota)
        return quota

    def rebuild(self) -> None:
        """A pacer and planner on the current meters (after a change, or after the meters were reloaded)."""
        config = self.config
        if config is None:
            return
        self.pacer = Pacer(config, self.usage.stage, self.usage.key_meter)
        self.planner = Planner(self.pacer, self.fair, lambda key: config.key_quota(quota_key(key)).weight)
        for key in self.usage.keys:
            self.note_key(key)

    def note_key(self, key: str) -> None:
        """Remember a key's longest window (its state is forgotten that long after its last call)."""
        if self.config is not None:
            self.usage.key_window_s[key] = max((t.window_s for t in self.config.key_quota(key).tiers), default=0.0)

    def auto_window(self, key: str | None) -> float | None:
        """The longest window of an auto tier that applies to this key (a 429 pauses at most that long)."""
        config = self.config
        if config is None:
            return None
        windows = [t.window_s for t in (*config.tiers, *config.key_quota(key).tiers) if t.is_auto]
        return float(max(windows)) if windows else None

    def latency(self) -> str:
        config = self.config
        return (config.latency if config is not None and config.latency else None) or self.s.default_latency

    def burst_rate(self, now: float, unbounded: float = 100.0) -> float:
        """The stage's calls per second while its finest window has room (`unbounded` when no tier bounds it)."""
        assert self.pacer is not None
        rate = self.pacer.stage.burst_rate_per_s(now)
        return unbounded if math.isinf(rate) else rate

    def rate(self, now: float, unbounded: float = 100.0) -> float:
        """The stage's long-run calls per second (`unbounded` when no tier bounds it)."""
        assert self.pacer is not None
        rate = self.pacer.stage.rate_per_s(now)
        return unbounded if math.isinf(rate) else rate

    def weight(self, key: str) -> int:
        config = self.config
        return config.key_quota(quota_key(key)).weight if config is not None else 1

    def describe(self) -> dict[str, Any]:
        return {"source": self.quota.source if self.quota else None, "quotas": self.config.describe() if self.config else None}
