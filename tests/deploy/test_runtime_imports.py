"""The Lambda zip starts with its runtime dependencies alone: every module it ships imports, and each handler runs
once against a local AWS emulator, in a subprocess whose sys.path holds the zip's own code, the standard library
and a venv built from requirements.txt, nothing else. A package that only the dev tools bring in (moto pulled in
aws_xray_sdk, which hid a Tracer the zip could not import) cannot hide here.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import Packaged
from tests.deploy.emulator import REGION, Emulated, emulated_stage
from tests.deploy.lambda_zip import (
    code_files,
    distributions,
    extract_code,
    files_from_patterns,
    module_names,
    zip_names,
)
from tests.deploy.runtime_env import ROOT, RuntimeEnv, runtime_env
from throttler_tools.stackdef import stage_definition

STAGE = "dev"  # the zip under test is the dev stage's; its resources come from the same serverless.yml
PROBE = Path(__file__).with_name("runtime_probe.py")
SCHEDULED_EVENT = {
    "version": "0", "id": "5d3a1c1e-0000-4000-8000-000000000001", "detail-type": "Scheduled Event",
    "source": "aws.events", "account": "123456789012", "time": "2026-03-02T09:00:00Z", "region": REGION,
    "resources": [f"arn:aws:events:{REGION}:123456789012:rule/throttler-{STAGE}-ThrottlerEventsRuleSchedule1"],
    "detail": {},
}
EMPTY_BATCH: dict[str, list[Any]] = {"jobs": []}


@dataclass(frozen=True)
class Shipped:
    names: set[str]  # every file in the zip
    code_dir: Path  # the zip's handlers/ and throttler/, extracted

    @property
    def code(self) -> set[str]:
        return code_files(self.names)


@dataclass(frozen=True)
class Probe:
    returncode: int
    report: dict[str, Any]
    stdout: str
    stderr: str

    def explain(self) -> str:
        return f"exit {self.returncode}\n{json.dumps(self.report, indent=1)[-6000:]}\nstderr:\n{self.stderr[-4000:]}"


@pytest.fixture(scope="module")
def shipped(packaged: Packaged, tmp_path_factory: pytest.TempPathFactory) -> Shipped:
    zip_path = packaged.stage_dir(STAGE) / "throttler.zip"
    return Shipped(zip_names(zip_path), extract_code(zip_path, tmp_path_factory.mktemp("task-root")))


@pytest.fixture(scope="module")
def runtime() -> RuntimeEnv:
    return runtime_env()


@pytest.fixture(scope="module")
def stage() -> Iterator[Emulated]:
    """The stage's queues and table on a local moto server, created from serverless.yml (throttler_tools/provision)."""
    with emulated_stage(STAGE) as emulated:
        assert emulated.function_env["THROTTLER_STAGE"] == STAGE
        yield emulated


def _lambda_env(stage: Emulated, function: dict[str, Any], task_root: Path) -> dict[str, str]:
    """What Lambda's runtime gives a function, pointed at the emulator; nothing from this process's environment."""
    return {
        **stage.function_env,
        **stage.aws_env,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_LAMBDA_FUNCTION_NAME": function["name"],
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "LAMBDA_TASK_ROOT": str(task_root),
        "_HANDLER": function["handler"],
        "HOME": str(task_root),
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
    }


def _probe(runtime: RuntimeEnv, shipped: Shipped, env: dict[str, str], args: list[str], timeout_s: float) -> Probe:
    report_path = shipped.code_dir.parent / f"{shipped.code_dir.name}-report.json"
    report_path.unlink(missing_ok=True)
    result = subprocess.run(
        [str(runtime.python), "-I", str(PROBE), str(shipped.code_dir), str(report_path), *args],
        cwd=shipped.code_dir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s,
        check=False,
    )
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    return Probe(result.returncode, report, result.stdout, result.stderr)


