"""AWS faults: DynamoDB throttling and conditional-check races, SQS errors, Lambda throttling, worker
timeouts. Errors moto cannot produce are injected with a client wrapper (as they surface once botocore's
own retries are spent) or with botocore's Stubber. Each case must end safely: retried later, nothing
lost or repeated, and nothing dispatched without a reservation.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from botocore.stub import Stubber
from throttler.invoker import LambdaInvoker, WorkerFailed, WorkerNotRun

from tests.conftest import Stage, http_job
from tests.reliability.conftest import (
    STAGE_TIERS,
    Campaign,
    Fault,
    Hook,
    Match,
    ReservationAudit,
    Rig,
    Scheduler,
    account,
    assert_lost_records_bounded,
    call_range,
    client_error,
    key_prefix,
    to_queue,
    wall_clock,
)
from throttler.core.pacing import Pacer, Usage
from throttler.core.quotas import defaults_item, parse_quota_item
from throttler.store import DynamoStateStore
from throttler.worker import WorkerService
from throttler_tools.fakeapi import max_in_window


def workload() -> list[tuple[str, str, str]]:
    """30 plain jobs in 6 groups, plus one that fails once before it succeeds."""
    jobs = [(http_job("/ok", f"g{i % 6}", i // 6), f"g{i % 6}", f"job-{i}") for i in range(30)]
    jobs.append((http_job("/flaky/1", "g0", 5), "g0", "flaky"))
    return jobs


def batch_get_of(prefix: str) -> Match:
    """BatchGetItem whose keys start with `prefix` ('quotas': the control read, 'done#': success records)."""

    def match(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> bool:
        return any(
            str(k["pk"]["S"]).startswith(prefix)
            for request in kwargs.get("RequestItems", {}).values()
            for k in request.get("Keys", [])
        )

    return match


def batch_write_of(prefix: str) -> Match:
    def match(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> bool:
        return any(
            str(w["PutRequest"]["Item"]["pk"]["S"]).startswith(prefix)
            for writes in kwargs.get("RequestItems", {}).values()
            for w in writes
        )

    return match


def drain_and_account(stage: Stage, hooks: list[Hook], audit: ReservationAudit, **rig: Any) -> tuple[Scheduler, Any]:
    scheduler = Scheduler(stage)
    scheduler.drain(lambda: Rig(stage, [audit, *hooks], **rig))
    tally = account(stage, [j[2] for j in workload()], tiers=STAGE_TIERS, audit=audit)
    return scheduler, tally


# (case, op, match, error code, which calls fail)
DYNAMO_AND_SQS = [
    ("dynamodb-throttled-reservation", "dynamodb.put_item", key_prefix("usage"),
     "ProvisionedThroughputExceededException", call_range(2, 4)),
    ("dynamodb-throttled-control-read", "dynamodb.batch_get_item", batch_get_of("quotas"),
     "ThrottlingException", call_range(1, 2)),
    ("dynamodb-throttled-lease", "dynamodb.put_item", key_prefix("lease"),
     "ThrottlingException", call_range(1, 1)),
    ("dynamodb-throttled-attempt-count", "dynamodb.update_item", key_prefix("attempts#"),
     "ProvisionedThroughputExceededException", call_range(1, 1)),
    ("dynamodb-throttled-success-lookup", "dynamodb.batch_get_item", batch_get_of("done#"),
     "ProvisionedThroughputExceededException", call_range(2, 3)),
    ("dynamodb-throttled-success-record", "dynamodb.batch_write_item", batch_write_of("done#"),
     "ProvisionedThroughputExceededException", call_range(3, 6)),
    ("dynamodb-internal-error-usage-load", "dynamodb.get_item", key_prefix("usage"),
     "InternalServerError", call_range(2, 2)),
    ("sqs-receive-error", "sqs.receive_message", None, "ServiceUnavailable", call_range(2, 3)),
    ("sqs-delete-error", "sqs.delete_message_batch", None, "InternalError", call_range(1, 2)),
    ("sqs-visibility-error", "sqs.change_message_visibility_batch", None, "RequestThrottled", call_range(1, 3)),
    ("sqs-dead-letter-send-error", "sqs.send_message_batch", "DLQ_URL", "KmsThrottled", call_range(1, 1)),
]


@pytest.mark.parametrize(
    ("case", "op", "match", "code", "calls"), [pytest.param(*c, id=c[0]) for c in DYNAMO_AND_SQS]
)
def test_fault_aws_errors_end_safely(
    stage: Stage, campaign: Campaign, case: str, op: str, match: Any, code: str, calls: Any
) -> None:
    started = wall_clock()
    jobs = workload()
    if case == "sqs-dead-letter-send-error":
        jobs.append(("{not json", "bad", "bad-0"))  # gives the DLQ something to receive
    stage.enqueue(jobs)
    audit = ReservationAudit(stage.clock)
    fault = Fault(op, calls, client_error(code), to_queue(match, stage) if isinstance(match, str) else match)

    scheduler = Scheduler(stage)
    scheduler.drain(lambda: Rig(stage, [audit, fault]))

    tally = account(stage, [j[2] for j in jobs], tiers=STAGE_TIERS, audit=audit)
    assert fault.injected > 0, f"{op} never failed: the case tested nothing"
    tally.assert_safe()
    assert audit.unreserved == 0 and audit.calls == tally.api_calls
    expected_dlq = {"bad-0"} if case == "sqs-dead-letter-send-error" else set()
    assert set(tally.dlq) == expected_dlq
    # The one real failure is counted once (not at all if counting it was what failed), and a fault
    # never costs a job an attempt it did not make.
    assert stage.store.get_attempts("flaky") == (0 if case == "dynamodb-throttled-attempt-count" else 1)
    assert all(stage.store.get_attempts(j[2]) == 0 for j in jobs if j[2] not in ("flaky", "bad-0"))
    outcome = f"{case}: {fault.injected} injected, {len(scheduler.failures)} run(s) ended by it"
    campaign.record(f"aws-{case.split('-')[0]}", tally, outcome, started=started)


class PartialDeletes:
    """An SQS client whose DeleteMessageBatch fails every other entry (as SQS reports an expired or
    stale receipt handle: in the response's Failed list, not as an error)."""

    def __init__(self, sqs: Any):
        self._sqs = sqs
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        kept, dropped = Entries[::2], Entries[1::2]
        response = dict(self._sqs.delete_message_batch(QueueUrl=QueueUrl, Entries=kept)) if kept else {}
        self.failed += len(dropped)
        failed = [{"Id": e["Id"], "SenderFault": True, "Code": "ReceiptHandleIsInvalid", "Message": "injected"}
                  for e in dropped]
        return {**response, "Failed": response.get("Failed", []) + failed}


def test_fault_sqs_delete_batch_partly_failing(stage: Stage, campaign: Campaign) -> None:
    started = wall_clock()
    jobs = workload()
    stage.enqueue(jobs)
    audit = ReservationAudit(stage.clock)
    clients: list[PartialDeletes] = []

    def partial(sqs: Any) -> PartialDeletes:
        clients.append(PartialDeletes(sqs) if len(clients) < 2 else sqs)  # the first two runs only
        return clients[-1]

    scheduler = Scheduler(stage)
    scheduler.drain(lambda: Rig(stage, [audit], wrap_sqs=partial))

    tally = account(stage, [j[2] for j in jobs], tiers=STAGE_TIERS, audit=audit)
    failed = sum(c.failed for c in clients if isinstance(c, PartialDeletes))
    assert failed > 0
    tally.assert_safe()  # the undeleted ones came back, were found already done, and were deleted unsent
    assert sum(s.duplicates for s in scheduler.summaries) > 0 and audit.unreserved == 0
    outcome = f"sqs-delete-partly-failing: {failed} deletes failed; found done later and deleted, not called"
    campaign.record("aws-sqs", tally, outcome, started=started)


class UsageRival(Hook):
    """Another writer reserves slots in the usage item just before some of the run's reservations,
    so the run's conditional write fails and it must reload and plan again."""

    def __init__(self, stage: Stage, every: int = 2, slots: int = 6):
        self.stage = stage
        self.every = every
        self.slots_each = slots
        self.seen = 0
        self.reserved: list[float] = []
        self.store = DynamoStateStore(stage.dynamodb, stage.env["STATE_TABLE"])  # untapped: no recursion
        self.config = parse_quota_item(defaults_item(stage.settings.default_quotas) or {})

    def before(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if op != "store.save_usage":
            return
        self.seen += 1
        if self.seen % self.every:
            return
        record = self.store.load_usage()
        usage = Usage.from_json(record.ledgers_json, record.last_slot)
        pacer = Pacer(self.config, usage)
        t = self.stage.clock.now()
        for _ in range(self.slots_each):
            slot = pacer.next_slot(t)
            assert slot is not None
            pacer.take(slot)
            self.reserved.append(slot)
            t = slot
        assert self.store.save_usage(record.version, usage.to_json(), usage.last_slot)


_max_in_window = max_in_window  # the fake API's own sliding-window count


def test_fault_dynamodb_conditional_check_race_on_the_usage_item(stage: Stage, campaign: Campaign) -> None:
    started = wall_clock()
    stage.enqueue(workload())
    audit = ReservationAudit(stage.clock)
    rival = UsageRival(stage)

    scheduler, tally = drain_and_account(stage, [rival], audit)

    conflicts = sum(s.reservation_conflicts for s in scheduler.summaries)
    assert conflicts > 0 and rival.reserved
    tally.assert_safe()
    # The rival's slots are calls another run makes: together with ours they stay within every tier.
    together = [c.at for c in stage.api.calls] + rival.reserved
    for window_s, limit in STAGE_TIERS:
        assert _max_in_window(together, window_s) <= limit
    assert set(tally.dlq) == set()
    outcome = f"usage-conditional-race: {conflicts} conflicts, replanned"
    campaign.record("aws-dynamodb-race", tally, outcome, started=started)


# ------------------------------------------------------------------------------------------ Lambda
class WorkerKilled(BaseException):
    """Lambda ended the worker (timeout): nothing after this point of the worker's code runs."""


class WorkerTimeout(Hook):
    """Armed by FakeLambda for one invocation: the worker is killed at its `at_call`-th API call, either
    before the call leaves or after the API answered but before the worker saw the answer. Once killed,
    nothing more of that worker runs (its `finally` cannot write records either), until disarmed."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.armed: tuple[int, str] | None = None
        self.killed = False
        self.calls = 0
        self.lost_keys: list[str] = []
        self.died_at: list[float] = []

    def arm(self, at_call: int, when: str) -> None:
        self.armed, self.calls, self.killed = (at_call, when), 0, False

    def disarm(self) -> None:
        self.armed, self.killed = None, False

    def _kill(self) -> None:
        self.killed = True
        self.died_at.append(self.clock.now())
        raise WorkerKilled

    def before(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.killed and op.split(".")[0] in ("api", "worker_store"):
            raise WorkerKilled
        if op == "api.request" and self.armed:
            self.calls += 1
            if self.armed == (self.calls, "before"):
                self._kill()

    def after(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        if op == "api.request" and self.armed == (self.calls, "after") and not self.killed:
            self.lost_keys.append(kwargs["headers"]["Idempotency-Key"])
            self._kill()


@dataclass
class LambdaPlan:
    """What happens to the n-th invocation of the worker function, counted across runs: 'throttled'
    (TooManyRequestsException), 'timeout-before' or 'timeout-after' (the worker is killed at its 2nd
    call and Lambda reports Task timed out); any other invocation runs normally."""

    fates: dict[int, str]
    invocations: int = 0


class FakeLambda:
    """The Lambda API's synchronous invoke of the worker function, in process."""

    def __init__(self, worker: WorkerService, stage: Stage, plan: LambdaPlan, timeout: WorkerTimeout):
        self.worker = worker
        self.stage = stage
        self.plan = plan
        self.timeout = timeout

    def invoke(self, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:
        self.plan.invocations += 1
        fate = self.plan.fates.get(self.plan.invocations, "ok")
        if fate == "throttled":
            error = {"Code": "TooManyRequestsException", "Message": "Rate Exceeded."}
            raise ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 429}}, "Invoke")
        started = self.stage.clock.now()
        if fate.startswith("timeout"):
            self.timeout.arm(2, fate.split("-", 1)[1])
        try:
            body = json.dumps(self.worker.run_batch(json.loads(Payload))).encode()
            error = None
        except WorkerKilled:
            timeout_s = self.stage.settings.worker_timeout_s
            self.stage.clock.sleep(started + timeout_s - self.stage.clock.now())  # Lambda waited it out
            error = "Unhandled"
            body = json.dumps({"errorMessage": f"Task timed out after {timeout_s:.2f} seconds"}).encode()
        finally:
            self.timeout.disarm()
        response: dict[str, Any] = {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(body), len(body))}
        if error:
            response["FunctionError"] = error
        return response


