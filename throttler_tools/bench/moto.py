"""The real AWS adapters on moto: to validate the twins' request counts and to price the client side.

- `moto_throttler(...)`: the same BenchWorld scenario, but the throttler and the worker talk to moto
  through `SqsJobQueue`, `DynamoStateStore` and `DynamoWorkerRecords` with real boto3 clients; a
  `before-call.*.*` hook counts every request by service and action. Run at a small scale, its counts
  are compared with the counting twins' (tests/bench and `bench --json`'s `request_count_check`).
- `client_cpu_ms()`: what one request costs the function that makes it, on the client side (botocore
  builds, validates and signs the request and parses the response; moto's own work, between
  `before-send` and `before-parse`, is taken out), per action, measured over a few hundred requests with
  payloads like the benchmark's. The CPU per job of every strategy is its own code (measured in the
  simulation, twins excluded) plus its requests at these prices. `http:call` is the worker's side of one
  call to the API (requests and urllib3 on a kept-alive connection, against a local server; the server's
  own thread is not counted): the simulation's fake API has no client side to measure.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

from throttler_tools.bench.meters import TWIN, CpuMeter, Requests

REGION = "us-east-1"
FAKE_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION}


class ClientHooks:
    """Counts each request and the client-side CPU of each action (moto's work carved out)."""

    def __init__(self, meter: CpuMeter, requests: Requests):
        self.meter = meter
        self.requests = requests
        self.client_cpu: dict[tuple[str, str], float] = defaultdict(float)
        self.client_calls: Counter[tuple[str, str]] = Counter()
        self._stack: list[tuple[float, float]] = []

    def attach(self, client: Any) -> Any:
        events = client.meta.events
        events.register_first("provide-client-params.*.*", self._started)
        events.register("before-call.*.*", self._count)
        events.register_first("before-send.*.*", self._enter_emulator)
        events.register("before-parse.*.*", self._leave_emulator)
        events.register("after-call.*.*", self._ended)
        events.register("after-call-error.*.*", self._ended)
        return client

    def _started(self, **_: Any) -> None:
        self._stack.append((time.thread_time(), self.meter.totals.get(TWIN, 0.0)))

    def _count(self, event_name: str, **_: Any) -> None:
        service, action = event_name.split(".", 2)[1:]
        self.requests.add(service, action)

    def _enter_emulator(self, **_: Any) -> None:
        self.meter.enter(TWIN)

    def _leave_emulator(self, **_: Any) -> None:
        if self.meter.stack[-1] == TWIN:
            self.meter.leave()

    def _ended(self, event_name: str, **_: Any) -> None:
        if not self._stack:
            return
        started, twin_before = self._stack.pop()
        service, action = event_name.split(".", 2)[1:]
        if self.meter.stack[-1] == TWIN:  # an error before parsing
            self.meter.leave()
        spent = time.thread_time() - started - (self.meter.totals.get(TWIN, 0.0) - twin_before)
        key = (self.requests.caller, f"{service}:{action}")
        self.client_cpu[key] += spent
        self.client_calls[key] += 1


@contextmanager
def moto_aws() -> Iterator[Any]:
    """moto in process, on freezegun's clock (the caller ticks it), with the FIFO order fix."""
    from freezegun import config as freezegun_config
    from freezegun import freeze_time
    from moto import mock_aws

    from throttler_tools.moto_patches import patch_moto_fifo_order

    saved = list(freezegun_config.settings.default_ignore_list)
    import freezegun

    freezegun.configure(default_ignore_list=[])  # freezegun walks the stack on each clock read otherwise
    try:
        with (
            mock.patch.dict(os.environ, FAKE_ENV),
            freeze_time("2026-03-02 09:00:00") as frozen,
            mock_aws(config={"lambda": {"use_docker": False}}),
        ):
            os.environ.pop("AWS_ENDPOINT_URL", None)
            patch_moto_fifo_order()
            yield frozen
    finally:
        freezegun.configure(default_ignore_list=saved)


def moto_backends(stack: ExitStack) -> tuple[Callable[..., Any], dict[str, ClientHooks]]:
    """A BenchWorld backends factory on moto: the real adapters, with counted clients."""
    import boto3

    from throttler.queue import SqsJobQueue
    from throttler.store import DynamoStateStore, DynamoWorkerRecords
    from throttler_tools.moto_patches import quick_emulator
    from throttler_tools.provision import provision
    from throttler_tools.sim.world import Backends

    holder: dict[str, ClientHooks] = {}

    def backends(world: Any, clock: Any, stage: str) -> Backends:
        hooks = ClientHooks(world.meter, world.requests)
        holder["hooks"] = hooks
        stack.enter_context(quick_emulator(clock))
        sqs = hooks.attach(boto3.client("sqs", region_name=REGION))
        dynamodb = hooks.attach(boto3.client("dynamodb", region_name=REGION))
        env = provision(boto3.client("sqs", region_name=REGION), boto3.client("dynamodb", region_name=REGION), stage)
        table = env["STATE_TABLE"]
        return Backends(
            SqsJobQueue(sqs, env["JOBS_QUEUE_URL"], env["DLQ_URL"], clock, 262_144, 1_048_576),
            DynamoStateStore(dynamodb, table),
            DynamoWorkerRecords(dynamodb, table),
            env,
        )

    return backends, holder


# ---------------------------------------------------------------------------------------------- client CPU
def _worker_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
    return buffer.getvalue()


def client_cpu_ms(repeat: int = 200, batch_payload: bytes | None = None) -> dict[str, float]:
    """Client-side CPU milliseconds per request of each action the strategies make (see the module doc)."""
    import boto3

    from throttler_tools.bench.stage import bench_job

    meter, requests = CpuMeter(), Requests()
    hooks = ClientHooks(meter, requests)
    with moto_aws():
        sqs = hooks.attach(boto3.client("sqs", region_name=REGION))
        ddb = hooks.attach(boto3.client("dynamodb", region_name=REGION))
        lam = hooks.attach(boto3.client("lambda", region_name=REGION))
        admin = boto3.client("sqs", region_name=REGION)
        url = admin.create_queue(QueueName="calibrate.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
        table = "calibrate"
        boto3.client("dynamodb", region_name=REGION).create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        role = boto3.client("iam", region_name=REGION).create_role(RoleName="calibrate", AssumeRolePolicyDocument="{}")["Role"][
            "Arn"
        ]
        boto3.client("lambda", region_name=REGION).create_function(
            FunctionName="calibrate", Runtime="python3.12", Role=role, Handler="handler.handler", Code={"ZipFile": _worker_zip()}
        )
        system = ["MessageGroupId", "MessageDeduplicationId", "ApproximateReceiveCount", "SentTimestamp"]
        meter_json = json.dumps(
            {"l": {"60": [[11816280000 + i, 2] for i in range(400)], "1": [[708976800000 + i, 1] for i in range(20)]}},
            separators=(",", ":"),
        )
        payload = (
            batch_payload
            or json.dumps(
                {
                    "batch": "b" * 32,
                    "run": "r" * 32,
                    "jobs": [
                        {"id": f"job-{i:07d}", "group": f"g{i:05d}", "body": bench_job(f"g{i:05d}", i), "nb": 1.7e9, "na": 1.7e9}
                        for i in range(20)
                    ],
                }
            ).encode()
        )
        n = 0
        for round_ in range(repeat):
            entries = [
                {
                    "Id": str(i),
                    "MessageBody": bench_job(f"g{n + i}", 0),
                    "MessageGroupId": f"g{n + i}",
                    "MessageDeduplicationId": f"d{n + i}",
                }
                for i in range(10)
            ]
            n += 10
            sqs.send_message_batch(QueueUrl=url, Entries=entries)
            got = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=60,
                MessageSystemAttributeNames=system,
                MessageAttributeNames=["All"],
            )["Messages"]
            receipts = [m["ReceiptHandle"] for m in got]
            sqs.change_message_visibility_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 60} for i, r in enumerate(receipts[:5])],
            )
            sqs.delete_message(QueueUrl=url, ReceiptHandle=receipts[0])
            sqs.delete_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts[1:])]
            )
            pk = f"worker#batch#{round_}"
            ddb.put_item(
                TableName=table,
                Item={"pk": {"S": pk}, "run": {"S": "r"}, "claimed_at": {"N": "1.7e9"}},
                ConditionExpression="attribute_not_exists(pk)",
            )
            ddb.update_item(
                TableName=table,
                Key={"pk": {"S": pk}},
                UpdateExpression="ADD #ok :ok SET #final = :t",
                ExpressionAttributeNames={"#ok": "ok", "#final": "final"},
                ExpressionAttributeValues={":ok": {"SS": [f"job-{i}" for i in range(20)]}, ":t": {"BOOL": True}},
            )
            ddb.update_item(
                TableName=table,
                Key={"pk": {"S": "usage"}},
                UpdateExpression="SET #v = :v, meter = :m",
                ExpressionAttributeNames={"#v": "version"},
                ExpressionAttributeValues={":v": {"N": str(round_)}, ":m": {"S": meter_json}},
            )
            ddb.batch_get_item(
                RequestItems={
                    table: {"Keys": [{"pk": {"S": k}} for k in ("quotas", "pause", "lease", "usage", pk)], "ConsistentRead": True}
                }
            )
            ddb.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": table, "Item": {"pk": {"S": f"usage#key#k{i}"}, "meter": {"S": meter_json[:2000]}}}}
                    for i in range(3)
                ]
            )
            ddb.batch_write_item(
                RequestItems={table: [{"PutRequest": {"Item": {"pk": {"S": f"done#{round_}-{i}"}}}} for i in range(5)]}
            )
            ddb.delete_item(TableName=table, Key={"pk": {"S": f"done#{round_}-0"}})
            ddb.get_item(TableName=table, Key={"pk": {"S": "usage"}}, ConsistentRead=True)
            lam.invoke(FunctionName="calibrate", InvocationType="RequestResponse", Payload=payload)["Payload"].read()
            lam.invoke(FunctionName="calibrate", InvocationType="Event", Payload=payload[:600])
    out: dict[str, float] = {}
    for (_caller, action), spent in hooks.client_cpu.items():
        name = action
        if action == "lambda:Invoke":
            continue
        out[name] = round(1000 * spent / hooks.client_calls[(_caller, action)], 4)
    # The two kinds of invoke went through one action name: split them by measuring again, apart.
    out.update(_invoke_costs(repeat, payload))
    out["http:call"] = _http_call_ms(10 * repeat)
    return dict(sorted(out.items()))