def _assert_runtime_only(probe: Probe, runtime: RuntimeEnv, shipped: Shipped) -> None:
    """sys.path: the zip's code, the venv's site-packages, the standard library; not this project, not a dev venv."""
    paths = [Path(p) for p in probe.report["sys_path"] if p]
    assert paths[0] == shipped.code_dir
    for path in paths[1:]:
        if "site-packages" in path.parts:
            assert path == runtime.site_packages, path
        else:
            assert path.is_relative_to(probe.report["base_prefix"]), path  # the standard library
        assert not path.is_relative_to(ROOT) or path.is_relative_to(ROOT / ".cache" / "runtime-venv"), path


def _handler(functions: dict[str, Any], name: str) -> tuple[dict[str, Any], str]:
    function = functions[name]
    module = function["handler"].rsplit(".", 1)[0].replace("/", ".")
    return function, module


def test_the_runtime_environment_holds_exactly_the_zips_dependencies(shipped: Shipped, runtime: RuntimeEnv) -> None:
    """The venv stands in for the zip's arm64 wheels: same distributions, no more (no pip, moto, yaml, xray)."""
    in_venv = distributions({p.name for p in runtime.site_packages.iterdir()})
    assert in_venv == distributions(shipped.names)
    assert {"moto", "pyyaml", "aws-xray-sdk", "click", "pip", "freezegun"}.isdisjoint(in_venv)
    assert runtime.version == (3, 12), "no python3.12 found: the check ran on another Python than Lambda's"


def test_every_module_the_zip_ships_imports_with_the_runtime_dependencies_alone(
    shipped: Shipped, runtime: RuntimeEnv, stage: Emulated
) -> None:
    modules = module_names(shipped.code)
    assert {"handlers.throttler", "handlers.worker", "throttler.observability"} <= set(modules)
    functions = stage_definition(STAGE)["functions"]
    env = _lambda_env(stage, functions["throttler"], shipped.code_dir)

    probe = _probe(runtime, shipped, env, ["imports", *modules], timeout_s=300)

    assert probe.returncode == 0 and not probe.report.get("failed"), probe.explain()
    assert sorted(probe.report["imported"]) == sorted(modules)
    _assert_runtime_only(probe, runtime, shipped)


@pytest.mark.parametrize(("name", "event"), [("worker", EMPTY_BATCH), ("throttler", SCHEDULED_EVENT)])
def test_each_handler_runs_once_against_the_local_stack_with_the_runtime_dependencies_alone(
    shipped: Shipped, runtime: RuntimeEnv, stage: Emulated, name: str, event: dict[str, Any]
) -> None:
    function, module = _handler(stage_definition(STAGE)["functions"], name)
    env = _lambda_env(stage, function, shipped.code_dir)
    timeout_s = float(function["timeout"])

    probe = _probe(runtime, shipped, env, ["handler", module, json.dumps(event), function["name"], str(timeout_s)],
                   timeout_s=timeout_s + 60)

    assert probe.returncode == 0 and "error" not in probe.report, probe.explain()
    assert isinstance(probe.report["result"], dict), probe.explain()
    _assert_runtime_only(probe, runtime, shipped)
    # Every metric it published carries the stage, so two stages in one account keep apart (and the alarms match).
    emitted = [json.loads(line) for line in probe.stdout.splitlines() if line.startswith("{") and '"_aws"' in line]
    for record in emitted:
        for directive in record["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == "Throttler"
            assert all({"service", "stage"} <= set(dims) for dims in directive["Dimensions"]), record
        assert (record["service"], record["stage"]) == ("throttler", STAGE)
    if name == "throttler":
        assert emitted, f"the throttler published no metric:\n{probe.stdout[-3000:]}"


def test_the_zip_ships_the_runtime_package_only(shipped: Shipped) -> None:
    names = shipped.names
    assert not any(n.startswith(("throttler_tools/", "tests/", "scripts/", "node_modules/")) for n in names)
    assert "throttler/__main__.py" not in names  # `python -m throttler` is the command line: a tool, not shipped
    assert not any("__pycache__" in n.split("/") for n in shipped.code)
    in_tree = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "throttler").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.name != "__main__.py"
    }
    assert in_tree <= names, sorted(in_tree - names)
    # The same list, worked out from serverless.yml's package patterns applied to the work tree.
    assert shipped.code == files_from_patterns(ROOT)
    assert {"handlers/throttler.py", "handlers/worker.py"} <= shipped.code


