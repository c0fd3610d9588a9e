"""Create a stage's queues and table from serverless.yml (moto in tests, the local stack's emulator).

Returns the functions' environment with `Ref` / `Fn::GetAtt` resolved against what was created.
"""

from __future__ import annotations

import json
from typing import Any

from throttler_tools.stackdef import stage_definition

SQS_ATTRIBUTES = (
    "FifoQueue",
    "ContentBasedDeduplication",
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "MaximumMessageSize",
    "SqsManagedSseEnabled",
    "KmsMasterKeyId",
    "DelaySeconds",
    "ReceiveMessageWaitTimeSeconds",
)


def _attr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _intrinsic(refs: dict[str, str], arns: dict[str, str]) -> Any:
    def intrinsic(value: Any) -> Any:
        if isinstance(value, dict) and "Ref" in value:
            return refs[value["Ref"]]
        if isinstance(value, dict) and "Fn::GetAtt" in value:
            logical, attribute = value["Fn::GetAtt"]
            if attribute != "Arn":
                raise KeyError(f"unsupported attribute {attribute}")
            return arns[logical]
        if isinstance(value, dict):
            return {k: intrinsic(v) for k, v in value.items()}
        return value

    return intrinsic


def provision_queues(sqs: Any, stage: str, definition: dict[str, Any] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Create the stage's queues through `sqs` (a boto3 client, or throttler.queue.MemorySqs, whose
    control plane has the same shape); returns ({logical id: queue URL}, {logical id: ARN})."""
    definition = definition or stage_definition(stage)
    resources: dict[str, dict[str, Any]] = definition["resources"]
    refs: dict[str, str] = {}
    arns: dict[str, str] = {}
    intrinsic = _intrinsic(refs, arns)
    queues = {k: v for k, v in resources.items() if v["Type"] == "AWS::SQS::Queue"}
    # Queues referenced by others (the DLQ) first.
    ordered = sorted(queues, key=lambda k: "RedrivePolicy" in queues[k]["Properties"])
    for logical in ordered:
        props = queues[logical]["Properties"]
        attributes = {k: _attr(props[k]) for k in SQS_ATTRIBUTES if k in props}
        if "RedrivePolicy" in props:
            attributes["RedrivePolicy"] = json.dumps(intrinsic(props["RedrivePolicy"]))
        url = sqs.create_queue(QueueName=props["QueueName"], Attributes=attributes)["QueueUrl"]
        refs[logical] = url
        arns[logical] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return refs, arns


def provision(sqs: Any, dynamodb: Any | None, stage: str) -> dict[str, str]:
    """Create the stage's queues (and its table, unless `dynamodb` is None: an in-memory store needs none);
    returns the functions' environment."""
    definition = stage_definition(stage)
    resources: dict[str, dict[str, Any]] = definition["resources"]
    refs, arns = provision_queues(sqs, stage, definition)
    intrinsic = _intrinsic(refs, arns)
    for logical, resource in resources.items():
        if resource["Type"] != "AWS::DynamoDB::Table":
            continue
        props = resource["Properties"]
        if dynamodb is None:
            refs[logical] = props["TableName"]
            arns[logical] = f"arn:aws:dynamodb:us-east-1:000000000000:table/{props['TableName']}"
            continue
        kwargs: dict[str, Any] = {
            "TableName": props["TableName"],
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
        }
        if "SSESpecification" in props:
            kwargs["SSESpecification"] = {"Enabled": bool(props["SSESpecification"].get("SSEEnabled"))}
        table = dynamodb.create_table(**kwargs)["TableDescription"]
        if props.get("TimeToLiveSpecification"):
            dynamodb.update_time_to_live(TableName=props["TableName"], TimeToLiveSpecification={
                "AttributeName": props["TimeToLiveSpecification"]["AttributeName"], "Enabled": True})
        refs[logical] = props["TableName"]
        arns[logical] = table["TableArn"]
    env = {k: intrinsic(v) for k, v in definition["environment"].items()}
    return {k: _attr(v) for k, v in env.items()}
