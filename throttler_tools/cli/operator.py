"""The operator's and producer's commands against any stage: enqueue, quota, pause, resume, status, dlq."""

from __future__ import annotations

import contextlib
import getpass
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import click

from throttler.core.errors import ConfigError
from throttler_tools.cli.base import (
    INDEFINITE_PAUSE_S,
    PROG,
    CommandGroup,
    Invalid,
    _aws,
    _echo_json,
    _when,
    cli,
    parse_duration,
    stage_option,
)


@cli.command()
@click.option(
    "--group",
    "-g",
    metavar="GROUP",
    help="Message group (ordering key), e.g. a customer id. Required for one job; for stdin, the default group.",
)
@click.option(
    "--id",
    "job_id",
    metavar="ID",
    help="Job id (the deduplication id: a resend within 5 minutes is dropped). Default: a fresh one.",
)
@click.argument("task", required=False, metavar="TASK")
@click.argument("payload", required=False, metavar="PAYLOAD_JSON")
@stage_option
def enqueue(group: str | None, job_id: str | None, task: str | None, payload: str | None, stage: str | None) -> None:
    """Enqueue one job, or JSON lines from stdin with `-`; prints each job id.

    \b
    One job:  enqueue --group customer-42 http '{"method": "GET", "url": "https://api.example.com/v1/x"}'
    Stdin:    enqueue - < jobs.jsonl    (or: enqueue --group G http - < payloads.jsonl)

    Each stdin line is one job: {"task": "http", "payload": {...}, "group": "customer-42", "id": "optional"}.
    A line may leave out `group` (then --group applies) and `task` (then TASK applies). Jobs are
    validated as the worker validates them (JSON, size, task name, url and allowed host); if any is
    invalid nothing is sent (exit 2). They are sent in order, in batches of 10.
    """
    from throttler.client import JobBuilder, OutgoingJob, Producer

    aws = _aws(stage)
    builder = JobBuilder.for_stage(aws.stage)
    built: list[OutgoingJob]
    if (task == "-" and payload is None) or payload == "-":
        if job_id is not None:
            raise Invalid('--id applies to one job: give each stdin line its own "id"')
        default_task = None if task == "-" else task
        built = _read_jobs(builder, default_task, group)
    elif task is None:
        raise Invalid(f"missing TASK and PAYLOAD_JSON (see '{PROG} enqueue --help')")
    elif payload is None:
        raise Invalid("missing PAYLOAD_JSON (or `-` to read JSON lines from stdin)")
    else:
        if not group:
            raise Invalid("missing option --group: the message group (ordering key) of the job")
        try:
            data = json.loads(payload)
        except ValueError as exc:
            raise Invalid(f"PAYLOAD_JSON is not valid JSON: {exc}") from None
        built = [builder.build(task, data, group, job_id)]
    if not built:
        raise Invalid("no jobs on stdin")
    producer = Producer(aws.client("sqs"), aws.jobs_url, builder.allowed_hosts, builder.known_tasks, builder.max_bytes,
                        stage=builder.stage, secret_header_names=builder.validation.secret_header_names)
    for sent in producer.send_many(built):
        click.echo(sent)
    if len(built) > 1:
        click.echo(f"enqueued {len(built)} jobs on {aws.names['jobs_queue']}", err=True)