def _http_call_ms(repeat: int) -> float:
    """Client-side CPU ms of one POST with a small JSON body on a kept-alive requests Session."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import requests

    class Api(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = b'{"ok":true}'
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/calibrate"
    body = json.dumps({"group": "g00001", "seq": 1, "payload": "x" * 200}).encode()
    try:
        with requests.Session() as session:
            for _ in range(20):  # the connection and the session's first-call set-up are not per call
                session.post(url, data=body, headers={"content-type": "application/json"}, timeout=5)
            started = time.thread_time()
            for _ in range(repeat):
                response = session.post(url, data=body, headers={"content-type": "application/json"}, timeout=5)
                response.content  # noqa: B018 - read the body, as the http task does
            return round(1000 * (time.thread_time() - started) / repeat, 4)
    finally:
        server.shutdown()
        server.server_close()


def _invoke_costs(repeat: int, payload: bytes) -> dict[str, float]:
    import boto3

    meter, requests = CpuMeter(), Requests()
    results = {}
    with moto_aws():
        role = boto3.client("iam", region_name=REGION).create_role(RoleName="calibrate", AssumeRolePolicyDocument="{}")["Role"][
            "Arn"
        ]
        boto3.client("lambda", region_name=REGION).create_function(
            FunctionName="calibrate", Runtime="python3.12", Role=role, Handler="handler.handler", Code={"ZipFile": _worker_zip()}
        )
        for kind, body in (("RequestResponse", payload), ("Event", payload[:600])):
            hooks = ClientHooks(meter, requests)
            lam = hooks.attach(boto3.client("lambda", region_name=REGION))
            for _ in range(repeat):
                response = lam.invoke(FunctionName="calibrate", InvocationType=kind, Payload=body)
                response["Payload"].read()
            (caller, action), spent = next(iter(hooks.client_cpu.items()))
            name = "lambda:Invoke" if kind == "RequestResponse" else "lambda:Invoke(Event)"
            results[name] = round(1000 * spent / hooks.client_calls[(caller, action)], 4)
    return results
