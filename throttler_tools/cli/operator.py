"""The operator's and producer's commands against any stage: enqueue, quota, pause, resume, status, dlq."""

from __future__ import annotations

import getpass
import json
import re
import shutil
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import click

from throttler.core.errors import ConfigError, StoreError
from throttler_tools.cli.base import (
    PROG,
    CommandGroup,
    Invalid,
    StageAws,
    _aws,
    _echo_json,
    _missing_resource,
    cli,
    parse_duration,
    stage_option,
)

KEY_NAME = re.compile(r"^[\x20-\x7e]{1,128}$")
MAX_COST = 10**12


def _check_key(key: str | None) -> str | None:
    if key is not None and not KEY_NAME.match(key):
        raise Invalid(f"--key must be 1-128 printable ASCII characters, not {key!r}")
    return key


# ---------------------------------------------------------------------------- enqueue
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
@click.option("--key", metavar="KEY", help="Quota key (a tenant, an account): the job also counts against that key's tiers.")
@click.option("--cost", type=click.IntRange(1, MAX_COST), metavar="N", help="Quota units this call uses. [default: 1]")
@click.argument("task", required=False, metavar="TASK")
@click.argument("payload", required=False, metavar="PAYLOAD_JSON")
@stage_option
def enqueue(
    group: str | None, job_id: str | None, key: str | None, cost: int | None, task: str | None, payload: str | None,
    stage: str | None,
) -> None:
    """Enqueue one job, or JSON lines from stdin with `-`; prints each job id.

    \b
    One job:        enqueue --group customer-42 http '{"method": "GET", "url": "https://api.example.com/v1/x"}'
    Payload lines:  enqueue --group customer-42 http - < payloads.jsonl
    Job lines:      enqueue - < jobs.jsonl

    \b
    Each stdin line is one JSON object, in one of two forms:
    - a job line, which has "task" or "payload":
        {"task": "http", "payload": {...}, "group": "customer-42", "id": "...", "key": "...", "cost": 2}
      (only task and group are needed; TASK, --group, --key and --cost fill in what a line leaves out);
    - a payload line, anything else, e.g. {"method": "GET", "url": "..."}: the payload of one job of
      TASK (required then), in group --group (required then), with --key and --cost.
    Jobs are validated as the worker validates them (JSON, size, task and payload, url and allowed host,
    key, cost); if any is invalid nothing is sent (exit 2). They are sent in order, in batches of 10.
    """
    from throttler.core.errors import InvalidJob
    from throttler.producer import Producer

    _check_key(key)
    reading = (task == "-" and payload is None) or payload == "-"
    if reading:
        if job_id is not None:
            raise Invalid('--id applies to one job: give each stdin line its own "id"')
    elif task is None:
        raise Invalid(f"missing TASK and PAYLOAD_JSON (see '{PROG} enqueue --help')")
    elif payload is None:
        raise Invalid("missing PAYLOAD_JSON (or `-` to read JSON lines from stdin)")
    elif not group:
        raise Invalid("missing option --group: the message group (ordering key) of the job")
    aws = _aws(stage)
    builder = _job_builder(aws)
    try:
        if reading:
            built = _read_jobs(builder, None if task == "-" else task, group, key, cost)
        else:
            assert task is not None and payload is not None and group is not None
            try:
                data = json.loads(payload)
            except ValueError as exc:
                raise Invalid(f"PAYLOAD_JSON is not valid JSON: {exc}") from None
            built = [builder.build(task, data, group, job_id, key=key, cost=cost)]
    except InvalidJob as exc:
        raise Invalid(str(exc)) from None
    if not built:
        raise Invalid("no jobs on stdin")
    if not builder.hosts_checked:
        click.echo(
            "warning: hosts not checked here: the stage's allowed hosts are unknown (set ALLOWED_HOSTS, or let its "
            "throttler run once); the throttler dead-letters a job whose host is not allowed",
            err=True,
        )
    for sent in Producer.from_builder(aws.client("sqs"), aws.jobs_url, builder).send_many(built):
        click.echo(sent)
    if len(built) > 1:
        click.echo(f"enqueued {len(built)} jobs on {aws.names.jobs_queue}", err=True)


