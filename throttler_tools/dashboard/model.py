"""What the dashboard shows and what it lets an operator do, as plain data: no HTTP here.

`Dashboard.state()` reads the stage once (at most every `min_refresh_s`, whoever asks) and returns the status
report (`throttler_tools.status`, the same one `status --json` prints) with what only a live view needs:
calls per second from the stage's own ledger in the state table, a short history of the queue the server keeps,
the run lease, and the latest dead letters. The actions (pause, resume, quota set) are the CLI's, with its
validation and its one-line errors, so a value the CLI refuses is refused here with the same words.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import click

from throttler.core.pacing import Meter, ledger_key
from throttler.naming import StageNames
from throttler.queue import JobQueue
from throttler.store import Control, StateStore

logger = logging.getLogger(__name__)

RATE_WINDOW_S = 60  # the stage's standing 60 s ledger (throttler.core.pacing.STANDING_WINDOWS_S)
HISTORY_S = 600.0
DEAD_LETTERS_SHOWN = 10
DEAD_LETTERS_REFRESH_S = 30.0
PER_GROUP = (
    "per group: not shown. SQS reports no count per message group; counting them would mean receiving every "
    "message (and hiding it from the throttler), which the dashboard never does. Per key: as the throttler last saw it."
)


class StageSource(Protocol):
    """A stage's resources (throttler_tools.cli.base.StageAws, or the local stack's clients wrapped in one)."""

    stage: str
    names: StageNames

    @property
    def store(self) -> StateStore: ...

    @property
    def queue(self) -> JobQueue: ...

    def defaults(self, control: Control) -> Any: ...

    def resume(self, now: float) -> str: ...


class ActionRefused(Exception):
    """An action the dashboard does not take (read-only mode, an unknown scope): its message is for the page."""


@dataclass(frozen=True)
class Outcome:
    """What an action did: `message` on success, `error` (one line, the CLI's words) otherwise."""

    ok: bool
    message: str = ""
    error: str = ""
    status: int = 200

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message, "error": self.error}


# ------------------------------------------------------------------------------------------- pure figures
def calls_per_second(stage_meter_json: str | None, now: float, span_s: int = RATE_WINDOW_S) -> dict[str, Any]:
    """Calls reserved per whole second over the last `span_s` seconds, from the stage's 60 s ledger (the
    throttler counts a call when it reserves it, up to a couple of seconds before it is sent).

    {"start": the first second (epoch), "counts": [units in each second from `start`, ending with the current
    one], "reserved_ahead": units reserved for later than now, "last_5s_per_s": the average over the last five
    whole seconds}.
    """
    meter = Meter.from_json(stage_meter_json)
    ledger = meter.ledgers.get(ledger_key(RATE_WINDOW_S, False))
    first = math.floor(now) - span_s + 1
    counts = [0] * span_s
    ahead = 0
    if ledger is not None:
        for idx, units in ledger.entries:
            start = idx * ledger.bucket_s
            if start > now:
                ahead += units
                continue
            second = math.floor(start + 1e-9)
            if second >= first:
                counts[second - first] += units
    last5 = counts[-6:-1]  # whole seconds only: the current one is still filling
    return {
        "start": first,
        "counts": counts,
        "reserved_ahead": ahead,
        "last_5s_per_s": round(sum(last5) / len(last5), 2) if last5 else 0.0,
    }


def lease_report(control: Control, now: float) -> dict[str, Any]:
    """Whether a throttler run holds the stage's lease (one is dispatching, or settling)."""
    lease = control.lease
    if lease is None or lease.expires_at <= now:
        return {"held": False, "owner": None, "expires_in_s": None}
    return {"held": True, "owner": lease.owner, "expires_in_s": round(lease.expires_at - now, 1)}


def error_text(exc: BaseException, aws: Any = None) -> str:
    """The one line the CLI would print for this error (naming `aws`'s table when it is missing), with AWS's own
    message where it adds one (a refused write says which permission is missing)."""
    from botocore.exceptions import ClientError

    from throttler_tools.cli.base import STAGE_META, _exit_codes, cli

    text = str(exc)
    context = click.Context(cli)
    context.meta[STAGE_META] = aws
    try:
        with context, _exit_codes():
            raise exc
    except click.ClickException as cli_exc:
        text = cli_exc.format_message()
    except BaseException as other:  # noqa: BLE001 - anything else is reported as it reads
        text = f"{type(other).__name__}: {other}"
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ClientError):
        cause = cause.__cause__
    if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
        aws_message = str(cause.response.get("Error", {}).get("Message") or "")
        if aws_message and aws_message not in text:
            text = f"{text}: {aws_message}"
    return " ".join(text.split())