class InlineLambdaInvoker(LambdaInvoker):
    """LambdaInvoker's own invoke and error mapping, run in the caller's thread (virtual time)."""

    def submit(self, request: dict[str, Any]) -> Future[dict[str, Any]]:
        future: Future[dict[str, Any]] = Future()
        try:
            future.set_result(self._invoke(request))
        except Exception as exc:
            future.set_exception(exc)
        return future


LAMBDA_CASES = [
    ("lambda-throttled", {1: "throttled", 2: "throttled", 3: "throttled"}),
    ("worker-timeout-before-call", {1: "timeout-before", 3: "timeout-before"}),
    ("worker-timeout-response-lost", {1: "timeout-after", 4: "timeout-after"}),
]


@pytest.mark.parametrize(("case", "fates"), [pytest.param(*c, id=c[0]) for c in LAMBDA_CASES])
def test_fault_lambda_throttling_and_worker_timeouts(
    stage: Stage, campaign: Campaign, case: str, fates: dict[int, str]
) -> None:
    started = wall_clock()
    jobs = workload()
    stage.enqueue(jobs)
    audit = ReservationAudit(stage.clock)
    timeout = WorkerTimeout(stage.clock)
    plan = LambdaPlan(fates)

    def invoker_for(worker: WorkerService) -> InlineLambdaInvoker:
        return InlineLambdaInvoker(FakeLambda(worker, stage, plan, timeout), stage.settings.worker_function)

    scheduler = Scheduler(stage)
    scheduler.drain(lambda: Rig(stage, [audit, timeout], invoker_for=invoker_for))

    tally = account(stage, [j[2] for j in jobs], tiers=STAGE_TIERS, audit=audit)
    # Only calls whose success died with the worker go again: the one whose answer it never saw, and
    # successes whose records it had not written yet; each once, with the same Idempotency-Key.
    assert set(timeout.lost_keys) <= set(tally.repeated_keys)
    assert_lost_records_bounded(tally, stage.api, timeout.died_at)
    allowed = dict(tally.repeated_keys)
    tally.assert_safe(allowed)
    assert audit.unreserved == 0
    assert set(tally.dlq) == set()  # a throttled or timed-out worker never sends a job to the DLQ...
    if case == "lambda-throttled":  # ...and a throttled one spends no attempt
        assert all(stage.store.get_attempts(j[2]) == 0 for j in jobs if j[2] != "flaky")
    assert scheduler.failures == [] and plan.invocations > max(fates)
    outcome = f"{case}: {len(fates)} invocation(s) failed"
    campaign.record("aws-lambda", tally, outcome, repeated_same_key=sum(allowed.values()), started=started)


