"""`make package` offline for every stage, and what the templates promise per stage (SPEC: Resources)."""

from __future__ import annotations

import json
import zipfile
from typing import Any

import boto3
import pytest

from tests.deploy.conftest import STAGES, Packaged
from throttler import observability
from throttler_tools.stackdef import params

TAG_KEYS = {"service", "stage", "cost-center"}


def test_make_package_passes_offline_with_clean_cfn_lint_and_checkov(packaged: Packaged) -> None:
    assert packaged.returncode == 0
    for stage in STAGES:
        if not packaged.reused:
            assert f"cfn-lint {stage}: clean" in packaged.output
            assert f"checkov {stage}: passed=" in packaged.output
        summary = json.loads((packaged.stage_dir(stage) / "checkov.json").read_text())["summary"]
        assert summary["failed"] == 0 and summary["parsing_errors"] == 0
        assert summary["passed"] > 30, summary


def test_code_zip_holds_handlers_library_and_arm64_requirements_only(packaged: Packaged) -> None:
    with zipfile.ZipFile(packaged.stage_dir("dev") / "throttler.zip") as zf:
        names = set(zf.namelist())
    assert {"handlers/throttler.py", "handlers/worker.py", "throttler/__init__.py"} <= names
    # (test_runtime_imports.py checks the zip's own code file by file, and that it starts with requirements.txt alone.)
    assert not any(n.startswith(("throttler_tools/", "tests/", "node_modules/", ".venv/", "scripts/")) for n in names)
    tops = {n.split("/", 1)[0] for n in names}
    assert {"requests", "tenacity", "aws_lambda_powertools", "pydantic", "boto3"} <= tops
    assert not {"moto", "pytest", "freezegun", "yaml"} & tops  # dev requirements stay out
    # Compiled wheels are the Lambda platform's (arm64, CPython 3.12), fetched without Docker.
    assert any(n.startswith("pydantic_core/") and n.endswith("cpython-312-aarch64-linux-gnu.so") for n in names)