@contextlib.contextmanager
def _as_outcome(box: list[Outcome], aws: Any) -> Iterator[None]:
    try:
        yield
    except ActionRefused as exc:
        box.append(Outcome(False, error=str(exc), status=403))
    except (click.UsageError, click.BadParameter) as exc:
        box.append(Outcome(False, error=exc.format_message(), status=400))
    except click.ClickException as exc:
        box.append(Outcome(False, error=exc.format_message(), status=400 if exc.exit_code == 2 else 502))
    except Exception as exc:  # noqa: BLE001 - every failure becomes the line the page shows
        box.append(Outcome(False, error=error_text(exc, aws), status=400 if _is_invalid(exc) else 502))


def _is_invalid(exc: BaseException) -> bool:
    from throttler.core.errors import ConfigError, InvalidJob

    return isinstance(exc, (ConfigError, InvalidJob))


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


# ------------------------------------------------------------------------------------------- the dashboard
class Dashboard:
    """One stage's live view and its operator actions. Thread-safe: the HTTP server calls it from many threads."""

    def __init__(
        self,
        aws: StageSource,
        *,
        read_only: bool = False,
        clock: Callable[[], float] = time.time,
        min_refresh_s: float = 0.5,
        history_s: float = HISTORY_S,
        dead_letters_refresh_s: float = DEAD_LETTERS_REFRESH_S,
    ):
        self.aws = aws
        self.read_only = read_only
        self.clock = clock
        self.min_refresh_s = min_refresh_s
        self.history_s = history_s
        self.dead_letters_refresh_s = dead_letters_refresh_s
        self._lock = threading.Lock()
        self._state: dict[str, Any] | None = None
        self._state_at = -math.inf
        self._history: deque[dict[str, Any]] = deque()
        self._letters: dict[str, Any] = {"at": None, "items": [], "error": None, "depth": None}

    @property
    def stage(self) -> str:
        return self.aws.stage

    # ------------------------------------------------------------------ reading
    def state(self, force: bool = False) -> dict[str, Any]:
        """Everything the page shows, read at most every `min_refresh_s` (all viewers share one read)."""
        with self._lock:
            now = self.clock()
            if force or self._state is None or now - self._state_at >= self.min_refresh_s:
                self._state = self._read(now)
                self._state_at = now
            return self._state

    def _read(self, now: float) -> dict[str, Any]:
        from throttler_tools.status import build_report, read_snapshot

        aws = self.aws
        base: dict[str, Any] = {"stage": aws.stage, "at": round(now, 3), "read_only": self.read_only, "per_group": PER_GROUP}
        try:
            snapshot = read_snapshot(aws.store, aws.queue, aws.names, defaults=aws.defaults)
        except Exception as exc:  # noqa: BLE001 - the page shows the reason and keeps polling
            logger.warning("dashboard read failed", extra={"error": type(exc).__name__})
            return {**base, "error": error_text(exc, aws), "history": list(self._history)}
        report = build_report(snapshot, now)
        self._remember(now, report)
        return {
            **base,
            "error": None,
            "status": report,
            "rate": calls_per_second(snapshot.usage.stage_meter, now),
            "lease": lease_report(snapshot.control, now),
            "open_batches": len(snapshot.usage.open_batches),
            "history": list(self._history),
            "dead_letters": self._dead_letters(now, report["dlq"]["depth"]),
        }

    def _remember(self, now: float, report: dict[str, Any]) -> None:
        tiers = {name: entry["used"] for name, entry in report["tiers"].items()}
        self._history.append({"at": round(now, 3), "waiting": report["queue"]["waiting"],
                              "in_flight": report["queue"]["in_flight"], "dlq": report["dlq"]["depth"], "used": tiers})
        while self._history and self._history[0]["at"] < now - self.history_s:
            self._history.popleft()

    def _dead_letters(self, now: float, depth: int) -> dict[str, Any]:
        """The latest dead letters with their reasons: looked at again only when the DLQ's depth changed or every
        `dead_letters_refresh_s` (a look receives the messages and releases them at once)."""
        from throttler.queue.dead_letters import DeadLetters

        letters = self._letters
        stale = letters["at"] is None or now - letters["at"] >= self.dead_letters_refresh_s
        if depth == 0:
            letters.update(at=now, items=[], error=None, depth=0)
        elif stale or depth != letters["depth"]:
            try:
                found = DeadLetters(self.aws.queue).peek(DEAD_LETTERS_SHOWN)
                items = [{"job_id": d.job_id, "group": d.group, "attempts": d.attempts, "reason": d.error_reason}
                         for d in found]
                letters.update(at=now, items=items, error=None, depth=depth)
            except Exception as exc:  # noqa: BLE001 - e.g. no sqs:ReceiveMessage on the DLQ: say so
                letters.update(at=now, items=[], error=error_text(exc, self.aws), depth=depth)
        return dict(letters)

    # ------------------------------------------------------------------ acting (the CLI's validation and words)
    def _writable(self) -> None:
        if self.read_only:
            raise ActionRefused("this dashboard is read-only (started with --read-only): use the CLI to change the stage")

    def pause(self, duration: str | None) -> Outcome:
        """`pause [--for DURATION]`: an empty duration pauses until resume."""
        from throttler.dispatch.control import INDEFINITE_PAUSE_S
        from throttler_tools.cli.base import PROG, parse_duration
        from throttler_tools.status import clock_text, duration_text

        box: list[Outcome] = []
        with _as_outcome(box, self.aws):
            self._writable()
            text = (duration or "").strip()
            seconds = parse_duration(text) if text else INDEFINITE_PAUSE_S
            until = self.clock() + seconds
            self.aws.store.set_pause(until, "operator", extend_only=False)
            how = f"for {duration_text(seconds)}, until {clock_text(until)}" if text else f"until resume (or `{PROG} resume`)"
            box.append(Outcome(True, f"stage {self.stage} paused {how}: dispatch stops within 5 s; calls already sent finish"))
        return self._done(box)

    def resume(self) -> Outcome:
        """`resume`: lifts the operator's pause and the pause of the API's latest 429."""
        box: list[Outcome] = []
        with _as_outcome(box, self.aws):
            self._writable()
            box.append(Outcome(True, self.aws.resume(self.clock())))
        return self._done(box)

    def set_quota(self, assignments: str, *, key: str | None = None, per_key: bool = False) -> Outcome:
        """`quota set [--key K | --per-key] TIER=LIMIT...`, validated exactly as the CLI does, before anything is
        read, and as a whole item before it is written."""
        from throttler.core.quotas import apply_assignments, defaults_item, parse_assignments, parse_quota_item
        from throttler_tools.cli.operator import _check_key, _precheck, _quota_state

        box: list[Outcome] = []
        with _as_outcome(box, self.aws):
            self._writable()
            words = tuple((assignments or "").split())
            if not words:
                raise click.UsageError("missing TIER=LIMIT: e.g. second=5 minute=100 (TIER=off removes one)")
            if key is not None and per_key:
                raise click.UsageError("--key and --per-key exclude each other: set one key's override, or every key's default")
            _check_key(key)
            pairs = parse_assignments(words)
            _precheck(pairs, key)
            control, defaults, _ = _quota_state(self.aws)  # type: ignore[arg-type]
            if control.quotas is not None:
                base = dict(control.quotas)
            else:
                base = defaults_item(defaults.default_quotas or "") or {}
            item = apply_assignments(base, pairs, key=key, per_key=per_key)
            item["updated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            item["updated_by"] = f"dashboard:{_user()}"
            self.aws.store.put_quotas(item)
            what = f"key {key}'s quotas" if key is not None else ("per-key default quotas" if per_key else "quotas")
            box.append(Outcome(True, f"stage {self.stage} {what} set (in force within 5 s): {parse_quota_item(item).describe()}"))
        return self._done(box)

    def _done(self, box: list[Outcome]) -> Outcome:
        outcome = box[0]
        if outcome.ok:
            with self._lock:
                self._state_at = -math.inf  # the next read shows the change
        return outcome