def test_fault_lambda_invoke_errors_map_to_worker_not_run_or_failed_with_stubber() -> None:
    """The real LambdaInvoker (thread pool and all) against botocore's Stubber: the error codes moto's
    Lambda cannot produce map to the outcomes the throttler relies on."""
    client = boto3.client("lambda", region_name="us-east-1")
    invoker = LambdaInvoker(client, "throttler-local-worker", max_in_flight=1)
    timed_out = b'{"errorMessage": "Task timed out after 40.00 seconds"}'
    ok = b'{"results": []}'
    with Stubber(client) as stub:
        stub.add_client_error("invoke", service_error_code="TooManyRequestsException", http_status_code=429)
        stub.add_response("invoke", {"StatusCode": 200, "FunctionError": "Unhandled",
                                     "Payload": StreamingBody(io.BytesIO(timed_out), len(timed_out))})
        stub.add_response("invoke", {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(ok), len(ok))})
        with pytest.raises(WorkerNotRun, match="TooManyRequestsException"):
            invoker.submit({"jobs": []}).result(timeout=30)
        with pytest.raises(WorkerFailed):
            invoker.submit({"jobs": []}).result(timeout=30)
        assert invoker.submit({"jobs": []}).result(timeout=30) == {"results": []}
        stub.assert_no_pending_responses()
    invoker.shutdown()
