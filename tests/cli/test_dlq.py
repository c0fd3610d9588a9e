"""`dlq list` / `dlq redrive`: what was dead-lettered and why, in columns that hold; jobs moved back keep their
ids, groups and order, and start with a fresh attempt count."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import Cli
from throttler.queue import DeadLetter, SqsJobQueue
from throttler.queue.dead_letters import DeadLetterMessage
from throttler_tools.cli.operator import dlq_table


def _dead_letter(run: Cli, bodies: list[tuple[str, str]], reason: str = "http 400", attempts: int = 1,
                 ids: list[str] | None = None) -> None:
    queue = SqsJobQueue(run.sqs, run.jobs_url, run.dlq_url)
    queue.send([(body, group, ids[i] if ids else None) for i, (body, group) in enumerate(bodies)])
    moved = 0
    while moved < len(bodies):  # FIFO: a group's next messages come once the earlier ones are gone
        batch = queue.receive(10, 60)
        assert batch
        queue.dead_letter([DeadLetter(m, reason, attempts) for m in batch])
        moved += len(batch)


def test_dlq_list_shows_job_id_group_attempts_and_reason(run: Cli) -> None:
    _dead_letter(
        run,
        [('{"task": "http", "payload": {"n": 1}}', "customer-1"), ('{"task": "http", "payload": {"n": 2}}', "customer-2")],
        "attempts exhausted: http 503",
        3,
        ids=["order-1", "order-2"],
    )
    result = run("dlq", "list")
    assert result.exit_code == 0
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["job", "id", "group", "attempts", "reason"]
    assert sorted(r.split()[:3] for r in rows) == [["order-1", "customer-1", "3"], ["order-2", "customer-2", "3"]]
    assert result.stdout.count("attempts exhausted: http 503") == 2
    rows_json = [json.loads(line) for line in run("dlq", "list", "--json").stdout.splitlines()]
    assert sorted(r["group"] for r in rows_json) == ["customer-1", "customer-2"]
    assert sorted(r["job_id"] for r in rows_json) == ["order-1", "order-2"]
    assert {r["attempts"] for r in rows_json} == {3}
    assert {json.loads(r["body"])["payload"]["n"] for r in rows_json} == {1, 2}
    # Listing leaves them where they are, visible.
    assert run.depth(run.dlq_url) == 2
    assert len(run("dlq", "list", "--json").stdout.splitlines()) == 2


def test_dlq_list_columns_hold_with_long_reasons_and_ids(run: Cli) -> None:
    long_reason = "http 422 unprocessable: " + "the field 'x' is not valid\n" * 30
    _dead_letter(run, [('{"task": "http", "payload": {}}', "g" * 60)], long_reason, 2, ids=["j" * 100])
    result = run("dlq", "list", env={"COLUMNS": "100"})
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(len(line) <= 100 for line in lines)
    assert lines[1].endswith("…") and "\n" not in lines[1]
    assert lines[1].index("2") < lines[1].index("http 422")  # attempts stays in its column
    [full] = [json.loads(line) for line in run("dlq", "list", "--json").stdout.splitlines()]
    assert full["error_reason"].startswith("http 422 unprocessable") and len(full["error_reason"]) > 200
    assert full["job_id"] == "j" * 100


def test_dlq_table_keeps_every_column_in_place() -> None:
    letters = [
        DeadLetterMessage("m1", "customer-1", "http 400", 1, "job-1", "{}"),
        DeadLetterMessage("m2", "a-very-long-group-name-indeed", "x" * 500, None, None, "{}"),
    ]
    lines = dlq_table(letters, 80)
    assert all(len(line) <= 80 for line in lines)
    starts = [line.index("attempts") for line in lines[:1]]
    assert lines[1][starts[0]:starts[0] + 8].strip() == "1" and lines[2][starts[0]:starts[0] + 8].strip() == "-"
    assert "a-very-long-group-n…" in lines[2] and lines[2].endswith("…")


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
    assert "redrove 14 jobs from throttler-local-dlq.fifo to throttler-local-jobs.fifo" in result.stdout
    assert run.depth(run.dlq_url) == 0
    got = {g: [json.loads(m["Body"])["payload"]["seq"] for m in ms] for g, ms in run.take_all().items()}
    assert got == {"customer-9": list(range(12)), "customer-3": [12, 13]}


def test_dlq_redrive_gives_each_job_a_fresh_attempt_count_and_keeps_its_id(run: Cli) -> None:
    _dead_letter(run, [(json.dumps({"task": "http", "payload": {"n": 1}}), "g")], ids=["order-7"])
    run.store.add_attempt("order-7", 2e9)
    run.store.add_attempt("order-7", 2e9)
    assert run.store.get_attempts(["order-7"]) == {"order-7": 2}
    assert "redrove 1 job from" in run("dlq", "redrive").stdout
    assert run.store.get_attempts(["order-7"]) == {"order-7": 0}
    [message] = run.messages()
    assert json.loads(message["Body"])["id"] == "order-7"


def test_dlq_redrive_limit(run: Cli) -> None:
    _dead_letter(run, [(json.dumps({"task": "http", "payload": {"n": i}}), "g") for i in range(3)])
    assert "redrove 1 job from" in run("dlq", "redrive", "--limit", "1").stdout
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
    assert "redrove 1 job from" in run("dlq", "redrive").stdout
    assert run.depth(run.dlq_url) == 0
    assert run.depth() == 1  # SQS dropped the second copy: same deduplication id


def test_dlq_redriven_job_that_fails_again_reaches_the_dlq_again(run: Cli) -> None:
    _dead_letter(run, [(json.dumps({"task": "http", "payload": {"n": 1}}), "g")])
    run("dlq", "redrive")
    queue = SqsJobQueue(run.sqs, run.jobs_url, run.dlq_url)
    [again] = queue.receive(1, 60)
    queue.dead_letter([DeadLetter(again, "http 400", 1)])
    assert run.depth(run.dlq_url) == 1 and run.depth() == 0