def test_the_runtime_environment_is_cached_by_requirements_hash(runtime: RuntimeEnv) -> None:
    again = runtime_env()
    assert again.python == runtime.python and again.built_in_s == 0.0


SECRET = "s3cr3t-value-for-the-runtime-test"


def test_a_real_job_and_a_hostile_message_run_through_both_handlers_with_the_runtime_dependencies_alone(
    shipped: Shipped, runtime: RuntimeEnv, stage: Emulated
) -> None:
    """An empty batch and an empty queue skip most of the code (secrets, the session, the http task, the worker's
    records; parsing and dead-lettering): found by the security review, a lazy import of a dev-only package on the
    secrets path passed the tests above. So the worker calls a real API with a secret from SSM, and the throttler
    dead-letters a hostile message, both in the runtime-only subprocess."""
    import boto3

    from tests.unit.http_servers import LocalApi
    from throttler.core.protocol import BatchRequest, JobSpec

    clients = {name: boto3.client(name, endpoint_url=stage.endpoint, region_name=REGION,  # type: ignore[call-overload]
                                  aws_access_key_id="testing", aws_secret_access_key="testing")
               for name in ("ssm", "sqs")}
    clients["ssm"].put_parameter(Name=f"/throttler/{STAGE}/api-key", Value=SECRET, Type="SecureString", Overwrite=True)
    functions = stage_definition(STAGE)["functions"]
    with LocalApi() as api:
        function, module = _handler(functions, "worker")
        env = {**_lambda_env(stage, function, shipped.code_dir), "ALLOWED_HOSTS": api.url,
               "SECRET_HEADERS": json.dumps({"X-Api-Key": f"/throttler/{STAGE}/api-key"})}
        now = time.time()
        body = json.dumps({"task": "http", "payload": {"method": "POST", "url": f"{api.url}/ok", "json": {"ü": 1}}})
        request = BatchRequest("runtime-batch", "runtime-run", (JobSpec("job-1", "g1", body, now, now + 30),), (), now)
        event = json.loads(request.to_json())
        probe = _probe(runtime, shipped, env, ["handler", module, json.dumps(event), function["name"], "40"], 120)
        assert probe.returncode == 0 and "error" not in probe.report, probe.explain()
        assert probe.report["result"]["status"] == "ran", probe.explain()
        assert [seen.all("X-Api-Key") for seen in api.seen] == [[SECRET]], probe.explain()

    sqs = clients["sqs"]
    queue_url, dlq_url = stage.function_env["JOBS_QUEUE_URL"], stage.function_env["DLQ_URL"]
    sqs.send_message(QueueUrl=queue_url, MessageBody="{not json", MessageGroupId="g-bad", MessageDeduplicationId="bad-1")
    function, module = _handler(functions, "throttler")
    probe = _probe(runtime, shipped, _lambda_env(stage, function, shipped.code_dir),
                   ["handler", module, json.dumps(SCHEDULED_EVENT), function["name"], str(function["timeout"])], 240)
    assert probe.returncode == 0 and "error" not in probe.report, probe.explain()
    dead = sqs.receive_message(QueueUrl=dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=1).get("Messages", [])
    assert [m["Body"] for m in dead] == ["{not json"], probe.explain()
    assert "not valid JSON" in dead[0]["MessageAttributes"]["error_reason"]["StringValue"]
