"""Every command of `python -m throttler`, in-process against a local stack (moto's server).

Each test names what a producer or an operator relies on; every validation error is exit 2 with one
line, every other failure exit 1 with one line.
"""

from __future__ import annotations

import json
import sys
import time
import types

import pytest

from tests.cli.conftest import Cli, last_json, one_line_error
from throttler.core.pacing import Pacer, Usage
from throttler.queue import DeadLetter, SqsJobQueue
from throttler.core.quotas import parse_quota_item

OK_URL = "http://127.0.0.1:8080/ok"


def payload(url: str = OK_URL) -> str:
    return json.dumps({"method": "POST", "url": url, "json": {"x": 1}})


GOOD_LINE = json.dumps({"task": "http", "payload": json.loads(payload()), "group": "g"})


# ----------------------------------------------------------------------------- help
@pytest.mark.parametrize(
    "command",
    [
        [],
        ["local"],
        ["demo"],
        ["enqueue"],
        ["quota"],
        ["quota", "show"],
        ["quota", "set"],
        ["pause"],
        ["resume"],
        ["status"],
        ["dlq"],
        ["dlq", "list"],
        ["dlq", "redrive"],
        ["bench"],
    ],
)
def test_every_command_explains_itself(run: Cli, command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0
    usage, summary = result.stdout.splitlines()[0], result.stdout.splitlines()[2]
    assert usage.startswith("Usage: ")
    assert summary.strip() and not summary.startswith(" " * 4), summary
    if command not in ([], ["quota"], ["dlq"]):
        assert "--help" in result.stdout


def test_subcommands_of_the_main_group_are_listed(run: Cli) -> None:
    result = run("--help")
    for name in ("local", "demo", "enqueue", "quota", "pause", "resume", "status", "dlq", "bench"):
        assert f"  {name} " in result.stdout


# ----------------------------------------------------------------------------- enqueue
def test_enqueue_one_job_keeps_group_and_id(run: Cli) -> None:
    result = run("enqueue", "--group", "customer-42", "--id", "job-1", "http", payload())
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "job-1"
    [message] = run.messages()
    assert message["Attributes"]["MessageGroupId"] == "customer-42"
    assert message["Attributes"]["MessageDeduplicationId"] == "job-1"
    body = json.loads(message["Body"])
    assert body == {"task": "http", "payload": json.loads(payload()), "id": "job-1"}


def test_enqueue_without_id_gets_a_fresh_one(run: Cli) -> None:
    first = run("enqueue", "-g", "g", "http", payload()).stdout.strip()
    second = run("enqueue", "-g", "g", "http", payload()).stdout.strip()
    assert first and second and first != second
    assert run.depth() == 2


def test_enqueue_reads_json_lines_from_stdin_in_order(run: Cli) -> None:
    lines = [
        json.dumps({"task": "http", "payload": json.loads(payload()), "group": f"g{i % 2}", "id": f"job-{i:02d}"})
        for i in range(13)
    ]
    result = run("enqueue", "-", input="\n".join(lines) + "\n\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [f"job-{i:02d}" for i in range(13)]
    assert "enqueued 13 jobs" in result.stderr
    assert run.depth() == 13
    # Each group's messages come back in the order they were sent.
    got = {g: [json.loads(m["Body"])["id"] for m in ms] for g, ms in run.take_all().items()}
    assert got == {"g0": [f"job-{i:02d}" for i in range(0, 13, 2)], "g1": [f"job-{i:02d}" for i in range(1, 13, 2)]}


def test_enqueue_stdin_lines_may_take_task_and_group_from_the_command(run: Cli) -> None:
    lines = "\n".join(json.dumps({"payload": json.loads(payload())}) for _ in range(3))
    result = run("enqueue", "--group", "customer-7", "http", "-", input=lines)
    assert result.exit_code == 0, result.output
    messages = run.messages()
    assert len(messages) == 3
    assert {m["Attributes"]["MessageGroupId"] for m in messages} == {"customer-7"}


def test_enqueue_sends_stdin_in_batches_of_ten(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    original = SqsJobQueue._call

    def spy(self: SqsJobQueue, operation: str, **kwargs: object) -> object:
        if operation == "send_message_batch":
            sizes.append(len(kwargs["Entries"]))  # type: ignore[arg-type]
        return original(self, operation, **kwargs)

    monkeypatch.setattr(SqsJobQueue, "_call", spy)
    lines = "\n".join(json.dumps({"task": "http", "payload": json.loads(payload()), "group": "g"}) for _ in range(23))
    assert run("enqueue", "-", input=lines).exit_code == 0
    assert sizes == [10, 10, 3]


@pytest.mark.parametrize(
    ("args", "stdin", "reason"),
    [
        (["enqueue", "--group", "g", "http", "{not json"], None, "PAYLOAD_JSON is not valid JSON"),
        (["enqueue", "--group", "g", "htp", payload()], None, "unknown task 'htp'"),
        (["enqueue", "--group", "g", "http", payload("https://evil.example.com/x")], None, "not in ALLOWED_HOSTS"),
        (["enqueue", "--group", "g", "http", json.dumps({"method": "POST"})], None, "url"),
        (["enqueue", "--group", "g", "http", json.dumps({"method": "FETCH", "url": OK_URL})], None, "method"),
        (["enqueue", "--group", "g", "http", "[1, 2]"], None, "payload"),
        (["enqueue", "http", payload()], None, "missing option --group"),
        (["enqueue", "--group", "two words", "http", payload()], None, "group must be"),
        (["enqueue", "--group", "g", "--id", "x" * 129, "http", payload()], None, "job id must be"),
        (["enqueue", "--group", "g", "http"], None, "missing PAYLOAD_JSON"),
        (["enqueue"], None, "missing TASK and PAYLOAD_JSON"),
        (["enqueue", "--id", "x", "-"], '{"task": "http"}', "--id applies to one job"),
        (["enqueue", "-"], "", "no jobs on stdin"),
        (["enqueue", "-"], GOOD_LINE + "\n{oops", "line 2: not valid JSON"),
        (["enqueue", "-"], json.dumps({"task": "http", "payload": json.loads(payload())}), "line 1: missing group"),
        (
            ["enqueue", "-"],
            json.dumps({"task": "http", "payload": {}, "group": "g", "colour": "red"}),
            "line 1: unknown key(s) colour",
        ),
        (["enqueue", "-"], "[1]", "line 1: a job must be a JSON object"),
        (["enqueue", "--bogus"], None, "No such option '--bogus'"),
        (["enqueue", "--group"], None, "requires an argument"),
        (["--stage", "no spaces!", "status"], None, "invalid stage name"),
    ],
)
def test_enqueue_refuses_a_bad_job_at_the_source(run: Cli, args: list[str], stdin: str | None, reason: str) -> None:
    result = run(*args, input=stdin)
    assert result.exit_code == 2, result.output
    assert reason in one_line_error(result)
    assert run.depth() == 0


def test_enqueue_refuses_a_job_over_the_size_limit(run: Cli) -> None:
    big = json.dumps({"method": "POST", "url": OK_URL, "data": "x" * 2000})
    result = run("enqueue", "--group", "g", "http", big, env={"MAX_MESSAGE_BYTES": "1024"})
    assert result.exit_code == 2
    assert "over the 1024-byte limit" in one_line_error(result)


def test_enqueue_from_stdin_sends_nothing_if_any_line_is_invalid(run: Cli) -> None:
    good = json.dumps({"task": "http", "payload": json.loads(payload()), "group": "g"})
    bad = json.dumps({"task": "http", "payload": json.loads(payload("https://elsewhere.example.com/")), "group": "g"})
    result = run("enqueue", "-", input="\n".join([good, good, bad, good]))
    assert result.exit_code == 2
    assert one_line_error(result).startswith("Error: line 3: host 'elsewhere.example.com'")
    assert run.depth() == 0


def test_enqueue_allowed_hosts_follow_the_environment(run: Cli) -> None:
    result = run(
        "enqueue",
        "-g",
        "g",
        "http",
        payload("https://api.partner.example/v1"),
        env={"ALLOWED_HOSTS": "other.partner.example,api.partner.example"},
    )
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------- quota
def test_quota_show_without_an_item_shows_the_stage_defaults(run: Cli) -> None:
    result = run("quota", "show")
    assert result.exit_code == 0
    assert "stage default" in result.stdout
    assert "second" in result.stdout and "minute" in result.stdout
    shown = last_json(run("quota", "show", "--json"))
    assert shown["quotas"] == {"second": 10, "minute": 300}
    assert shown["error"] is None


def test_quota_set_changes_only_the_named_tiers(run: Cli) -> None:
    result = run("quota", "set", "second=5", "minute=100", "day=10000", "concurrency=4")
    assert result.exit_code == 0, result.output
    item = run.store.read_control().quotas
    assert item is not None
    assert {k: int(item[k]) for k in ("second", "minute", "day", "concurrency")} == {
        "second": 5,
        "minute": 100,
        "day": 10000,
        "concurrency": 4,
    }
    assert item["updated_by"].startswith("cli:")

    assert run("quota", "set", "minute=off", "hour=2000").exit_code == 0
    shown = last_json(run("quota", "show", "--json"))["quotas"]
    assert {k: v for k, v in shown.items() if not k.startswith("updated")} == {
        "second": 5,
        "day": 10000,
        "hour": 2000,
        "concurrency": 4,
    }
    assert "state table" in run("quota", "show").stdout


def test_quota_set_without_an_item_keeps_the_unnamed_default_tiers(run: Cli) -> None:
    assert run("quota", "set", "day=5000").exit_code == 0
    config = parse_quota_item(run.store.read_control().quotas or {})
    assert {t.name: t.limit for t in config.tiers} == {"second": 10, "minute": 300, "day": 5000}


def test_quota_set_margin_and_alignment(run: Cli) -> None:
    assert run("quota", "set", "day=1000", "aligned=day", "margin_ms=40").exit_code == 0
    config = parse_quota_item(run.store.read_control().quotas or {})
    assert [t.name for t in config.tiers if t.aligned] == ["day"]
    assert config.margin_ms == 40
    assert "calendar-aligned" in run("quota", "show").stdout


@pytest.mark.parametrize(
    ("assignments", "reason"),
    [
        (["second=-1"], "second must be a whole number >= 0"),
        (["minute=1.5"], "minute must be a whole number >= 0"),
        (["second=ten"], "second must be a whole number"),
        (["seconds=5"], "unknown tier 'seconds'"),
        (["second"], "expected TIER=LIMIT"),
        (["concurrency=0"], "concurrency must be at least 1"),
        (["margin_ms=-5"], "margin_ms must be between 0 and 60000"),
        (["aligned=hour"], "aligned names tiers that are not set: hour"),
        (["second=off", "minute=off"], "at least one rate tier"),
        (["60s=5"], "two tiers have the same window length"),
        ([], "Missing argument 'TIER=LIMIT...'"),
    ],
)
def test_quota_set_refuses_invalid_limits(run: Cli, assignments: list[str], reason: str) -> None:
    result = run("quota", "set", *assignments)
    assert result.exit_code == 2, result.output
    assert reason in one_line_error(result)
    assert run.store.read_control().quotas is None


def test_quota_show_warns_about_an_item_edited_into_an_invalid_state(run: Cli) -> None:
    run.store.put_quotas({"second": -3})
    result = run("quota", "show")
    assert result.exit_code == 0
    assert "invalid" in result.stderr and "last good" in result.stderr
    assert last_json(run("quota", "show", "--json"))["error"] == "second must not be negative (-3)"


# ----------------------------------------------------------------------------- pause / resume
def test_pause_for_a_while_then_resume(run: Cli) -> None:
    before = time.time()
    result = run("pause", "--for", "10m")
    assert result.exit_code == 0, result.output
    control = run.store.read_control()
    assert control.pause_reason == "operator"
    assert control.pause_until is not None and before + 600 <= control.pause_until <= time.time() + 600
    assert run("resume").exit_code == 0
    assert run.store.read_control().pause_until is None


def test_pause_without_a_duration_lasts_until_resume(run: Cli) -> None:
    assert "until `python -m throttler resume`" in run("pause").stdout
    until = run.store.read_control().pause_until
    assert until is not None and until > time.time() + 365 * 86400
    status = last_json(run("status", "--json"))
    assert status["paused"] is True and status["pause_reason"] == "operator"
    assert "until resume" in run("status").stdout


def test_pause_replaces_a_longer_pause(run: Cli) -> None:
    run("pause")
    run("pause", "--for", "90s")
    until = run.store.read_control().pause_until
    assert until is not None and until < time.time() + 91


def test_resume_lifts_a_pause_a_429_started(run: Cli) -> None:
    run.store.set_pause(time.time() + 300, "429 from the API")
    assert run("resume").exit_code == 0
    assert run.store.read_control().pause_until is None


@pytest.mark.parametrize("duration", ["soon", "-5m", "0", "10w", "1.5.2h"])
def test_pause_refuses_an_invalid_duration(run: Cli, duration: str) -> None:
    result = run("pause", "--for", duration)
    assert result.exit_code == 2
    assert "invalid duration" in one_line_error(result)
    assert run.store.read_control().pause_until is None


# ----------------------------------------------------------------------------- status
def test_status_reports_depth_in_flight_dlq_limits_use_and_drain_time(run: Cli) -> None:
    queue = SqsJobQueue(run.sqs, run.jobs_url, run.dlq_url)
    queue.send([(json.dumps({"task": "http", "payload": {}}), f"g{i % 3}", f"j{i}") for i in range(30)])
    queue.receive(2, 60)  # two in flight
    queue.dead_letter([DeadLetter(m, "http 400", 1) for m in queue.receive(1, 60)])
    assert run("quota", "set", "second=5", "minute=120").exit_code == 0
    # 12 calls reserved in the last seconds
    usage = Usage()
    pacer = Pacer(parse_quota_item({"second": 5, "minute": 120}), usage)
    t = time.time() - 3
    for _ in range(12):
        slot = pacer.next_slot(t)
        assert slot is not None
        pacer.take(slot)
        t = slot
    assert run.store.save_usage(0, usage.to_json(), usage.last_slot)

    report = last_json(run("status", "--json"))
    assert report["queue"]["waiting"] == 27
    assert report["queue"]["in_flight"] == 2
    assert report["dlq"]["depth"] == 1
    assert report["quotas"]["second"] == 5 and report["quotas"]["minute"] == 120
    assert report["quota_source"] == "state table"
    assert report["use"]["minute"] == {"used": 12, "limit": 120}
    assert report["paused"] is False
    assert report["rate_per_s"] == pytest.approx(2.0, rel=0.01)  # minute=120 binds
    # 29 calls paced 0.2 s apart (second=5 plus its margin); minute=120 has room for them all.
    assert report["drain_eta_s"] == pytest.approx(28 * 1.004 / 5, abs=0.3)

    text = run("status").stdout
    assert "27 waiting, 2 in flight" in text
    assert "1 dead-lettered" in text
    assert "minute 12/120" in text
    assert "drain     ~" in text


def test_status_of_an_empty_stage_with_default_quotas(run: Cli) -> None:
    report = last_json(run("status", "--json"))
    assert report["queue"]["waiting"] == 0 and report["drain_eta_s"] == 0
    assert report["quota_source"] == "stage default"
    assert report["quotas"] == {"second": 10, "minute": 300}


def test_status_when_a_limit_is_zero_never_drains(run: Cli) -> None:
    run("enqueue", "-g", "g", "http", payload())
    run("quota", "set", "second=0")
    assert last_json(run("status", "--json"))["drain_eta_s"] is None
    assert "never" in run("status").stdout


def test_status_with_an_invalid_item_shows_the_last_good_configuration(run: Cli) -> None:
    run.store.put_last_good({"second": 3})
    run.store.put_quotas({"second": "lots"})
    report = last_json(run("status", "--json"))
    assert report["quota_error"] and "second" in report["quota_error"]
    assert report["quota_source"] == "last good configuration"
    assert report["quotas"] == {"second": 3}
    assert "quota item invalid" in run("status").stdout


# ----------------------------------------------------------------------------- dlq
def _dead_letter(run: Cli, bodies: list[tuple[str, str]], reason: str = "http 400", attempts: int = 1) -> None:
    queue = SqsJobQueue(run.sqs, run.jobs_url, run.dlq_url)
    queue.send([(body, group, None) for body, group in bodies])
    moved = 0
    while moved < len(bodies):  # FIFO: a group's next messages come once the earlier ones are gone
        batch = queue.receive(10, 60)
        assert batch
        queue.dead_letter([DeadLetter(m, reason, attempts) for m in batch])
        moved += len(batch)


def test_dlq_list_shows_group_reason_attempts_and_body(run: Cli) -> None:
    _dead_letter(
        run,
        [
            ('{"task": "http", "payload": {"n": 1}}', "customer-1"),
            ('{"task": "http", "payload": {"n": 2}}', "customer-2"),
        ],
        "attempts exhausted: http 503",
        3,
    )
    result = run("dlq", "list")
    assert result.exit_code == 0
    assert "customer-1" in result.stdout and "customer-2" in result.stdout
    assert result.stdout.count("attempts exhausted: http 503") == 2
    rows = [json.loads(line) for line in run("dlq", "list", "--json").stdout.splitlines()]
    assert sorted(r["group"] for r in rows) == ["customer-1", "customer-2"]
    assert {r["attempts"] for r in rows} == {3}
    assert {json.loads(r["body"])["payload"]["n"] for r in rows} == {1, 2}
    # Listing leaves them where they are, visible.
    assert run.depth(run.dlq_url) == 2
    assert len(run("dlq", "list", "--json").stdout.splitlines()) == 2


def test_dlq_list_of_an_empty_queue(run: Cli) -> None:
    result = run("dlq", "list")
    assert result.exit_code == 0 and "is empty" in result.stdout


def test_dlq_list_limit(run: Cli) -> None:
    _dead_letter(run, [(f'{{"task": "http", "payload": {{"n": {i}}}}}', f"g{i}") for i in range(5)])
    assert len(run("dlq", "list", "--json", "--limit", "3").stdout.splitlines()) == 3


def test_dlq_redrive_moves_jobs_back_with_their_groups_in_order(run: Cli) -> None:
    bodies = [(json.dumps({"task": "http", "payload": {"seq": i}}), "customer-9" if i < 12 else "customer-3") for i in range(14)]
    _dead_letter(run, bodies)
    result = run("dlq", "redrive")
    assert result.exit_code == 0, result.output
    assert "redrove 14 job(s)" in result.stdout
    assert run.depth(run.dlq_url) == 0
    got = {g: [json.loads(m["Body"])["payload"]["seq"] for m in ms] for g, ms in run.take_all().items()}
    assert got == {"customer-9": list(range(12)), "customer-3": [12, 13]}


def test_dlq_redrive_limit(run: Cli) -> None:
    _dead_letter(run, [(json.dumps({"task": "http", "payload": {"n": i}}), "g") for i in range(3)])
    assert "redrove 1 job(s)" in run("dlq", "redrive", "--limit", "1").stdout
    assert run.depth(run.dlq_url) == 2 and run.depth() == 1


def test_dlq_redrive_interrupted_after_sending_does_not_double_the_job(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    _dead_letter(run, [(json.dumps({"task": "http", "payload": {"n": 1}}), "g")])
    original = SqsJobQueue._call
    receipts: list[str] = []

    def interrupted_before_delete(self: SqsJobQueue, operation: str, **kwargs: object) -> object:
        if operation == "delete_message_batch" and kwargs["QueueUrl"] == run.dlq_url:
            receipts.extend(e["ReceiptHandle"] for e in kwargs["Entries"])  # type: ignore[attr-defined]
            raise KeyboardInterrupt  # the operator's Ctrl-C, between the send and the delete
        return original(self, operation, **kwargs)

    monkeypatch.setattr(SqsJobQueue, "_call", interrupted_before_delete)
    assert run("dlq", "redrive").exit_code == 1
    assert run.depth() == 1 and run.depth(run.dlq_url) == 1  # sent, not deleted: nothing lost
    monkeypatch.setattr(SqsJobQueue, "_call", original)
    # Its visibility timeout runs out (here at once) and the operator runs the command again.
    run.sqs.change_message_visibility(QueueUrl=run.dlq_url, ReceiptHandle=receipts[0], VisibilityTimeout=0)
    assert "redrove 1 job(s)" in run("dlq", "redrive").stdout
    assert run.depth(run.dlq_url) == 0
    assert run.depth() == 1  # SQS dropped the second copy: same deduplication id


def test_dlq_redriven_job_that_fails_again_reaches_the_dlq_again(run: Cli) -> None:
    _dead_letter(run, [(json.dumps({"task": "http", "payload": {"n": 1}}), "g")])
    run("dlq", "redrive")
    queue = SqsJobQueue(run.sqs, run.jobs_url, run.dlq_url)
    [again] = queue.receive(1, 60)
    queue.dead_letter([DeadLetter(again, "http 400", 1)])
    assert run.depth(run.dlq_url) == 1 and run.depth() == 0


# ----------------------------------------------------------------------------- bench
def test_bench_passes_its_options_to_the_benchmark(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    fake = types.ModuleType("throttler_tools.bench")

    def main(**kwargs: object) -> int:
        seen.update(kwargs)
        return 0

    fake.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "throttler_tools.bench", fake)
    monkeypatch.setattr("throttler_tools.bench", fake, raising=False)
    result = run("bench", "--json", "--full", "--jobs", "500", "--groups", "7", "--plot", "/tmp/b.png")
    assert result.exit_code == 0, result.output
    assert seen == {"jobs": 500, "groups": 7, "as_json": True, "full": True, "plot": "/tmp/b.png"}
    seen.clear()
    assert run("bench").exit_code == 0
    assert seen == {"jobs": None, "groups": None, "as_json": False, "full": False, "plot": None}


def test_bench_exit_code_comes_from_the_benchmark(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("throttler_tools.bench")
    fake.main = lambda **kwargs: 1  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "throttler_tools.bench", fake)
    monkeypatch.setattr("throttler_tools.bench", fake, raising=False)
    assert run("bench").exit_code == 1


def test_bench_without_the_benchmark_module_fails_in_one_line(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "throttler_tools.bench", None)  # import fails
    monkeypatch.delattr("throttler_tools.bench", raising=False)
    result = run("bench")
    assert result.exit_code == 1
    assert "the benchmark is not available" in one_line_error(result)


# ----------------------------------------------------------------------------- failures
def test_aws_unreachable_is_one_line_and_exit_1(run: Cli) -> None:
    from throttler_tools.local import port_is_free

    port = 1
    while not port_is_free(port + 40000):
        port += 1
    result = run("status", env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port + 40000}"})
    assert result.exit_code == 1
    assert "cannot reach http://127.0.0.1:" in one_line_error(result)
    assert "is `python -m throttler local` running?" in result.stderr


def test_a_stage_that_does_not_exist_is_one_line_and_exit_1(run: Cli) -> None:
    result = run("status", "--stage", "dev")
    assert result.exit_code == 1
    assert "queue throttler-dev-jobs.fifo does not exist" in one_line_error(result)
    result = run("quota", "show", env={"THROTTLER_STAGE": "staging"})
    assert result.exit_code == 1
    assert "throttler-staging-state" in one_line_error(result) or "ResourceNotFound" in result.stderr


def test_the_stage_comes_from_the_option_or_the_environment(run: Cli) -> None:
    assert run("--stage", "prod", "pause").exit_code == 1  # no such table on the local stack
    assert run("pause", env={"THROTTLER_STAGE": "prod"}).exit_code == 1
    assert run("pause", "--stage", "local", env={"THROTTLER_STAGE": "prod"}).exit_code == 0


def test_an_unknown_command_is_a_usage_error_in_one_line(run: Cli) -> None:
    result = run("drain")
    assert result.exit_code == 2
    assert "No such command 'drain'" in one_line_error(result)


def test_drain_estimate_paces_the_backlog_through_every_tier_and_waits_out_a_pause() -> None:
    from throttler_tools.cli import drain_eta_s

    config = parse_quota_item({"second": 10, "minute": 30, "margin_ms": 0})
    now = 1_000_000.0
    # 30 calls in the first 3 s, then the minute tier holds the rest until the first ones leave its window.
    assert drain_eta_s(config, Usage(), 30, now, 0.0) == pytest.approx(2.9, abs=0.01)
    assert drain_eta_s(config, Usage(), 40, now, 0.0) == pytest.approx(60.9, abs=0.2)
    assert drain_eta_s(config, Usage(), 40, now, 100.0) == pytest.approx(160.9, abs=0.2)
    assert drain_eta_s(config, Usage(), 0, now, 100.0) == 0.0
    assert drain_eta_s(parse_quota_item({"second": 0}), Usage(), 5, now, 0.0) is None