def _read_jobs(builder: Any, default_task: str | None, default_group: str | None) -> list[Any]:
    jobs = []
    for number, line in enumerate(click.get_text_stream("stdin"), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise Invalid(f"line {number}: not valid JSON: {exc}") from None
        if isinstance(data, dict):
            if default_task and "task" not in data:
                data["task"] = default_task
            if default_group and "group" not in data:
                data["group"] = default_group
        jobs.append(builder.build_mapping(data, f"line {number}"))
    return jobs


@cli.group(cls=CommandGroup)
def quota() -> None:
    """Read or change the stage's quotas (take effect within 5 seconds, no redeploy)."""


@quota.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the quota item as JSON.")
@stage_option
def quota_show(as_json: bool, stage: str | None) -> None:
    """Show the limits in force: tiers, concurrency, safety margin and where they come from."""
    from throttler.core.quotas import defaults_item, parse_quota_item

    aws = _aws(stage)
    control = aws.store.read_control()
    item, source = control.quotas, "state table"
    if item is None:
        item, source = (
            defaults_item(aws.default_quotas),
            "stage default (serverless.yml defaultQuotas); no quota item yet",
        )
    error = None
    if item is not None:
        try:
            parse_quota_item(item)
        except ConfigError as exc:
            error = str(exc)
    plain = _plain_item(item) if item is not None else None
    if as_json:
        _echo_json({"stage": aws.stage, "quotas": plain, "source": source, "error": error})
        return
    if plain is None:
        click.echo(f"stage {aws.stage}: no quotas (no quota item, no stage default): nothing is dispatched")
        return
    click.echo(f"stage {aws.stage} quotas ({source}):")
    _print_item(plain)
    if error:
        click.echo(f"warning: this item is invalid ({error}); the throttler keeps the last good configuration", err=True)


def _plain_item(item: dict[str, Any]) -> dict[str, Any]:
    from decimal import Decimal

    def plain(value: Any) -> Any:
        if isinstance(value, Decimal):
            return int(value) if value == value.to_integral_value() else float(value)
        if isinstance(value, (list, set, tuple)):
            return sorted(plain(v) for v in value)
        return value

    return {k: plain(v) for k, v in item.items() if k != "pk"}


def _print_item(item: dict[str, Any]) -> None:
    from throttler.core.quotas import META_KEYS, tier_window_s

    aligned = set(item.get("aligned") or [])
    tiers = []
    for name, value in item.items():
        if name in META_KEYS:
            continue
        try:
            window = f"{tier_window_s(name)} s"
        except ConfigError:
            window = "?"
        tiers.append((name, value, window))
    for name, value, window in sorted(tiers, key=lambda t: (t[2] == "?", float(t[2][:-2]) if t[2] != "?" else 0)):
        kind = "calendar-aligned" if name in aligned else "sliding"
        click.echo(f"  {name:<12} {value!s:>8} calls per {window} ({kind})")
    if item.get("concurrency") is not None:
        click.echo(f"  {'concurrency':<12} {item['concurrency']!s:>8} calls in flight at once")
    margin = item.get("margin_ms")
    click.echo(
        f"  {'margin_ms':<12} {margin if margin is not None else 'default':>8} "
        + ("ms added to every window" if margin is not None else "(0.4% of each window, at most 250 ms)")
    )
    if item.get("updated_at"):
        click.echo(f"  updated {item['updated_at']} by {item.get('updated_by', '?')}")


@quota.command("set")
@click.argument("assignments", nargs=-1, required=True, metavar="TIER=LIMIT...")
@stage_option
def quota_set(assignments: tuple[str, ...], stage: str | None) -> None:
    """Change the named limits only; `TIER=off` removes one.

    \b
    Tiers: second, minute, hour, day or any <N>s|m|h|d window (e.g. 10s, 15m);
    also concurrency=N (calls in flight at once), margin_ms=N (safety margin added
    to every window) and aligned=day (calendar-aligned tiers, comma-separated).
    Example: quota set second=5 minute=100 day=10000 concurrency=4

    Limits are whole numbers >= 0 (0 stops dispatch). Tiers you do not name keep their value; when
    the stage has no quota item yet, `set` starts from the stage's default quotas (serverless.yml
    defaultQuotas), so the default tiers you do not name are kept. The new item is validated as a
    whole before it is written.
    """
    from throttler.core.quotas import apply_assignments, defaults_item, parse_assignments, tier_window_s

    pairs = parse_assignments(assignments)
    for name, value in pairs.items():  # the obvious mistakes, before asking AWS for the current item
        if value.lower() == "off" or name in ("aligned", "margin_ms"):
            continue
        if name != "concurrency":
            tier_window_s(name)
        if not re.fullmatch(r"[0-9]+", value):
            raise ConfigError(f"{name} must be a whole number >= 0, not {value!r}")
    aws = _aws(stage)
    control = aws.store.read_control()
    base = control.quotas if control.quotas is not None else (defaults_item(aws.default_quotas) or {})
    item = apply_assignments({k: v for k, v in base.items() if k != "pk"}, pairs)
    item["updated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    item["updated_by"] = f"cli:{_user()}"
    aws.store.put_quotas(item)
    click.echo(f"stage {aws.stage} quotas set (in force within 5 s):")
    _print_item(_plain_item(item))


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


@cli.command()
@click.option("--for", "duration", metavar="DURATION", help="How long: 90s, 10m, 2h, 1d. Default: until `resume`.")
@stage_option
def pause(duration: str | None, stage: str | None) -> None:
    """Stop dispatching (within 5 s); calls already in flight finish. Jobs stay queued."""
    seconds = parse_duration(duration) if duration else INDEFINITE_PAUSE_S
    aws = _aws(stage)
    until = time.time() + seconds
    aws.store.set_pause(until, "operator", extend_only=False)
    click.echo(f"stage {aws.stage} paused " + (f"until {_when(until)}" if duration else f"until `{PROG} resume`"))


@cli.command()
@stage_option
def resume(stage: str | None) -> None:
    """Lift a pause (an operator's, or one a 429 started); dispatch restarts within 5 s."""
    aws = _aws(stage)
    aws.store.clear_pause()
    click.echo(f"stage {aws.stage} resumed")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
@stage_option
def status(as_json: bool, stage: str | None) -> None:
    """Queue depth, in flight, dead letters, limits, use per tier, pause and time to drain.

    The time to drain paces the queued and in-flight jobs through the limits from the use recorded so
    far (and after a pause), ignoring retries and the API's own 429s: an estimate, not a promise.
    """
    from throttler.core.pacing import Pacer, Usage, usage_by_tier
    from throttler.core.quotas import defaults_item, parse_quota_item

    aws = _aws(stage)
    now = time.time()
    jobs = aws.depth(aws.jobs_url)
    dlq = aws.depth(aws.dlq_url)
    control = aws.store.read_control()
    item, source = control.quotas, "state table"
    if item is None:
        item, source = defaults_item(aws.default_quotas), "stage default"
    quota_error = None
    config = None
    try:
        if item is None:
            raise ConfigError("no quota item and no stage default: nothing is dispatched")
        config = parse_quota_item(item)
    except ConfigError as exc:
        quota_error = str(exc)
        if control.last_good is not None:
            with contextlib.suppress(ConfigError):
                config, source = parse_quota_item(control.last_good), "last good configuration"
    record = aws.store.load_usage()
    usage = Usage.from_json(record.ledgers_json, record.last_slot)
    use = usage_by_tier(config, usage, now) if config else {}
    rate = Pacer(config, usage).rate_per_s if config else 0.0
    paused = control.pause_until is not None and control.pause_until > now
    pause_left = (control.pause_until or now) - now if paused else 0.0
    depth = jobs["waiting"] + jobs["in_flight"]
    eta = drain_eta_s(config, usage, depth, now, pause_left) if config else (0.0 if depth == 0 else None)
    dlq_depth = dlq["waiting"] + dlq["in_flight"]
    report: dict[str, Any] = {
        "stage": aws.stage,
        "queue": {"name": aws.names["jobs_queue"], **jobs},
        "dlq": {"name": aws.names["dlq"], "depth": dlq_depth},
        "quotas": _plain_item(dict(config.raw)) if config else None,
        "quota_source": source if config else None,
        "quota_error": quota_error,
        "use": use,
        "paused": paused,
        "pause_until": control.pause_until if paused else None,
        "pause_reason": control.pause_reason if paused else None,
        "rate_per_s": round(rate, 3),
        "drain_eta_s": round(eta, 1) if eta is not None else None,
    }
    if as_json:
        _echo_json(report)
        return
    click.echo(f"stage {aws.stage}")
    click.echo(
        f"  queue     {jobs['waiting']} waiting, {jobs['in_flight']} in flight or waiting to retry ({aws.names['jobs_queue']})"
    )
    click.echo(f"  dlq       {dlq_depth} dead-lettered ({aws.names['dlq']})")
    click.echo(f"  quotas    {config.describe() if config else 'none'}" + (f" ({source})" if config else ""))
    if quota_error:
        click.echo(f"  warning   quota item invalid: {quota_error}")
    click.echo("  use       " + (", ".join(f"{t} {u['used']}/{u['limit']}" for t, u in use.items()) or "-"))
    if paused:
        until = "until resume" if pause_left > INDEFINITE_PAUSE_S / 2 else f"until {_when(control.pause_until or now)}"
        click.echo(f"  paused    {until} ({control.pause_reason})")
    else:
        click.echo("  paused    no")
    if eta is None:
        click.echo("  drain     never at these limits (a limit is 0 or no quotas)")
    else:
        click.echo(f"  drain     ~{_duration(eta)} at {rate:.2f} calls/s")


# Beyond this many calls the estimate extrapolates at the long-run rate instead of pacing each call.
ETA_SIMULATED_CALLS = 20_000


def drain_eta_s(config: Any, usage: Any, depth: int, now: float, pause_left_s: float) -> float | None:
    """Seconds until `depth` more calls have gone out: the pacer's own slots from the recorded use (so a
    short backlog is not judged by a daily limit), then the long-run rate. None if a limit is 0."""
    from throttler.core.pacing import Pacer

    if depth == 0:
        return 0.0
    pacer = Pacer(config, usage)
    if pacer.rate_per_s <= 0:
        return None
    t = now + pause_left_s
    for _ in range(min(depth, ETA_SIMULATED_CALLS)):
        slot = pacer.next_slot(t)
        if slot is None:
            return None
        pacer.take(slot)
        t = slot
    return t - now + max(0, depth - ETA_SIMULATED_CALLS) / pacer.rate_per_s


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@cli.group(cls=CommandGroup)
def dlq() -> None:
    """Inspect the dead-letter queue and move its jobs back."""


@dlq.command("list")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000), help="Show at most this many.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (full bodies).")
@stage_option
def dlq_list(limit: int, as_json: bool, stage: str | None) -> None:
    """List dead-lettered jobs: group, attempts, reason, job id and body. They stay in the DLQ.

    FIFO shows at most 10 jobs per group at a time (a group's later messages appear only once its
    earlier ones are gone).
    """
    from throttler.queue.dead_letters import DeadLetters

    aws = _aws(stage)
    letters = DeadLetters(aws.client("sqs"), aws.dlq_url, "").peek(limit)
    if as_json:
        for letter in letters:
            _echo_json(letter.to_dict())
        return
    if not letters:
        click.echo(f"{aws.names['dlq']} is empty")
        return
    click.echo(f"{'group':<16} {'attempts':>8}  {'reason':<36} {'job id':<34} body")
    for letter in letters:
        body = letter.body if len(letter.body) <= 60 else letter.body[:57] + "..."
        attempts = "-" if letter.attempts is None else str(letter.attempts)
        click.echo(f"{letter.group:<16} {attempts:>8}  {letter.error_reason:<36} {letter.job_id or '-':<34} {body}")


@dlq.command("redrive")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Move at most N jobs. Default: all.")
@stage_option
def dlq_redrive(limit: int | None, stage: str | None) -> None:
    """Move dead-lettered jobs back to the jobs queue, keeping their group ids and order.

    Safe to interrupt and run again: each job is sent before it is deleted from the DLQ, with a
    deduplication id that SQS uses to drop a second copy. A redriven job gets a fresh attempt count.
    """
    from throttler.queue.dead_letters import DeadLetters

    aws = _aws(stage)
    moved = DeadLetters(aws.client("sqs"), aws.dlq_url, aws.jobs_url).redrive(limit)
    click.echo(f"redrove {moved} job(s) from {aws.names['dlq']} to {aws.names['jobs_queue']}")