def _resources(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def _alarm_key(alarm: dict[str, Any]) -> tuple[str, str, str]:
    """(namespace, metric, the function it watches, if any)."""
    functions = [d["Value"]["Ref"] for d in alarm["Dimensions"] if d["Name"] == "FunctionName"]
    return alarm["Namespace"], alarm["MetricName"], functions[0] if functions else ""


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_has_its_alarms_thresholds_retention_and_recovery(packaged: Packaged, stage: str) -> None:
    template = packaged.template(stage)
    stage_params = params(stage)
    alarms = _resources(template, "AWS::CloudWatch::Alarm")
    by_metric = {_alarm_key(a): a for a in (r["Properties"] for r in alarms.values())}
    assert len(by_metric) == len(alarms)
    dlq = by_metric[("AWS/SQS", "ApproximateNumberOfMessagesVisible", "")]
    assert dlq["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}
    assert (dlq["Threshold"], dlq["ComparisonOperator"]) == (0, "GreaterThanThreshold")
    age = by_metric[("AWS/SQS", "ApproximateAgeOfOldestMessage", "")]
    assert age["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["JobsQueue", "QueueName"]}
    assert age["Threshold"] == stage_params["oldestJobAlarmSeconds"]
    assert by_metric[("AWS/Lambda", "Errors", "ThrottlerLambdaFunction")]["Threshold"] == \
        stage_params["throttlerErrorsAlarmThreshold"]
    assert by_metric[("AWS/Lambda", "Errors", "WorkerLambdaFunction")]["Threshold"] == stage_params["workerErrorsAlarmThreshold"]
    assert by_metric[("AWS/Lambda", "Throttles", "WorkerLambdaFunction")]["Threshold"] == 1
    # The code's own metrics, with exactly the dimensions every metric carries (throttler/observability.py).
    for metric in ("InvalidQuotaConfig", "SecretsUnavailable"):
        alarm = by_metric[(observability.NAMESPACE, metric, "")]
        assert alarm["Dimensions"] == [{"Name": "service", "Value": observability.SERVICE},
                                       {"Name": observability.STAGE_DIMENSION, "Value": stage}]
        assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == \
            ("Sum", 1, "GreaterThanOrEqualToThreshold")
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}]
        assert alarm["Properties"]["OKActions"] == [{"Ref": "AlarmTopic"}]
        assert alarm["Properties"]["TreatMissingData"] == "notBreaching"
        assert alarm["Properties"]["AlarmName"].startswith(f"throttler-{stage}-")
    topic = template["Resources"]["AlarmTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "AlarmTopicKey"}
    assert template["Resources"]["AlarmTopicKey"]["Properties"]["EnableKeyRotation"] is True

    for group in _resources(template, "AWS::Logs::LogGroup").values():
        assert group["Properties"]["RetentionInDays"] == stage_params["logRetentionDays"]
    table = template["Resources"]["StateTable"]
    pitr = table["Properties"]["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"]
    assert pitr is (stage == "prod")
    assert table["DeletionPolicy"] == ("Retain" if stage == "prod" else "Delete")
    rule = next(iter(_resources(template, "AWS::Events::Rule").values()))["Properties"]
    assert (rule["ScheduleExpression"], rule["State"]) == ("rate(1 minute)", "ENABLED")


@pytest.mark.parametrize("stage", STAGES)
def test_the_schedule_has_no_async_retries_and_the_throttler_its_concurrency_timeout_and_budget(
    packaged: Packaged, stage: str
) -> None:
    template = packaged.template(stage)
    configs = _resources(template, "AWS::Lambda::EventInvokeConfig")
    assert [c["Properties"] for c in configs.values()] == [{
        "FunctionName": {"Ref": "ThrottlerLambdaFunction"}, "DestinationConfig": {}, "Qualifier": "$LATEST",
        "MaximumEventAgeInSeconds": 60, "MaximumRetryAttempts": 0,
    }]
    throttler = template["Resources"]["ThrottlerLambdaFunction"]["Properties"]
    env = throttler["Environment"]["Variables"]
    assert (throttler["ReservedConcurrentExecutions"], throttler["Timeout"], env["RUN_BUDGET_S"]) == (2, 350, "290")
    assert throttler["Timeout"] > float(env["RUN_BUDGET_S"]) + float(env["WORKER_TIMEOUT_S"])
    assert env["DEFAULT_LATENCY"] == ("low" if stage == "prod" else "cost")
    assert (env["RESPONSE_MAX_BYTES"], env["WORKER_MAX_PARALLEL"]) == ("1048576", "256")
    assert template["Resources"]["WorkerLambdaFunction"]["Properties"]["Environment"]["Variables"] == env
    dlq = template["Resources"]["DeadLetterQueue"]["Properties"]
    assert dlq["MaximumMessageSize"] == 1048576  # a job of MAX_MESSAGE_BYTES plus its dead-letter attributes
    assert int(env["MAX_MESSAGE_BYTES"]) < dlq["MaximumMessageSize"]


def _longest_region() -> str:
    session = boto3.session.Session()
    regions = [r for p in session.get_available_partitions() for r in session.get_available_regions("lambda", p)]
    return max(regions, key=len)


@pytest.mark.parametrize("stage", STAGES)
def test_role_names_carry_the_region_and_fit_iams_64_characters_in_every_region(packaged: Packaged, stage: str) -> None:
    template = packaged.template(stage)
    region = _longest_region()
    for role in _resources(template, "AWS::IAM::Role").values():
        separator, parts = role["Properties"]["RoleName"]["Fn::Join"]
        assert {"Ref": "AWS::Region"} in parts
        name = separator.join(region if p == {"Ref": "AWS::Region"} else p for p in parts)
        assert len(name) <= 64, name


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_has_a_cloudwatch_dashboard_of_its_own_metrics(packaged: Packaged, stage: str) -> None:
    (dashboard,) = _resources(packaged.template(stage), "AWS::CloudWatch::Dashboard").values()
    assert dashboard["Properties"]["DashboardName"] == f"throttler-{stage}"
    separator, parts = dashboard["Properties"]["DashboardBody"]["Fn::Join"]

    def value(part: Any) -> str:  # what CloudFormation puts in place of each reference, in eu-west-1
        if isinstance(part, str):
            return part
        if part == {"Ref": "AWS::Region"}:
            return "eu-west-1"
        if "Fn::GetAtt" in part and part["Fn::GetAtt"][1] == "QueueName":
            queues = {"JobsQueue": f"throttler-{stage}-jobs.fifo", "DeadLetterQueue": f"throttler-{stage}-dlq.fifo"}
            return queues[part["Fn::GetAtt"][0]]
        assert part in ({"Ref": "ThrottlerLambdaFunction"}, {"Ref": "WorkerLambdaFunction"}), part
        return f"throttler-{stage}-{part['Ref'].removesuffix('LambdaFunction').lower()}"

    body = json.loads(separator.join(value(p) for p in parts))
    metrics = [m for w in body["widgets"] if w["type"] == "metric" for m in w["properties"]["metrics"]]
    assert all(w["properties"]["region"] == "eu-west-1" for w in body["widgets"] if w["type"] == "metric")
    own = {m[1] for m in metrics if m[0] == "Throttler"}
    assert own >= {"Dispatched", "Succeeded", "Retried", "Throttled", "DeadLettered", "WorkerFailures"}
    assert all(m[2:6] == ["service", "throttler", "stage", stage] for m in metrics if m[0] == "Throttler")
    queues = {m[3] for m in metrics if m[0] == "AWS/SQS"}
    assert queues == {f"throttler-{stage}-jobs.fifo", f"throttler-{stage}-dlq.fifo"}
    assert f"dashboard --stage {stage}" in body["widgets"][0]["properties"]["markdown"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_taggable_resource_and_the_stack_carry_service_stage_and_cost(packaged: Packaged, stage: str) -> None:
    template = packaged.template(stage)
    expected = {"service": "throttler", "stage": stage, "cost-center": params(stage)["costCenter"]}
    # Resources whose type has no Tags property get the stack's tags from CloudFormation.
    untaggable = {"AWS::S3::BucketPolicy", "AWS::SNS::TopicPolicy", "AWS::Lambda::Permission",
                  "AWS::Lambda::EventInvokeConfig", "AWS::CloudWatch::Dashboard"}
    generated = {"ServerlessDeploymentBucket", "ThrottlerLogGroup", "WorkerLogGroup", "ThrottlerEventsRuleSchedule1"}
    for logical, resource in template["Resources"].items():
        if resource["Type"] in untaggable or logical in generated:
            continue
        tags = {t["Key"]: t["Value"] for t in resource["Properties"].get("Tags", [])}
        assert tags == expected, logical
    assert packaged.state(stage)["service"]["provider"]["stackTags"] == expected
