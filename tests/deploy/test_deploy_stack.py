"""The packaged dev stack deployed into moto's CloudFormation the way `osls deploy` does it (create the stack,
upload the code zip, update the stack), then a pipeline run against the resources that came up, configured
only by the deployed functions' environment: proves that the template and the code agree on names, keys,
attributes and ARNs, and that each role allows what its function calls.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import json
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from freezegun import freeze_time
from moto import mock_aws

from tests.deploy.conftest import Packaged
from tests.deploy.iam_eval import Call, allowed
from throttler.queue import SqsJobQueue
from throttler.settings import Settings
from throttler.store import DynamoStateStore, DynamoWorkerRecords
from throttler.store.base import TTL_ATTRIBUTE
from throttler_tools.fakeapi import FakeApi
from throttler_tools.sim.world import Backends, World, WorldConfig
from throttler_tools.stackdef import stage_definition

STAGE = "dev"
STACK = f"throttler-{STAGE}"
REGION = "us-east-1"
START = "2026-03-02 09:00:00"
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
# Resource types moto's CloudFormation does not implement (it skips them with a warning); their wiring is
# checked on the templates instead (tests/deploy/test_package.py).
MOTO_UNSUPPORTED = {"AWS::S3::BucketPolicy", "AWS::SNS::TopicPolicy", "AWS::CloudWatch::Alarm",
                    "AWS::Lambda::EventInvokeConfig"}
CLIENTS = ("cloudformation", "s3", "sqs", "dynamodb", "lambda", "iam", "logs", "sns", "kms", "events")
ACCOUNT = "123456789012"  # moto's

# moto warns about them again whenever it re-reads the stack.
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse .* not supported by moto:UserWarning")


def for_moto(template: dict[str, Any]) -> dict[str, Any]:
    """The template with one moto gap bridged: moto's KMS reads CloudFormation tags as TagKey/TagValue."""
    bridged = copy.deepcopy(template)
    for resource in bridged["Resources"].values():
        if resource["Type"] == "AWS::KMS::Key" and "Tags" in resource["Properties"]:
            tags = resource["Properties"]["Tags"]
            resource["Properties"]["Tags"] = [{"TagKey": t["Key"], "TagValue": t["Value"]} for t in tags]
    return bridged


@dataclass
class Deployed:
    frozen: Any
    clients: dict[str, Any]
    template: dict[str, Any]
    skipped_types: set[str]
    code_key: str
    code_size: int

    def client(self, name: str) -> Any:
        return self.clients[name]

    def function(self, name: str) -> dict[str, Any]:
        config: dict[str, Any] = self.clients["lambda"].get_function_configuration(FunctionName=f"{STACK}-{name}")
        return config

    def env(self, name: str) -> dict[str, str]:
        return dict(self.function(name)["Environment"]["Variables"])

    def physical_id(self, logical: str) -> str:
        # (moto's describe_stack_resource trips over the resources it skipped; the listing does not.)
        summaries = self.clients["cloudformation"].list_stack_resources(StackName=STACK)["StackResourceSummaries"]
        return next(str(r["PhysicalResourceId"]) for r in summaries if r.get("LogicalResourceId") == logical)

    def queue_attributes(self, url: str) -> dict[str, str]:
        response = self.clients["sqs"].get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
        return dict(response["Attributes"])