def _job_builder(aws: StageAws) -> Any:
    """Validation as the stage's worker does it: ALLOWED_HOSTS / MAX_MESSAGE_BYTES from the environment, else
    what the stage published (or serverless.yml); hosts unknown: not checked here."""
    from throttler.core.envelope import DEFAULT_MAX_MESSAGE_BYTES
    from throttler.producer import JobBuilder, env_allowed_hosts, env_max_message_bytes, env_secret_header_names

    hosts, max_bytes = env_allowed_hosts(), env_max_message_bytes()
    if hosts is None or max_bytes is None:
        aws.jobs_url  # noqa: B018 - a missing stage says so before anything else
        try:
            defaults = aws.defaults(aws.store.read_control())
        except StoreError as exc:
            if _missing_resource(exc):
                raise
            defaults = aws.defaults(None)  # a producer's role may be allowed to send only
        hosts = hosts if hosts is not None else defaults.allowed_hosts
        max_bytes = max_bytes if max_bytes is not None else defaults.max_message_bytes
    return JobBuilder(hosts, max_bytes=max_bytes or DEFAULT_MAX_MESSAGE_BYTES, stage=aws.stage,
                      secret_header_names=env_secret_header_names())


def _read_jobs(builder: Any, task: str | None, group: str | None, key: str | None, cost: int | None) -> list[Any]:
    from throttler.core.errors import InvalidJob

    jobs = []
    for number, line in enumerate(click.get_text_stream("stdin"), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise Invalid(f"{where}: not valid JSON: {exc}") from None
        if isinstance(data, dict) and not ({"task", "payload"} & set(data)):
            # A payload line: the payload of one job of TASK.
            if task is None:
                raise InvalidJob(
                    f"{where}: a payload line (no \"task\" or \"payload\") needs TASK on the command line "
                    f"(enqueue --group G TASK -); a job line has task, payload and group"
                )
            data = {"task": task, "payload": data}
        if isinstance(data, dict):
            for name, value in (("task", task), ("group", group), ("key", key), ("cost", cost)):
                if value is not None and name not in data:
                    data[name] = value
        jobs.append(builder.build_mapping(data, where))
    return jobs


# ---------------------------------------------------------------------------- quota
@cli.group(cls=CommandGroup)
def quota() -> None:
    """Read or change the stage's quotas (take effect within 5 seconds, no redeploy)."""


def _quota_state(aws: StageAws) -> tuple[Any, Any, Any]:
    from throttler_tools.status import quota_in_force

    control = aws.store.read_control()
    defaults = aws.defaults(control)
    return control, defaults, quota_in_force(control, defaults)


@quota.command("show")
@click.option("--key", metavar="KEY", help="Show what applies to this key (its override, or the per-key defaults).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@stage_option
def quota_show(key: str | None, as_json: bool, stage: str | None) -> None:
    """Show the limits in force (configured and learned), per-key defaults and key overrides, and where they come from."""
    from throttler.core.pacing import Meter
    from throttler_tools.status import quota_report

    _check_key(key)
    aws = _aws(stage)
    _, defaults, found = _quota_state(aws)
    config = found.config
    keys = [key] if key is not None else (sorted(config.keys) if config is not None else [])
    auto_keys = [k for k in keys if config is not None and any(t.is_auto for t in config.key_quota(k).tiers)]
    key_meters = aws.store.load_key_meters(auto_keys) if auto_keys else {}
    stage_meter = Meter.from_json(aws.store.load_usage().stage_meter) if config is not None else None
    report = quota_report(aws.stage, found, defaults, stage_meter, key_meters, keys if key is not None else None)
    if as_json:
        _echo_json(report)
    else:
        _print_quotas(report, key)
    if found.invalid:
        click.echo(f"warning: the quota item is invalid ({found.error}); the throttler keeps the last good configuration",
                   err=True)


def _tier_window(name: str) -> str:
    from throttler.core.quotas import tier_window_s

    if name.startswith("api:"):
        return name[4:]
    window = tier_window_s(name)
    return f"{window} s"


def _tier_value(entry: Mapping[str, Any]) -> str:
    """`120`, or `auto:50 (learned 17)`."""
    if "learned" in entry:
        return f"{entry['limit']} (learned {entry['learned']})"
    return str(entry["limit"])


def _print_tiers(tiers: Mapping[str, Mapping[str, Any]], aligned: set[str], indent: str = "  ") -> None:
    for name, entry in tiers.items():
        kind = "calendar-aligned" if name in aligned else "sliding"
        learned = f", learned {entry['learned']} so far" if "learned" in entry else ""
        calls = "call " if entry["limit"] == 1 else "calls"
        click.echo(f"{indent}{name:<12} {entry['limit']!s:>8} {calls} per {_tier_window(name)} ({kind}{learned})")


def _print_quotas(report: Mapping[str, Any], key: str | None) -> None:
    stage = report["stage"]
    if report["quotas"] is None:
        click.echo(f"stage {stage}: no quotas in force: {report['error']}")
        return
    source = report["source"]
    if source == "stage default":
        source = f"stage default, {report['defaults']}; no quota item yet"
    aligned = set(report.get("aligned") or [])
    if key is not None:
        entry = report["keys"][key]
        how = "its override" if entry["override"] else ("the per-key defaults" if entry["tiers"] else "no tiers of its own")
        click.echo(f"stage {stage}, key {key}: {how}, weight {entry['weight']} ({source})")
        _print_tiers(entry["tiers"], aligned)
        click.echo("  and the stage's tiers: " + " ".join(f"{n}={_tier_value(e)}" for n, e in report["tiers"].items()))
        return
    click.echo(f"stage {stage} quotas ({source}):")
    _print_tiers(report["tiers"], aligned)
    if report.get("concurrency") is not None:
        click.echo(f"  {'concurrency':<12} {report['concurrency']!s:>8} calls in flight at once")
    margin = report.get("margin_ms")
    click.echo(
        f"  {'margin_ms':<12} {margin if margin is not None else 'default':>8} "
        + ("ms added to every window" if margin is not None else "(0.4% of each window, at most 250 ms)")
    )
    for name in ("latency", "cost_header"):
        if report.get(name):
            click.echo(f"  {name:<12} {report[name]:>8}")
    if report.get("signals_scope") == "key":
        click.echo(f"  {'signals':<12} {'per key':>8} (the API's rate-limit headers apply to the job's key)")
    if report.get("per_key"):
        click.echo("  per key (every key's default):")
        _print_tiers(report["per_key"]["tiers"], aligned, "    ")
    if report["keys"]:
        click.echo(f"  key overrides ({len(report['keys'])}):")
        for name, entry in report["keys"].items():
            tiers = " ".join(f"{n}={_tier_value(e)}" for n, e in entry["tiers"].items()) or "no tiers"
            click.echo(f"    {name:<20} weight {entry['weight']:<4} {tiers}")
    item = report["quotas"]
    if item.get("updated_at"):
        click.echo(f"  updated {item['updated_at']} by {item.get('updated_by', '?')}")


# Values a tier may take on the command line, checked before anything is read from AWS.
WHOLE = re.compile(r"[0-9]+")
MAX_DIGITS = 13  # throttler.core.quotas.MAX_LIMIT is 10**12


def _precheck(pairs: Mapping[str, str], key: str | None) -> None:
    """The obvious mistakes, with one-line reasons, before the current item is read."""
    from throttler.core.quotas import CONCURRENCY, MAX_LIMIT, MAX_WEIGHT, parse_quota_item, tier_window_s

    for name, value in pairs.items():
        if name == "weight":
            if key is None:
                raise Invalid("weight is a key's: use quota set --key KEY ... weight=N")
            if not WHOLE.fullmatch(value) or len(value.lstrip("0")) > 4 or not 1 <= int(value) <= MAX_WEIGHT:
                raise Invalid(f"weight must be a whole number from 1 to {MAX_WEIGHT}, not {value!r}")
            continue
        if name in ("aligned", "margin_ms", "latency", "cost_header", "signals_scope", "per_key", "keys") and key is None:
            continue  # checked with the whole item
        if name == CONCURRENCY and key is None:
            if value.lower() != "off":
                _whole(name, value)
                parse_quota_item({"second": 1, CONCURRENCY: value})
            continue
        tier_window_s(name)  # unknown tier: ConfigError, exit 2
        if value.lower() == "off":
            continue
        if value.lower().startswith("auto"):
            parse_quota_item({name: value})
            continue
        _whole(name, value)
        if int(value) > MAX_LIMIT:
            raise Invalid(f"{name} is too large ({value}): at most {MAX_LIMIT}")


def _whole(name: str, value: str) -> None:
    if not WHOLE.fullmatch(value):
        raise Invalid(f"{name} must be a whole number >= 0 (or auto:MAX, or off), not {value!r}")
    if len(value.lstrip("0")) > MAX_DIGITS:
        raise Invalid(f"{name} is too large ({len(value)} digits): at most 10^12")


@quota.command("set")
@click.argument("assignments", nargs=-1, required=True, metavar="TIER=LIMIT...")
@click.option("--key", metavar="KEY", help="Change this key's override (its tiers and weight=N) instead of the stage's tiers.")
@click.option("--per-key", "per_key", is_flag=True, help="Change the default tiers of every key instead of the stage's.")
@stage_option
def quota_set(assignments: tuple[str, ...], key: str | None, per_key: bool, stage: str | None) -> None:
    """Change the named limits only; `TIER=off` removes one.

    \b
    Tiers: second, minute, hour, day or any <N>s|m|h|d window (e.g. 10s, 15m); a limit is a whole
    number (0 stops dispatch) or auto:MAX (learned from the API's answers, never above MAX).
    The stage's own item also takes concurrency=N (calls in flight at once), margin_ms=N (safety
    margin added to every window), aligned=day (calendar-aligned tiers, comma-separated),
    latency=low|cost, cost_header=NAME and signals_scope=stage|key.
    --key KEY also takes weight=N (1-1000: its share of the stage when keys compete).
    Examples:
      quota set second=5 minute=100 day=10000 concurrency=4
      quota set second=auto:50
      quota set --per-key minute=60
      quota set --key tenant-a minute=120 weight=2

    Tiers you do not name keep their value; when the stage has no quota item yet, `set` starts from
    the stage's default quotas, so the default tiers you do not name are kept. The new item is
    validated as a whole before it is written.
    """
    from throttler.core.quotas import apply_assignments, defaults_item, parse_assignments

    if key is not None and per_key:
        raise Invalid("--key and --per-key exclude each other: set one key's override, or every key's default")
    _check_key(key)
    pairs = parse_assignments(assignments)
    _precheck(pairs, key)
    aws = _aws(stage)
    control, defaults, _ = _quota_state(aws)
    if control.quotas is not None:
        base = dict(control.quotas)
    else:
        base = defaults_item(defaults.default_quotas or "") or {}
        if not defaults.known:
            click.echo(f"warning: the stage's default quotas are {defaults.source}: the new item holds only what you name",
                       err=True)
    item = apply_assignments(base, pairs, key=key, per_key=per_key)
    item["updated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    item["updated_by"] = f"cli:{_user()}"
    aws.store.put_quotas(item)
    what = f"key {key}'s quotas" if key is not None else ("per-key default quotas" if per_key else "quotas")
    click.echo(f"stage {aws.stage} {what} set (in force within 5 s):")
    _show_set(item, key, per_key)


def _show_set(item: Mapping[str, Any], key: str | None, per_key: bool) -> None:
    from throttler.core.quotas import parse_quota_item, plain_item
    from throttler_tools.status import configured_tiers

    config = parse_quota_item(item)
    aligned = {t.name for t in (*config.tiers, *config.per_key) if t.aligned}
    if key is not None:
        quota_of_key = config.key_quota(key)
        click.echo(f"  weight {quota_of_key.weight}")
        _print_tiers(configured_tiers(quota_of_key.tiers, None), aligned)
    elif per_key:
        _print_tiers(configured_tiers(config.per_key, None), aligned)
    else:
        plain = plain_item(item)
        _print_tiers(configured_tiers(config.tiers, None), aligned)
        if plain.get("concurrency") is not None:
            calls = "call " if plain["concurrency"] == 1 else "calls"
            click.echo(f"  {'concurrency':<12} {plain['concurrency']!s:>8} {calls} in flight at once")
        if plain.get("margin_ms") is not None:
            click.echo(f"  {'margin_ms':<12} {plain['margin_ms']!s:>8} ms added to every window")


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


# ---------------------------------------------------------------------------- pause / resume
@cli.command()
@click.option("--for", "duration", metavar="DURATION", help="How long: 90s, 10m, 2h, 1d (at most 365d). Default: until `resume`.")
@stage_option
def pause(duration: str | None, stage: str | None) -> None:
    """Stop dispatching (within 5 s); calls already sent finish. Jobs stay queued, their attempts untouched."""
    from throttler.dispatch.control import INDEFINITE_PAUSE_S
    from throttler_tools.status import clock_text, duration_text

    if duration is not None and not duration.strip():
        raise ConfigError("--for needs a duration (e.g. 10m); leave --for out to pause until `resume`")
    seconds = parse_duration(duration) if duration else INDEFINITE_PAUSE_S
    aws = _aws(stage)
    until = time.time() + seconds
    aws.store.set_pause(until, "operator", extend_only=False)
    how = f"for {duration_text(seconds)}, until {clock_text(until)}" if duration else f"until `{PROG} resume`"
    click.echo(f"stage {aws.stage} paused {how}: dispatch stops within 5 s; calls already sent finish")


NO_KEY_LABEL = "(no key)"


@cli.command()
@stage_option
def resume(stage: str | None) -> None:
    """Lift a pause (an operator's, or one a 429 started); dispatch restarts within 5 s."""
    click.echo(_aws(stage).resume(time.time()))


# ---------------------------------------------------------------------------- status
@cli.command()
@click.option("--key", metavar="KEY", help="Report this key only (its weight, backlog, tiers, drain).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
@stage_option
def status(key: str | None, as_json: bool, stage: str | None) -> None:
    """Queue depth, in flight, dead letters, limits (configured, learned, the API's), use per tier, what
    dispatch follows and why, pause, time to drain; the busiest keys, or one key.

    The time to drain paces the queued and in-flight jobs (1 unit each) through the limits from the use
    recorded so far, after any pause, ignoring retries and the API's own 429s: an estimate, not a promise.
    """
    from throttler_tools.status import status_report

    _check_key(key)
    aws = _aws(stage)
    report = status_report(aws.store, aws.queue, aws.names, time.time(), key=key, defaults=aws.defaults)
    if as_json:
        _echo_json(report)
    else:
        for line in status_lines(report):
            click.echo(line)


def _tier_use(name: str, entry: Mapping[str, Any]) -> str:
    limit = entry["learned"] if "learned" in entry else entry["limit"]
    text = f"{name} {entry['used']}/{limit if limit is not None else '?'}"
    if "learned" in entry:
        text += f" (learned, {entry['limit']})"
    return text


def _api_text(name: str, api: Mapping[str, Any]) -> str:
    from throttler_tools.status import count_text, duration_text

    parts = []
    if api["limit"] is not None:
        parts.append(f"{api['limit']} per {api['window_s']:g} s")
    if api["remaining"] is not None:
        parts.append(f"{count_text(int(api['remaining']), 'call')} left, resets in {duration_text(float(api['reset_s']))}")
    return f"{name}: " + ", ".join(parts)


def status_lines(report: Mapping[str, Any]) -> list[str]:
    """The report as text, one fact per line."""
    from throttler_tools.status import clock_text, count_text, drain_text, duration_text, rate_text

    queue, dlq, quota, pause = report["queue"], report["dlq"], report["quota"], report["pause"]
    lines = [f"stage {report['stage']}  ({clock_text(report['at'])})"]
    lines.append(f"  queue     {queue['waiting']} waiting, {queue['in_flight']} in flight or waiting to retry ({queue['name']})")
    lines.append(f"  dlq       {dlq['depth']} dead-lettered ({dlq['name']})")
    if quota["in_force"] is not None:
        source = quota["source"] + (f", {quota['defaults']}" if quota["source"] == "stage default" else "")
        lines.append(f"  quotas    {quota['in_force']} ({source})")
    else:
        lines.append(f"  quotas    none in force: {quota['error']}")
    if quota["error"] and quota["in_force"] is not None:
        lines.append(f"  warning   quota item invalid: {quota['error']}")
    if report["tiers"]:
        lines.append("  use       " + ", ".join(_tier_use(n, e) for n, e in report["tiers"].items()))
    apis = [_api_text(n, e["api"]) for n, e in report["tiers"].items() if "api" in e]
    if apis:
        said = report.get("api_said") or {}
        lines.append("  api says  " + "; ".join(apis) + (f" [{said['summary']}]" if said.get("summary") else ""))
    follows = report["follows"]
    if follows is not None:
        lines.append(f"  follows   {follows['why']} ({follows['by']}, {rate_text(follows['rate_per_s'])})")
    for name, history in report["history"].items():
        steps = ", ".join(f"{h['limit']} ({h['why']} {clock_text(h['at'])[11:19]})" for h in history[-5:])
        lines.append(f"  learned   {name}: {steps}")
    if pause["paused"]:
        if pause["until_resume"]:
            lines.append(f"  paused    until resume ({pause['reason']}): `{PROG} resume` lifts it")
        else:
            left = float(pause["until"]) - float(report["at"])
            lines.append(f"  paused    until {clock_text(pause['until'])}, {duration_text(left)} from now ({pause['reason']})")
    else:
        lines.append("  paused    no")
    if pause["keys"]:
        lines.append(f"  keys paused by a 429: {', '.join(pause['keys'])}")
    lines.append(f"  drain     {drain_text(report['drain'])}")
    keys = report["keys"]
    if keys:
        lines.append(f"  keys      {count_text(len(keys), 'key')} (backlog as the throttler last saw it):")
        width = min(24, max(len(k or NO_KEY_LABEL) for k in keys))
        for name, entry in keys.items():
            name = name or NO_KEY_LABEL  # jobs without a key share the stage as one more key
            backlog = "?" if entry["backlog"] is None else str(entry["backlog"])
            use = ", ".join(_tier_use(n, e) for n, e in entry["tiers"].items()) or "no tiers of its own"
            lines.append(f"    {_cut(name, width):<{width}}  weight {entry['weight']:<4} backlog {backlog:<6} {use}; "
                         f"drain {drain_text(entry['drain'])}")
    elif not report["keys_reported"]:
        lines.append("  keys      no per-key backlog reported yet")
    return lines


# ---------------------------------------------------------------------------- dlq
@cli.group(cls=CommandGroup)
def dlq() -> None:
    """Inspect the dead-letter queue and move its jobs back."""


def _cut(text: str, width: int) -> str:
    """One line of at most `width` characters; longer text ends with an ellipsis."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"


@dlq.command("list")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000), help="Show at most this many.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, with the full reason and body.")
@stage_option
def dlq_list(limit: int, as_json: bool, stage: str | None) -> None:
    """List dead-lettered jobs: job id, group, attempts and reason. They stay in the DLQ.

    Long values are cut to fit the terminal (…); --json gives them whole, with the body. FIFO shows at
    most 10 jobs per group at a time (a group's later messages appear once its earlier ones are gone).
    """
    from throttler.queue.dead_letters import DeadLetters

    aws = _aws(stage)
    letters = DeadLetters(aws.queue).peek(limit)
    if as_json:
        for letter in letters:
            _echo_json(letter.to_dict())
        return
    if not letters:
        click.echo(f"{aws.names.dlq} is empty")
        return
    for line in dlq_table(letters, shutil.get_terminal_size((120, 24)).columns):
        click.echo(line)


def dlq_table(letters: list[Any], columns: int) -> list[str]:
    """Fixed columns whatever the values: job id, group, attempts, then the reason in what is left."""
    id_w = min(36, max(6, *(len(letter.job_id or "-") for letter in letters)))
    group_w = min(20, max(5, *(len(letter.group) for letter in letters)))
    reason_w = max(24, columns - id_w - group_w - 8 - 6)
    lines = [f"{'job id':<{id_w}}  {'group':<{group_w}}  {'attempts':>8}  reason"]
    for letter in letters:
        attempts = "-" if letter.attempts is None else str(letter.attempts)
        lines.append(
            f"{_cut(letter.job_id or '-', id_w):<{id_w}}  {_cut(letter.group, group_w):<{group_w}}  "
            f"{attempts:>8}  {_cut(letter.error_reason, reason_w)}"
        )
    return lines


@dlq.command("redrive")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Move at most N jobs. Default: all.")
@stage_option
def dlq_redrive(limit: int | None, stage: str | None) -> None:
    """Move dead-lettered jobs back to the jobs queue, keeping their ids, group ids and order.

    Each job gets a fresh attempt count. Safe to interrupt and run again: each job is sent before it is
    deleted from the DLQ, with a deduplication id that SQS uses to drop a second copy.
    """
    from throttler.queue.dead_letters import DeadLetters
    from throttler_tools.status import count_text

    aws = _aws(stage)
    letters = DeadLetters(aws.queue)
    moved = letters.redrive(limit, reset_attempts=aws.store.reset_attempts)
    click.echo(f"redrove {count_text(moved, 'job')} from {aws.names.dlq} to {aws.names.jobs_queue}")
    if letters.too_large:
        click.echo(f"left {count_text(len(letters.too_large), 'job')} in the DLQ: within a few bytes of the 256 KiB limit, "
                   "a copy cannot carry its job id (its Idempotency-Key); resend it yourself", err=True)
