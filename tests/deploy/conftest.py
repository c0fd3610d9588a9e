"""Runs `make package`'s script once per test session; the deploy tests use what it built.

The artifacts go to a private folder, so that a `make package` run beside the tests cannot swap them.
Set THROTTLER_REUSE_PACKAGE=1 to reuse the artifacts of the last `make package` in .cache/package/ (quick
local iteration); CI never sets it, so `make test` always proves that packaging and the checks pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "package.sh"
LAST_PACKAGE = ROOT / ".cache" / "package"
STAGES = ("dev", "staging", "prod")


@dataclass(frozen=True)
class Packaged:
    """The script's outcome and each stage's artifacts."""

    out: Path
    returncode: int
    output: str
    seconds: float
    reused: bool

    def stage_dir(self, stage: str) -> Path:
        return self.out / stage

    def template(self, stage: str, kind: str = "update") -> dict[str, Any]:
        path = self.stage_dir(stage) / f"cloudformation-template-{kind}-stack.json"
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def state(self, stage: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.stage_dir(stage) / "serverless-state.json").read_text())
        return data


def _artifacts_present(out: Path) -> bool:
    return all((out / s / "throttler.zip").is_file() and (out / s / "checkov.json").is_file() for s in STAGES)


@pytest.fixture(scope="session")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Packaged:
    if os.environ.get("THROTTLER_REUSE_PACKAGE") == "1" and _artifacts_present(LAST_PACKAGE):
        return Packaged(LAST_PACKAGE, 0, "", 0.0, reused=True)
    out = tmp_path_factory.mktemp("package")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # the script must not need them
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(out)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, check=False,
    )
    packaged = Packaged(out, result.returncode, result.stdout, time.monotonic() - started, reused=False)
    if result.returncode != 0:
        pytest.fail(f"scripts/package.sh exited {result.returncode}:\n{result.stdout[-6000:]}", pytrace=False)
    return packaged