def _deploy(packaged: Packaged, clients: dict[str, Any]) -> tuple[set[str], str, int]:
    """What `osls deploy` does, step by step, against whatever endpoint the clients point at."""
    cf = clients["cloudformation"]
    stage_dir = packaged.stage_dir(STAGE)
    stack_tags = [{"Key": k, "Value": v} for k, v in packaged.state(STAGE)["service"]["provider"]["stackTags"].items()]
    update = packaged.template(STAGE)
    functions = [r for r in update["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    code_keys = {f["Properties"]["Code"]["S3Key"] for f in functions}
    assert len(code_keys) == 1  # one artifact for both functions (package.individually: false)
    code_key = code_keys.pop()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cf.create_stack(StackName=STACK, TemplateBody=json.dumps(packaged.template(STAGE, "create")),
                        Capabilities=CAPABILITIES, Tags=stack_tags)
        outputs = cf.describe_stacks(StackName=STACK)["Stacks"][0]["Outputs"]
        bucket = next(o["OutputValue"] for o in outputs if o["OutputKey"] == "ServerlessDeploymentBucketName")
        clients["s3"].upload_file(str(stage_dir / "throttler.zip"), bucket, code_key)
        cf.update_stack(StackName=STACK, TemplateBody=json.dumps(for_moto(update)),
                        Capabilities=CAPABILITIES, Tags=stack_tags)
    skipped = set()
    for warning in caught:
        found = re.search(r"Tried to parse (\S+) but it's not supported", str(warning.message))
        if found:
            skipped.add(found.group(1))
    return skipped, code_key, (stage_dir / "throttler.zip").stat().st_size


@pytest.fixture(scope="module")
def deployed(packaged: Packaged) -> Iterator[Deployed]:
    with freeze_time(START) as frozen, mock_aws():
        clients = {name: boto3.client(name, region_name=REGION) for name in CLIENTS}  # type: ignore[call-overload]
        skipped, code_key, code_size = _deploy(packaged, clients)
        yield Deployed(frozen, clients, packaged.template(STAGE), skipped, code_key, code_size)


def test_stack_is_created_then_updated_with_the_uploaded_code(deployed: Deployed) -> None:
    stack = deployed.client("cloudformation").describe_stacks(StackName=STACK)["Stacks"][0]
    assert stack["StackStatus"] == "UPDATE_COMPLETE"
    assert deployed.skipped_types <= MOTO_UNSUPPORTED
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["StateTableName"] == f"{STACK}-state"
    assert outputs["AlarmTopicArn"].endswith(f":{STACK}-alarms")
    for name in ("throttler", "worker"):
        assert deployed.function(name)["CodeSize"] == deployed.code_size
    assert deployed.code_key.startswith(f"serverless/throttler/{STAGE}/")


def test_functions_have_the_contract_names_handlers_runtime_and_own_roles(deployed: Deployed) -> None:
    throttler, worker = deployed.function("throttler"), deployed.function("worker")
    assert (throttler["FunctionName"], throttler["Handler"]) == (f"{STACK}-throttler", "handlers/throttler.handler")
    assert (worker["FunctionName"], worker["Handler"]) == (f"{STACK}-worker", "handlers/worker.handler")
    assert throttler["Runtime"] == worker["Runtime"] == "python3.12"
    env = deployed.env("throttler")
    assert throttler["Timeout"] > float(env["RUN_BUDGET_S"]) + float(env["WORKER_TIMEOUT_S"]) / 2
    lam = deployed.client("lambda")
    # Two: a run hands over to its successor without a gap; the lease keeps one dispatcher at a time.
    assert lam.get_function_concurrency(FunctionName=f"{STACK}-throttler")["ReservedConcurrentExecutions"] == 2
    assert throttler["Role"] != worker["Role"]
    iam = deployed.client("iam")
    assert throttler["Role"] == iam.get_role(RoleName=deployed.physical_id("ThrottlerRole"))["Role"]["Arn"]
    assert worker["Role"] == iam.get_role(RoleName=deployed.physical_id("WorkerRole"))["Role"]["Arn"]
    # Role names carry the region: the same stage in two regions does not collide (IAM names are global).
    for logical, name in (("ThrottlerRole", "throttler"), ("WorkerRole", "worker")):
        assert deployed.physical_id(logical) == f"{STACK}-{REGION}-{name}"


def test_the_schedule_runs_the_throttler_without_asynchronous_retries_and_drops_events_older_than_a_minute(
    deployed: Deployed,
) -> None:
    """What CloudFormation holds for the stack (moto's CloudFormation does not create EventInvokeConfig itself)."""
    body = deployed.client("cloudformation").get_template(StackName=STACK)["TemplateBody"]
    template = json.loads(body) if isinstance(body, str) else body
    configs = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::EventInvokeConfig"]
    assert len(configs) == 1
    config = configs[0]
    assert config["FunctionName"] == {"Ref": "ThrottlerLambdaFunction"} and config["Qualifier"] == "$LATEST"
    assert (config["MaximumRetryAttempts"], config["MaximumEventAgeInSeconds"]) == (0, 60)
    # The rule invokes the unqualified function, that is $LATEST: the configuration above is the one that applies.
    events = deployed.client("events")
    rule = deployed.physical_id("ThrottlerEventsRuleSchedule1")
    targets = events.list_targets_by_rule(Rule=rule)["Targets"]
    assert [t["Arn"] for t in targets] == [deployed.function("throttler")["FunctionArn"]]


def test_deployed_environment_names_the_resources_that_came_up(deployed: Deployed) -> None:
    env = deployed.env("throttler")
    assert deployed.env("worker") == env
    # Same variables as the local stack and the tests build from serverless.yml (throttler/stackdef.py).
    assert set(env) == set(stage_definition(STAGE)["environment"])
    settings = Settings.from_env(env)
    sqs, ddb = deployed.client("sqs"), deployed.client("dynamodb")
    assert settings.stage == STAGE
    assert settings.jobs_queue_url == sqs.get_queue_url(QueueName=f"{STACK}-jobs.fifo")["QueueUrl"]
    assert settings.dlq_url == sqs.get_queue_url(QueueName=f"{STACK}-dlq.fifo")["QueueUrl"]
    assert settings.worker_function == deployed.function("worker")["FunctionName"]
    assert settings.allowed_hosts == ("api.example.com",)
    assert settings.default_quotas == "second=5 minute=100 margin_ms=10"

    jobs, dlq = deployed.queue_attributes(settings.jobs_queue_url), deployed.queue_attributes(settings.dlq_url)
    assert jobs["FifoQueue"] == dlq["FifoQueue"] == "true"
    assert jobs["SqsManagedSseEnabled"] == dlq["SqsManagedSseEnabled"] == "true"
    assert dlq["MessageRetentionPeriod"] == "1209600"
    redrive = json.loads(jobs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
    assert int(redrive["maxReceiveCount"]) >= 100  # a crash safety net, not the retry policy

    table = ddb.describe_table(TableName=settings.state_table)["Table"]
    assert table["TableName"] == f"{STACK}-state"
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    # moto's CloudFormation does not apply TTL: the deployed template and the store must name the same attribute.
    ttl = deployed.template["Resources"]["StateTable"]["Properties"]["TimeToLiveSpecification"]
    assert ttl == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}


def _statements(deployed: Deployed, logical_role: str, policy: str) -> list[dict[str, Any]]:
    role = deployed.physical_id(logical_role)
    document = deployed.client("iam").get_role_policy(RoleName=role, PolicyName=policy)["PolicyDocument"]
    if isinstance(document, str):  # moto keeps the document CloudFormation gave it as a Python literal
        document = ast.literal_eval(document)
    return [dict(s) for s in document["Statement"]]


def _grants(statements: list[dict[str, Any]]) -> dict[str, set[str]]:
    """action -> resources it is allowed on."""
    grants: dict[str, set[str]] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in actions:
            # A log group's Arn attribute ends in ":*" on AWS (covering its streams) and not in moto.
            grants.setdefault(action, set()).update(r.removesuffix(":*") for r in resources)
    return grants


def test_each_role_allows_only_the_calls_its_function_makes_on_its_own_resources(deployed: Deployed) -> None:
    env = deployed.env("throttler")
    jobs_arn = deployed.queue_attributes(env["JOBS_QUEUE_URL"])["QueueArn"]
    dlq_arn = deployed.queue_attributes(env["DLQ_URL"])["QueueArn"]
    table_arn = deployed.client("dynamodb").describe_table(TableName=env["STATE_TABLE"])["Table"]["TableArn"]
    worker_arn = deployed.function("worker")["FunctionArn"]
    log_groups = deployed.client("logs").describe_log_groups()["logGroups"]
    groups = {g["logGroupName"]: g["arn"].removesuffix(":*") for g in log_groups}

    throttler = _grants(_statements(deployed, "ThrottlerRole", "throttler"))
    assert throttler == {
        "logs:CreateLogStream": {groups[f"/aws/lambda/{STACK}-throttler"]},
        "logs:PutLogEvents": {groups[f"/aws/lambda/{STACK}-throttler"]},
        "sqs:ReceiveMessage": {jobs_arn},
        "sqs:DeleteMessage": {jobs_arn},
        "sqs:ChangeMessageVisibility": {jobs_arn},
        "sqs:GetQueueAttributes": {jobs_arn, dlq_arn},
        "sqs:SendMessage": {dlq_arn},
        "dynamodb:GetItem": {table_arn},
        "dynamodb:PutItem": {table_arn},
        "dynamodb:UpdateItem": {table_arn},
        "dynamodb:DeleteItem": {table_arn},
        "dynamodb:BatchGetItem": {table_arn},
        "dynamodb:BatchWriteItem": {table_arn},
        "dynamodb:ConditionCheckItem": {table_arn},
        "lambda:InvokeFunction": {worker_arn},
    }

    statements = _statements(deployed, "WorkerRole", "worker")
    worker = _grants(statements)
    params_arn = f"arn:aws:ssm:{REGION}:123456789012:parameter/throttler/{STAGE}/*"
    assert worker == {
        "logs:CreateLogStream": {groups[f"/aws/lambda/{STACK}-worker"]},
        "logs:PutLogEvents": {groups[f"/aws/lambda/{STACK}-worker"]},
        "dynamodb:GetItem": {table_arn},
        "dynamodb:PutItem": {table_arn},
        "dynamodb:UpdateItem": {table_arn},
        "dynamodb:BatchGetItem": {table_arn},
        "dynamodb:BatchWriteItem": {table_arn},
        "ssm:GetParameter": {params_arn},
        "ssm:GetParameters": {params_arn},
        "kms:Decrypt": {f"arn:aws:kms:{REGION}:123456789012:key/*"},
    }
    # The one wildcard resource (a key id the template cannot know) only through SSM, for this stage's secrets.
    decrypt = next(s for s in statements if s["Action"] in ("kms:Decrypt", ["kms:Decrypt"]))
    assert decrypt["Condition"]["StringEquals"] == {"kms:ViaService": f"ssm.{REGION}.amazonaws.com"}
    assert decrypt["Condition"]["StringLike"] == {"kms:EncryptionContext:PARAMETER_ARN": params_arn}
    assert fnmatch.fnmatch(f"arn:aws:ssm:{REGION}:123456789012:parameter/throttler/{STAGE}/api-token", params_arn)
    # Every grant of the state table to the worker is fenced to its own items.
    state = [s for s in statements if any(a.startswith("dynamodb:") for a in s["Action"])]
    assert state and all(s["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["worker#*"]}}
                         for s in state), state


# Every kind of item in the state table (docs/DESIGN.md, "State table items").
STAGE_ITEMS = ("quotas", "quotas#last-good", "pause", "lease", "usage", "usage#key#acme", "attempts#job-1", "done#job-1")
WORKER_ITEMS = ("worker#batch#x", "worker#throttle")
WRITES = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem",
          "dynamodb:ConditionCheckItem")
READS = ("dynamodb:GetItem", "dynamodb:BatchGetItem")


def _table_arn(deployed: Deployed) -> str:
    name = deployed.env("worker")["STATE_TABLE"]
    return str(deployed.client("dynamodb").describe_table(TableName=name)["Table"]["TableArn"])


def test_the_worker_role_cannot_change_the_stages_state_only_its_own_items(deployed: Deployed) -> None:
    """Promise 8: whatever a message makes the worker do, it cannot write quotas, pause, lease or usage.

    Evaluated on the policies IAM holds for the deployed role, with their LeadingKeys condition."""
    worker = _statements(deployed, "WorkerRole", "worker")
    table = _table_arn(deployed)

    for pk in STAGE_ITEMS:
        for action in WRITES + READS:
            assert not allowed(worker, Call(action, table, {"dynamodb:LeadingKeys": [pk]})), (action, pk)
    for pk in WORKER_ITEMS:
        for action in ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem", *READS):
            assert allowed(worker, Call(action, table, {"dynamodb:LeadingKeys": [pk]})), (action, pk)
    # A batch is allowed only if every item in it is the worker's own.
    assert not allowed(worker, Call("dynamodb:BatchWriteItem", table, {"dynamodb:LeadingKeys": ["worker#batch#x", "usage"]}))
    # Calls that name no key (where ForAllValues would hold vacuously) are not granted at all; nor another table.
    for action in ("dynamodb:Scan", "dynamodb:Query", "dynamodb:PartiQLUpdate", "dynamodb:DeleteTable"):
        assert not allowed(worker, Call(action, table))
    other_table = table.replace(f"{STACK}-state", "throttler-prod-state")
    assert not allowed(worker, Call("dynamodb:PutItem", other_table, {"dynamodb:LeadingKeys": ["worker#batch#x"]}))


def test_the_throttler_role_can_write_every_item_of_its_own_table(deployed: Deployed) -> None:
    throttler = _statements(deployed, "ThrottlerRole", "throttler")
    table = _table_arn(deployed)
    for pk in STAGE_ITEMS + WORKER_ITEMS:
        for action in WRITES + READS:
            assert allowed(throttler, Call(action, table, {"dynamodb:LeadingKeys": [pk]})), (action, pk)
    assert not allowed(throttler, Call("dynamodb:Scan", table))


def test_deployed_resources_carry_service_stage_and_cost_tags(deployed: Deployed) -> None:
    expected = {"service": "throttler", "stage": STAGE, "cost-center": "throttler"}
    env = deployed.env("throttler")
    for url in (env["JOBS_QUEUE_URL"], env["DLQ_URL"]):
        assert deployed.client("sqs").list_queue_tags(QueueUrl=url)["Tags"] == expected
    table_arn = deployed.client("dynamodb").describe_table(TableName=env["STATE_TABLE"])["Table"]["TableArn"]
    tags = deployed.client("dynamodb").list_tags_of_resource(ResourceArn=table_arn)["Tags"]
    assert {t["Key"]: t["Value"] for t in tags} == expected
    for logical in ("ThrottlerRole", "WorkerRole"):
        tags = deployed.client("iam").list_role_tags(RoleName=deployed.physical_id(logical))["Tags"]
        assert {t["Key"]: t["Value"] for t in tags} == expected
    # (moto's CloudFormation drops the tags of functions, topics and keys: test_package.py checks them on the template.)


# Batch calls are authorised as their single forms.
BATCH_ACTIONS = {"DeleteMessageBatch": "DeleteMessage", "SendMessageBatch": "SendMessage",
                 "ChangeMessageVisibilityBatch": "ChangeMessageVisibility", "Invoke": "InvokeFunction"}
# A transaction is authorised item by item, each as its single form (there is no TransactWriteItems action).
TRANSACT_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem",
                    "Get": "GetItem"}
PARTITION_KEY = "pk"


def _arn(service: str, resource: str) -> str:
    return f"arn:aws:{service}:{REGION}:{ACCOUNT}:{resource}"


def _dynamodb_calls(operation: str, params: dict[str, Any]) -> list[Call]:
    """One IAM request per table, naming the partition key of every item the call touches (dynamodb:LeadingKeys)."""
    def pk(key: dict[str, Any]) -> str:
        return str(next(iter(key[PARTITION_KEY].values())))

    def call(action: str, table: str, keys: list[str]) -> Call:
        return Call(f"dynamodb:{action}", _arn("dynamodb", f"table/{table}"), {"dynamodb:LeadingKeys": keys} if keys else {})

    if operation in ("GetItem", "UpdateItem", "DeleteItem", "PutItem"):
        return [call(operation, params["TableName"], [pk(params.get("Key") or params["Item"])])]
    if operation == "BatchGetItem":
        return [call(operation, t, [pk(k) for k in r["Keys"]]) for t, r in params["RequestItems"].items()]
    if operation == "BatchWriteItem":
        return [call(operation, t, [pk(w.get("PutRequest", {}).get("Item") or w["DeleteRequest"]["Key"]) for w in ws])
                for t, ws in params["RequestItems"].items()]
    if operation in ("TransactWriteItems", "TransactGetItems"):
        calls = []
        for item in params["TransactItems"]:
            (kind, body), = item.items()
            calls.append(call(TRANSACT_ACTIONS[kind], body["TableName"], [pk(body.get("Key") or body["Item"])]))
        return calls
    return [call(operation, params.get("TableName", "*"), [])]  # Query, Scan...: no key in the request context


def _authorisations(service: str, operation: str, params: dict[str, Any]) -> list[Call]:
    """The IAM requests that one API call makes: action, resource ARN, and the condition keys this project uses."""
    if service == "dynamodb":
        return _dynamodb_calls(operation, params)
    action = f"{service}:{BATCH_ACTIONS.get(operation, operation)}"
    if service == "sqs":
        name = params["QueueUrl"].rstrip("/").rsplit("/", 1)[-1] if "QueueUrl" in params else params["QueueName"]
        return [Call(action, _arn("sqs", name))]
    if service == "lambda":
        return [Call(action, _arn("lambda", f"function:{params['FunctionName'].rsplit(':', 1)[-1]}"))]
    if service == "ssm":
        names = params.get("Names") or [params["Name"]]
        return [Call(action, _arn("ssm", f"parameter/{n.lstrip('/')}")) for n in names]
    raise NotImplementedError(f"{service}:{operation}")


def _recording_clients(actions: set[str], calls: list[Call] | None = None) -> dict[str, Any]:
    """Fresh clients on the same (moto) endpoint that note the IAM action of every call they make (and, in
    `calls`, every IAM request it makes, with its resource and keys)."""
    clients = {}
    for name in ("sqs", "dynamodb", "lambda", "ssm"):
        client = boto3.client(name, region_name=REGION)

        def note(model: Any, **_: Any) -> None:
            operation = BATCH_ACTIONS.get(model.name, model.name)
            actions.add(f"{model.service_model.signing_name}:{operation}")

        def authorise(params: dict[str, Any], model: Any, **_: Any) -> None:
            if calls is not None:
                calls.extend(_authorisations(model.service_model.signing_name, model.name, params))

        client.meta.events.register("before-call", note)
        client.meta.events.register("before-parameter-build", authorise)
        clients[name] = client
    return clients


@dataclass
class PipelineRun:
    api: FakeApi
    throttler_actions: set[str]
    worker_actions: set[str]
    throttler_calls: list[Call] = field(default_factory=list)
    worker_calls: list[Call] = field(default_factory=list)


def _run_pipeline(deployed: Deployed, jobs: list[tuple[str, str, str]]) -> PipelineRun:
    """Enqueue on the deployed queue, then scheduled runs in virtual time (the worker's state machine on its
    own clients) until the queue is empty. Each side gets only the deployed function's environment, and
    clients that record what it calls."""
    throttler_settings = Settings.from_env(deployed.env("throttler"))
    worker_settings = Settings.from_env(deployed.env("worker"))
    throttler_actions: set[str] = set()
    worker_actions: set[str] = set()
    throttler_calls: list[Call] = []
    worker_calls: list[Call] = []
    throttler_clients = _recording_clients(throttler_actions, throttler_calls)
    worker_clients = _recording_clients(worker_actions, worker_calls)

    def backends(clock: Any, stage: str) -> Backends:
        queue = SqsJobQueue(throttler_clients["sqs"], throttler_settings.jobs_queue_url, throttler_settings.dlq_url, clock)
        return Backends(queue, DynamoStateStore(throttler_clients["dynamodb"], throttler_settings.state_table),
                        DynamoWorkerRecords(worker_clients["dynamodb"], worker_settings.state_table), deployed.env("throttler"))

    config = WorldConfig(stage=STAGE, default_quotas=throttler_settings.default_quotas,
                         allowed_hosts=throttler_settings.allowed_hosts, start=time.time(),
                         latency_s=lambda rng: 0.05)  # a steady API: the dev stage's default margin is 4 ms
    world = World(config, backends=backends, on_advance=lambda s: deployed.frozen.tick(s))
    world.api.tiers = [(1, 5), (60, 100)]  # the dev stage's DEFAULT_QUOTAS, enforced by the API
    # The producer's send, not the throttler's: on clients that record nothing.
    SqsJobQueue(deployed.client("sqs"), throttler_settings.jobs_queue_url, throttler_settings.dlq_url).send(jobs)
    world.drain(timeout_s=900)
    return PipelineRun(world.api, throttler_actions, worker_actions, throttler_calls, worker_calls)


def _job(path: str, group: str, seq: int) -> tuple[str, str, str]:
    body = {"task": "http", "payload": {"method": "POST", "url": f"https://api.example.com{path}?group={group}&seq={seq}"}}
    return json.dumps(body), group, f"{group}-{seq}"


def test_pipeline_runs_on_the_deployed_stack_configured_by_its_environment(deployed: Deployed) -> None:
    """Nothing lost, order kept, quotas kept: jobs enqueued on the deployed queue all succeed once."""
    env = deployed.env("throttler")
    jobs = [_job("/v1/items", group, seq) for seq in range(8) for group in ("acme", "globex", "initech")]

    result = _run_pipeline(deployed, jobs)

    assert _depth(deployed, env["JOBS_QUEUE_URL"]) == 0
    assert _depth(deployed, env["DLQ_URL"]) == 0
    assert sorted(result.api.successes_by_key()) == sorted(job_id for _, _, job_id in jobs)
    assert set(result.api.successes_by_key().values()) == {1}
    assert result.api.violations == 0 and result.api.order_violations == 0
    # The workers' batch records landed in the deployed table, under their own key prefix, with the TTL
    # attribute they expire on; every job's success is in one of them.
    items = deployed.client("dynamodb").scan(TableName=env["STATE_TABLE"])["Items"]
    batches = [i for i in items if i["pk"]["S"].startswith("worker#batch#")]
    assert batches and all(TTL_ATTRIBUTE in i and "N" in i[TTL_ATTRIBUTE] for i in batches)
    assert {j for i in batches for j in i.get("ok", {}).get("SS", [])} == {job_id for _, _, job_id in jobs}
    # Everything each side called is allowed by its own role.
    assert result.throttler_actions <= set(_grants(_statements(deployed, "ThrottlerRole", "throttler")))
    assert result.worker_actions <= set(_grants(_statements(deployed, "WorkerRole", "worker")))


def test_failed_job_reaches_the_deployed_dlq_within_the_throttlers_grants(deployed: Deployed) -> None:
    env = deployed.env("throttler")
    before = _depth(deployed, env["DLQ_URL"])

    result = _run_pipeline(deployed, [_job("/status/404", "umbrella", 0), _job("/v1/items", "umbrella", 1)])

    assert _depth(deployed, env["JOBS_QUEUE_URL"]) == 0
    assert _depth(deployed, env["DLQ_URL"]) == before + 1
    assert "sqs:SendMessage" in result.throttler_actions
    assert result.throttler_actions <= set(_grants(_statements(deployed, "ThrottlerRole", "throttler")))
    assert result.worker_actions <= set(_grants(_statements(deployed, "WorkerRole", "worker")))


def _depth(deployed: Deployed, url: str) -> int:
    attributes = deployed.queue_attributes(url)
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture(scope="module")
def pipeline_run(deployed: Deployed) -> PipelineRun:
    return _run_pipeline(deployed, [_job("/v1/items", "hooli", seq) for seq in range(4)])


@pytest.mark.parametrize(("side", "role", "policy"), [
    ("throttler", "ThrottlerRole", "throttler"),
    ("worker", "WorkerRole", "worker"),
])
def test_every_call_of_the_pipeline_is_allowed_by_its_deployed_role_with_the_conditions(
    deployed: Deployed, pipeline_run: PipelineRun, side: str, role: str, policy: str
) -> None:
    """Each AWS request the pipeline makes, evaluated on the deployed policy: action, resource and LeadingKeys."""
    calls = pipeline_run.throttler_calls if side == "throttler" else pipeline_run.worker_calls
    if not any(c.action.startswith("dynamodb:") for c in calls):
        pytest.fail(f"the {side} made no state-table call: nothing was checked")
    statements = _statements(deployed, role, policy)
    denied = sorted({(c.action, c.resource, tuple(c.context.get("dynamodb:LeadingKeys", []))[:3])
                     for c in calls if not allowed(statements, c)})
    assert not denied, denied
