"""Runs INSIDE the runtime-only environment (tests/deploy/runtime_env.py), started with `python -I`: the standard
library only, so that it proves nothing about packages the test venv happens to hold.

    python -I runtime_probe.py CODE_DIR REPORT.json imports MODULE...
    python -I runtime_probe.py CODE_DIR REPORT.json handler MODULE EVENT_JSON FUNCTION_NAME TIMEOUT_S

`imports` imports every module, each after forgetting the project's modules imported before it (so that no module
imports only because another one ran first). `handler` calls MODULE.handler(event, context) once, as Lambda
would, with a minimal context. Either writes a JSON report; the exit status is 0 only when nothing failed.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from typing import Any

PROJECT = ("handlers", "throttler")


class LambdaContext:
    """The attributes Lambda's Python runtime gives a handler that this project (and Powertools) reads."""

    def __init__(self, function_name: str, timeout_s: float):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 512
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self.aws_request_id = "runtime-probe-0001"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "runtime-probe"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _forget_project_modules() -> None:
    for name in [n for n in sys.modules if n.split(".", 1)[0] in PROJECT]:
        del sys.modules[name]


def imports(modules: list[str]) -> dict[str, Any]:
    failed = {}
    for module in modules:
        _forget_project_modules()
        try:
            importlib.import_module(module)
        except BaseException:
            failed[module] = traceback.format_exc()
    return {"imported": [m for m in modules if m not in failed], "failed": failed}


def handler(module: str, event: dict[str, Any], function_name: str, timeout_s: float) -> dict[str, Any]:
    started = time.monotonic()
    try:
        result = importlib.import_module(module).handler(event, LambdaContext(function_name, timeout_s))
    except BaseException:
        return {"error": traceback.format_exc(), "seconds": time.monotonic() - started}
    return {"result": result, "seconds": time.monotonic() - started}


def main(argv: list[str]) -> int:
    code_dir, report_path, mode, *rest = argv
    sys.path.insert(0, code_dir)
    report: dict[str, Any] = {"sys_path": list(sys.path), "prefix": sys.prefix, "base_prefix": sys.base_prefix}
    if mode == "imports":
        report.update(imports(rest))
        ok = not report["failed"]
    else:
        module, event, function_name, timeout_s = rest
        report.update(handler(module, json.loads(event), function_name, float(timeout_s)))
        ok = "error" not in report
    report["modules"] = sorted(n for n in sys.modules if "." not in n)
    with open(report_path, "w") as out:
        json.dump(report, out, default=repr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
