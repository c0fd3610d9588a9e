"""A run's settings (from the stage's Settings) and its summary (the handler's log line and metrics)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from throttler.dispatch.run import ThrottlerRun


@dataclass(frozen=True)
class RunSettings:
    default_quotas: str = ""
    default_latency: str = "cost"
    max_attempts: int = 3
    retry_base_s: float = 10.0
    retry_max_s: float = 900.0
    worker_timeout_s: float = 40.0
    worker_max_parallel: int = 256
    allowed_hosts: tuple[str, ...] = ()
    max_message_bytes: int = 256 * 1024
    # A batch is handed to a worker this long before its first slot: the reservation's write, the visibility
    # change, the invoke and the worker's claim (and its first look at the throttle record) all come first.
    batch_lead_s: float = 0.25

    def published(self) -> dict[str, Any]:
        """What the stage's settings item records (for operators' tools that have no serverless.yml)."""
        return {
            "default_quotas": self.default_quotas,
            "default_latency": self.default_latency,
            "allowed_hosts": list(self.allowed_hosts),
            "max_message_bytes": self.max_message_bytes,
            "max_attempts": self.max_attempts,
        }


@dataclass
class RunSummary:
    owner: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    end_reason: str = ""
    lease_held_elsewhere: bool = False
    waited_for_lease_s: float = 0.0
    handed_over_to: str | None = None
    received: int = 0
    dispatched: int = 0
    batches: int = 0
    succeeded: int = 0
    duplicates: int = 0
    retried: int = 0
    dead_lettered: int = 0
    invalid: int = 0
    throttled: int = 0
    skipped: int = 0
    missed_slots: int = 0
    hidden: int = 0
    recalled: int = 0  # groups hidden for their key's share brought back sooner (the queue looked empty)
    released: int = 0
    reservations: int = 0
    reservation_conflicts: int = 0
    worker_failures: int = 0
    secrets_unavailable: int = 0
    recovered_batches: int = 0
    invalid_config: bool = False
    no_config: bool = False
    last_good_written: bool = False
    paused_until: float | None = None
    use: dict[str, dict[str, Any]] = field(default_factory=dict)

    def finish(self, run: ThrottlerRun, now: float) -> None:
        tally = run.outbox.tally
        self.ended_at = now
        self.received = run.intake.received
        self.dead_lettered = tally.dead_lettered + run.intake.refused
        self.invalid = tally.invalid + run.intake.refused
        self.succeeded = tally.succeeded + run.intake.done_deleted
        for name in (
            "dispatched",
            "batches",
            "duplicates",
            "retried",
            "throttled",
            "skipped",
            "missed_slots",
            "worker_failures",
            "secrets_unavailable",
        ):
            setattr(self, name, getattr(tally, name))
        self.duplicates += run.intake.done_deleted
        if run.pacer is not None:
            self.use = run.pacer.stage.usage(now)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
