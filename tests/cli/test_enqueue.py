"""`enqueue`: a producer's jobs reach the queue exactly as given, or nothing is sent and the reason is one line."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import Cli, one_line_error
from throttler.queue import SqsJobQueue

OK_URL = "http://127.0.0.1:8080/ok"


def payload(url: str = OK_URL) -> str:
    return json.dumps({"method": "POST", "url": url, "json": {"x": 1}})


GOOD_LINE = json.dumps({"task": "http", "payload": json.loads(payload()), "group": "g"})


def test_enqueue_one_job_keeps_group_and_id(run: Cli) -> None:
    result = run("enqueue", "--group", "customer-42", "--id", "job-1", "http", payload())
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "job-1"
    [message] = run.messages()
    assert message["Attributes"]["MessageGroupId"] == "customer-42"
    assert message["Attributes"]["MessageDeduplicationId"] == "job-1"
    body = json.loads(message["Body"])
    assert body == {"task": "http", "payload": json.loads(payload()), "id": "job-1"}


def test_enqueue_with_a_quota_key_and_cost(run: Cli) -> None:
    result = run("enqueue", "-g", "g", "--id", "j", "--key", "tenant-a", "--cost", "5", "http", payload())
    assert result.exit_code == 0, result.output
    [message] = run.messages()
    assert json.loads(message["Body"]) == {"task": "http", "payload": json.loads(payload()), "id": "j",
                                           "key": "tenant-a", "cost": 5}


def test_enqueue_without_id_gets_a_fresh_one(run: Cli) -> None:
    first = run("enqueue", "-g", "g", "http", payload()).stdout.strip()
    second = run("enqueue", "-g", "g", "http", payload()).stdout.strip()
    assert first and second and first != second
    assert run.depth() == 2


def test_enqueue_reads_job_lines_from_stdin_in_order(run: Cli) -> None:
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


def test_enqueue_job_lines_may_take_task_group_key_and_cost_from_the_command(run: Cli) -> None:
    lines = "\n".join([
        json.dumps({"payload": json.loads(payload())}),
        json.dumps({"payload": json.loads(payload()), "key": "own-key", "cost": 2, "group": "own-group"}),
    ])
    result = run("enqueue", "--group", "customer-7", "--key", "k", "--cost", "3", "http", "-", input=lines)
    assert result.exit_code == 0, result.output
    bodies = {m["Attributes"]["MessageGroupId"]: json.loads(m["Body"]) for m in run.messages()}
    assert bodies["customer-7"]["key"] == "k" and bodies["customer-7"]["cost"] == 3
    assert bodies["own-group"]["key"] == "own-key" and bodies["own-group"]["cost"] == 2


def test_enqueue_reads_bare_payload_lines_when_task_is_given(run: Cli) -> None:
    """The README's `payloads.jsonl`: one http payload per line, the task and group on the command line."""
    lines = "\n".join(json.dumps({"method": "GET", "url": f"{OK_URL}?n={i}"}) for i in range(3))
    result = run("enqueue", "--group", "customer-7", "--key", "k", "http", "-", input=lines)
    assert result.exit_code == 0, result.output
    messages = run.take_all()["customer-7"]
    assert [json.loads(m["Body"])["payload"]["url"] for m in messages] == [f"{OK_URL}?n={i}" for i in range(3)]
    assert {json.loads(m["Body"])["task"] for m in messages} == {"http"}
    assert {json.loads(m["Body"])["key"] for m in messages} == {"k"}


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
        (["enqueue", "--group", "g", "--key", "k" * 129, "http", payload()], None, "--key must be 1-128"),
        (["enqueue", "--group", "g", "--key", "", "http", payload()], None, "--key must be 1-128"),
        (["enqueue", "--group", "g", "--cost", "0", "http", payload()], None, "Invalid value for '--cost'"),
        (["enqueue", "--group", "g", "--cost", "-3", "http", payload()], None, "Invalid value for '--cost'"),
        (["enqueue", "--group", "g", "--cost", "1" * 46, "http", payload()], None, "Invalid value for '--cost'"),
        (["enqueue", "--group", "g", "--cost", "two", "http", payload()], None, "Invalid value for '--cost'"),
        (["enqueue", "--group", "g", "http"], None, "missing PAYLOAD_JSON"),
        (["enqueue"], None, "missing TASK and PAYLOAD_JSON"),
        (["enqueue", "--id", "x", "-"], '{"task": "http"}', "--id applies to one job"),
        (["enqueue", "-"], "", "no jobs on stdin"),
        (["enqueue", "-"], GOOD_LINE + "\n{oops", "line 2: not valid JSON"),
        (["enqueue", "-"], json.dumps({"task": "http", "payload": json.loads(payload())}), "line 1: missing group"),
        (["enqueue", "-"], json.dumps({"task": "http", "payload": {}, "group": "g", "colour": "red"}),
         "line 1: unknown key(s) colour"),
        (["enqueue", "-"], "[1]", "line 1: a job must be a JSON object"),
        # A bare payload line needs TASK; without it, the reason says so and how to give it.
        (["enqueue", "--group", "g", "-"], json.dumps({"method": "GET", "url": OK_URL}),
         "line 1: a payload line (no \"task\" or \"payload\") needs TASK on the command line"),
        (["enqueue", "http", "-"], json.dumps({"method": "GET", "url": OK_URL}), "line 1: missing group"),
        (["enqueue", "--group", "g", "http", "-"], json.dumps({"method": "GET", "url": "https://evil.example/"}),
         "line 1: host 'evil.example' is not in ALLOWED_HOSTS"),
        (["enqueue", "-"], json.dumps({"task": "http", "payload": json.loads(payload()), "group": "g", "cost": 0}),
         "line 1: envelope cost"),
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
    result = run("enqueue", "-g", "g", "http", payload("https://api.partner.example/v1"),
                 env={"ALLOWED_HOSTS": "other.partner.example,api.partner.example"})
    assert result.exit_code == 0, result.output


def test_enqueue_allowed_hosts_come_from_the_stage_when_the_environment_has_none(run: Cli) -> None:
    """serverless.yml's `allowedHosts` of stage local (the throttler's published settings, once it ran)."""
    assert run("enqueue", "-g", "g", "http", payload("http://localhost:9999/x")).exit_code == 0
    refused = run("enqueue", "-g", "g", "http", payload("https://api.example.com/x"))
    assert refused.exit_code == 2 and "not in ALLOWED_HOSTS" in one_line_error(refused)


def test_enqueue_with_the_stage_settings_unknown_warns_that_hosts_are_not_checked(
    run: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed CLI (no serverless.yml) before the stage's first run: the job is sent, with a warning."""
    monkeypatch.setattr("throttler_tools.status.serverless_yml_defaults", lambda stage: None)
    result = run("enqueue", "-g", "g", "http", payload("https://api.example.com/x"))
    assert result.exit_code == 0, result.output
    assert "warning: hosts not checked here" in result.stderr
    assert run.depth() == 1


def test_enqueue_to_a_stage_that_is_not_deployed_says_so(run: Cli) -> None:
    result = run("enqueue", "-g", "g", "--stage", "dev", "http", payload())
    assert result.exit_code == 1
    assert "queue throttler-dev-jobs.fifo does not exist: is the stage deployed (or the local stack running)?" in (
        one_line_error(result))
