"""The dashboard over HTTP against an emulated stage: what it reports, what an operator can change from it (with
the CLI's validation and words), what it refuses, and the `dashboard` command. The browser test is
test_browser.py."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from tests.cli.conftest import Cli, one_line_error
from tests.dashboard.conftest import Served
from throttler.core.pacing import Ledger, Meter, Pacer
from throttler.core.quotas import parse_quota_item
from throttler.queue import SqsJobQueue
from throttler.store import ThrottleSignal
from throttler_tools.dashboard import serve_dashboard
from throttler_tools.dashboard.model import calls_per_second


def reserve(run: Cli, quotas: dict[str, Any], times: list[float]) -> None:
    """Reserve calls at these times through the store, as a throttler run does (the stage meter, fenced)."""
    usage = run.store.load_usage()
    pacer = Pacer(parse_quota_item(quotas), Meter.from_json(usage.stage_meter))
    for at in times:
        pacer.take(at)
    assert run.store.commit_usage(usage.version, pacer.stage.meter.to_json(), {}, {}, [])


def dead_letter(run: Cli, job_id: str, group: str, reason: str, attempts: int) -> None:
    run.sqs.send_message(
        QueueUrl=run.dlq_url, MessageBody=json.dumps({"task": "http", "payload": {}}), MessageGroupId=group,
        MessageDeduplicationId=f"dlq-{job_id}",
        MessageAttributes={"error_reason": {"DataType": "String", "StringValue": reason},
                           "attempts": {"DataType": "Number", "StringValue": str(attempts)},
                           "job_id": {"DataType": "String", "StringValue": job_id}},
    )


# ---------------------------------------------------------------------------------------------- pure figures
def test_calls_per_second_counts_each_whole_second_of_the_stages_ledger() -> None:
    ledger = Ledger(60)
    now = 1_000.5
    for at in (990.1, 990.2, 990.9, 999.0, 999.4, 1000.2, 1001.7):  # the last one is reserved ahead
        ledger.add(at)
    meter = Meter({"60": ledger})
    rate = calls_per_second(meter.to_json(), now)
    assert rate["start"] == 941 and len(rate["counts"]) == 60
    by_second = dict(zip(range(rate["start"], rate["start"] + 60), rate["counts"], strict=True))
    assert by_second[990] == 3 and by_second[999] == 2 and by_second[1000] == 1
    assert rate["reserved_ahead"] == 1
    assert rate["last_5s_per_s"] == pytest.approx(2 / 5)
    assert calls_per_second(None, now)["counts"] == [0] * 60


# ---------------------------------------------------------------------------------------------- reading
def test_the_page_script_and_styles_are_served_with_a_strict_content_policy(served: Served) -> None:
    status, headers, body = served.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "throttler" in page and served.server.token in page and "{{" not in page
    assert "script-src" not in headers["Content-Security-Policy"] and "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
    assert "127.0.0.1" in page and "no login of its own" in page.lower()
    for path, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        status, headers, _ = served.get(path)
        assert status == 200 and headers["Content-Type"].startswith(kind)
    assert served.get("/nope")[0] == 404


def test_state_shows_each_tiers_window_against_its_limit_as_calls_are_reserved(served: Served) -> None:
    quotas = {"second": 5, "minute": 100}
    served.cli.store.put_quotas(quotas)
    now = time.time()
    reserve(served.cli, quotas, [now - 30 + i * 0.25 for i in range(8)])
    state = served.state()
    assert state["error"] is None
    assert state["status"]["tiers"]["minute"] == {"limit": 100, "used": 8}
    assert state["status"]["tiers"]["second"]["used"] == 0
    assert sum(state["rate"]["counts"]) == 8
    reserve(served.cli, quotas, [now - 0.5, now - 0.3])
    assert served.state()["status"]["tiers"]["minute"]["used"] == 10
    assert [h["used"]["minute"] for h in served.state()["history"]][-1] == 10
    assert state["lease"] == {"held": False, "owner": None, "expires_in_s": None}
    assert "per group: not shown" in state["per_group"]


def test_state_shows_the_queue_the_dlq_and_the_dead_letters_with_their_reasons(served: Served) -> None:
    queue = SqsJobQueue(served.cli.sqs, served.cli.jobs_url, served.cli.dlq_url)
    queue.send([(json.dumps({"task": "http", "payload": {"url": "http://127.0.0.1/x"}}), "g1", f"j{i}") for i in range(3)])
    dead_letter(served.cli, "job-7", "customer-42", "http 404: permanent failure", 1)
    state = served.state()
    assert state["status"]["queue"]["waiting"] == 3 and state["status"]["dlq"]["depth"] == 1
    assert state["dead_letters"]["items"] == [
        {"job_id": "job-7", "group": "customer-42", "attempts": 1, "reason": "http 404: permanent failure"}]
    assert served.cli.depth(served.cli.dlq_url) == 1  # looked at, left in place (visible again at once)
    assert state["history"][-1]["waiting"] == 3


def test_state_says_why_when_the_stage_cannot_be_read(served: Served) -> None:
    served.cli.stack.client("dynamodb").delete_table(TableName=served.cli.names.state_table)
    state = served.state()
    assert "throttler-local-state does not exist: is the stage deployed" in state["error"]


def test_state_shows_a_429s_pause_and_the_operators(served: Served) -> None:
    served.cli.store.publish_throttle(ThrottleSignal(time.time(), 120.0, "batch-1"))
    pause = served.state()["status"]["pause"]
    assert pause["paused"] and pause["api"]["retry_after_s"] == 120 and pause["operator"] is None
    status, outcome = served.post("/api/pause", {"duration": "1h"})
    assert status == 200 and outcome["ok"]
    pause = served.state()["status"]["pause"]
    assert pause["operator"]["until"] > time.time() + 3500 and pause["api"] is not None


# ---------------------------------------------------------------------------------------------- acting
def test_pause_for_a_while_and_until_resume_then_resume_from_the_page(served: Served) -> None:
    before = time.time()
    status, outcome = served.post("/api/pause", {"duration": "10m"})
    assert status == 200 and outcome["ok"], outcome
    assert "stage local paused for ~10 min, until 20" in outcome["message"]
    control = served.cli.store.read_control()
    assert control.pause_reason == "operator" and before + 600 <= (control.pause_until or 0) <= time.time() + 600
    assert served.state()["status"]["pause"]["paused"]

    status, outcome = served.post("/api/pause", {"duration": ""})
    assert outcome["ok"] and "paused until resume" in outcome["message"]
    assert served.state()["status"]["pause"]["until_resume"]

    status, outcome = served.post("/api/resume", {})
    assert outcome == {"ok": True, "error": "", "message": "stage local resumed: lifted the operator's pause; dispatch "
                       "restarts within 5 s (the local stack's runs wait on a pause)"}
    assert served.cli.store.read_control().pause_until is None
    assert not served.state()["status"]["pause"]["paused"]
    assert served.post("/api/resume", {})[1]["message"] == "stage local was not paused: nothing to lift"


@pytest.mark.parametrize("args, body", [
    (["quota", "set", "second=abc"], {"assignments": "second=abc"}),
    (["quota", "set", "fortnight=5"], {"assignments": "fortnight=5"}),
    (["quota", "set", "second=5", "minute"], {"assignments": "second=5 minute"}),
    (["quota", "set", "minute=10000000000000000000000"], {"assignments": "minute=10000000000000000000000"}),
    (["quota", "set", "weight=2"], {"assignments": "weight=2"}),
    (["quota", "set", "--key", "tenant-a", "weight=0"], {"assignments": "weight=0", "scope": "key", "key": "tenant-a"}),
    (["quota", "set", "second=auto:0"], {"assignments": "second=auto:0"}),
])
def test_a_bad_tier_value_is_refused_with_the_clis_error_and_nothing_is_written(
    served: Served, args: list[str], body: dict[str, str]
) -> None:
    served.cli.store.put_quotas({"second": 5})
    cli_error = one_line_error(served.cli(*args))
    status, outcome = served.post("/api/quota", body)
    assert status == 400 and not outcome["ok"]
    assert cli_error == f"Error: {outcome['error']}"
    assert served.cli.store.read_control().quotas == {"second": 5}


def test_a_bad_pause_duration_is_refused_with_the_clis_error(served: Served) -> None:
    cli_error = one_line_error(served.cli("pause", "--for", "soon"))
    status, outcome = served.post("/api/pause", {"duration": "soon"})
    assert status == 400 and cli_error == f"Error: {outcome['error']}"
    assert served.cli.store.read_control().pause_until is None


def test_quota_set_from_the_page_changes_only_the_named_tiers(served: Served) -> None:
    served.cli.store.put_quotas({"second": 5, "minute": 100})
    status, outcome = served.post("/api/quota", {"assignments": "minute=240 hour=off"})
    assert status == 200 and outcome["ok"], outcome
    assert outcome["message"].startswith("stage local quotas set (in force within 5 s): ")
    item = served.cli.store.read_control().quotas or {}
    assert (item["second"], item["minute"]) == (5, 240) and item["updated_by"].startswith("dashboard:")
    assert served.state()["status"]["tiers"]["minute"]["limit"] == 240

    outcome = served.post("/api/quota", {"assignments": "minute=30 weight=3", "scope": "key", "key": "tenant-a"})[1]
    assert outcome["ok"] and "key tenant-a's quotas set" in outcome["message"]
    outcome = served.post("/api/quota", {"assignments": "minute=20", "scope": "per_key"})[1]
    assert outcome["ok"] and "per-key default quotas set" in outcome["message"]
    item = served.cli.store.read_control().quotas or {}
    assert item["keys"]["tenant-a"] == {"minute": 30, "weight": 3} and item["per_key"] == {"minute": 20}


def test_without_a_quota_item_set_starts_from_the_stages_defaults(served: Served) -> None:
    outcome = served.post("/api/quota", {"assignments": "second=3"})[1]
    assert outcome["ok"], outcome
    item = served.cli.store.read_control().quotas or {}
    assert (item["second"], item["minute"]) == (3, 300)  # minute=300: stage local's default in serverless.yml


def test_a_write_that_aws_refuses_shows_awss_reason(served: Served) -> None:
    message = ("User: arn:aws:iam::123456789012:user/viewer is not authorized to perform: dynamodb:PutItem on resource: "
               "arn:aws:dynamodb:us-east-1:123456789012:table/throttler-local-state")

    class Refused:
        status_code = 400

    def refuse(**_: Any) -> tuple[Any, dict[str, Any]]:
        return Refused(), {"Error": {"Code": "AccessDeniedException", "Message": message},
                           "ResponseMetadata": {"HTTPStatusCode": 400}}

    served.board.aws.client("dynamodb").meta.events.register("before-call.dynamodb.PutItem", refuse)
    status, outcome = served.post("/api/pause", {"duration": "5m"})
    assert status == 502 and not outcome["ok"]
    assert outcome["error"] == f"dynamodb put_item failed: AccessDeniedException: {message}"
    outcome = served.post("/api/quota", {"assignments": "second=2"})[1]
    assert "AccessDeniedException" in outcome["error"] and "dynamodb:PutItem" in outcome["error"]
    assert served.cli.store.read_control().pause_until is None


def test_a_read_only_dashboard_refuses_every_write(served: Served) -> None:
    served.board.read_only = True
    for path, body in (("/api/pause", {"duration": "1m"}), ("/api/resume", {}), ("/api/quota", {"assignments": "second=1"})):
        status, outcome = served.post(path, body)
        assert status == 403 and "read-only" in outcome["error"]
    assert served.state()["read_only"]
    assert served.cli.store.read_control().pause_until is None


def test_requests_another_site_could_forge_are_refused(served: Served) -> None:
    assert served.post("/api/pause", {"duration": "1m"}, {"X-Dashboard-Token": "guess"})[0] == 403
    status, _ = served.post("/api/pause", {}, {"Content-Type": "text/plain"})
    assert status == 415
    assert served.get("/api/state", {"Host": "evil.example:80"})[0] == 403  # a DNS-rebinding page
    assert served.post("/api/nope", {})[0] == 404
    assert served.post("/api/quota", {"scope": "everything", "assignments": "second=1"})[0] == 400
    request = urllib.request.Request(served.server.url + "api/pause", data=b"[1]", method="POST",
                                     headers={"Content-Type": "application/json", "X-Dashboard-Token": served.server.token})
    assert served._call(request)[0] == 400
    assert served.cli.store.read_control().pause_until is None


# ---------------------------------------------------------------------------------------------- serving
def test_serve_dashboard_takes_a_client_function_as_the_local_stack_has(run: Cli) -> None:
    server = serve_dashboard(run.stack.client, port=0)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url + "api/state", timeout=30) as response:
            state = json.loads(response.read())
        assert state["error"] is None and state["stage"] == "local"
    finally:
        server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)
    with pytest.raises(TypeError):
        serve_dashboard(42)


def test_the_dashboard_command_serves_the_stage_until_stopped(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from throttler_tools.cli import dashboard as command

    seen: dict[str, Any] = {}

    def serve_briefly(server: Any) -> None:
        server.start()
        try:
            with urllib.request.urlopen(server.url + "api/state", timeout=30) as response:
                seen.update(json.loads(response.read()))
        finally:
            server.stop()

    monkeypatch.setattr(command, "_serve_until_signal", serve_briefly)
    result = run("dashboard", "--port", "0", "--read-only")
    assert result.exit_code == 0, result.output
    assert "dashboard of stage local at http://127.0.0.1:" in result.stdout and "read-only" in result.stdout
    assert seen["read_only"] and seen["status"]["queue"]["name"] == "throttler-local-jobs.fifo"

    result = run("dashboard", "--port", "0", "--host", "0.0.0.0")
    assert result.exit_code == 0 and "no login of its own" in result.stderr


def test_the_dashboard_command_fails_in_one_line_when_the_stage_is_missing(run: Cli) -> None:
    run.stack.client("dynamodb").delete_table(TableName=run.names.state_table)
    result = run("dashboard", "--port", "0")
    assert result.exit_code == 1
    assert "does not exist: is the stage deployed" in one_line_error(result)


def test_the_dashboard_command_stops_on_sigint(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from throttler_tools.cli import dashboard as command

    class Server:
        started = stopped = False

        def start(self) -> None:
            self.started = True
            signal.raise_signal(signal.SIGINT)  # once serving (the handlers are in place by then): no timer race

        def stop(self) -> None:
            self.stopped = True

    server = Server()
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in the background (nohup)
    command._serve_until_signal(server)
    assert server.started and server.stopped
    assert signal.getsignal(signal.SIGINT) is before
