"""`pip install .` into a fresh venv gives operators a working `throttler` command with the runtime dependencies and
the command line's own, and none of the tools' (moto, PyYAML, rich, matplotlib, freezegun), which wait for the
`dev` extra.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.emulator import Emulated, emulated_stage

ROOT = Path(__file__).resolve().parents[2]
# What an sdist of the project holds: pyproject.toml reads the requirements files, and finds the packages.
SOURCES = ("pyproject.toml", "requirements.txt", "requirements-cli.txt", "requirements-tools.txt",
           "throttler", "throttler_tools", "handlers")
OPERATOR_COMMANDS = ("enqueue", "quota", "pause", "resume", "status", "dlq")
TOOL_PACKAGES = ("moto", "yaml", "rich", "matplotlib", "freezegun")


@dataclass(frozen=True)
class Installed:
    venv: Path
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), env=self.env, cwd=self.venv, capture_output=True, text=True, timeout=120,
                              check=False, stdin=subprocess.DEVNULL)

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("pip-install")
    source = base / "src"  # a copy: pip's in-tree build would leave build/ and *.egg-info in the work tree
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("AWS_")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        env=env, capture_output=True, text=True, timeout=900, check=False, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"pip install . failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    yield Installed(venv, env)


def test_pip_install_gives_operators_a_throttler_command(installed: Installed) -> None:
    result = installed.run(str(installed.venv / "bin" / "throttler"), "--help")
    assert result.returncode == 0, result.stderr
    for command in OPERATOR_COMMANDS:
        assert command in result.stdout, (command, result.stdout)

    quota = installed.run(str(installed.venv / "bin" / "throttler"), "quota", "--help")
    assert quota.returncode == 0, quota.stderr
    assert "show" in quota.stdout and "set" in quota.stdout

    # `python -m throttler` keeps working from an installed copy.
    module = installed.run(installed.python, "-m", "throttler", "--help")
    assert module.returncode == 0 and "quota" in module.stdout, module.stderr


@pytest.mark.parametrize("package", TOOL_PACKAGES)
def test_pip_install_leaves_the_tools_dependencies_out(installed: Installed, package: str) -> None:
    result = installed.run(installed.python, "-c", f"import {package}")
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, (package, result.stderr)


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[=<>;~! ]", r, maxsplit=1)[0].lower() for r in requirements}


def _pinned_in(*files: str) -> set[str]:
    lines = [line.strip() for f in files for line in (ROOT / f).read_text().splitlines()]
    return _names([line for line in lines if line and not line.startswith(("#", "-"))])


def test_the_base_install_holds_runtime_and_cli_and_the_dev_extra_the_tools(installed: Installed) -> None:
    script = "import importlib.metadata as m, json; print(json.dumps(m.requires('throttler')))"
    result = installed.run(installed.python, "-c", script)
    assert result.returncode == 0, result.stderr
    requires: list[str] = json.loads(result.stdout)
    base = [r for r in requires if "extra ==" not in r]
    dev = [r for r in requires if re.search(r"extra == .dev.", r)]
    assert _names(base) == _pinned_in("requirements.txt", "requirements-cli.txt")
    assert _names(dev) == _pinned_in("requirements-tools.txt")
    assert all("==" in r for r in requires), requires  # every version pinned


@pytest.fixture(scope="module")
def stage() -> Iterator[Emulated]:
    with emulated_stage("dev") as emulated:
        yield emulated


@pytest.mark.parametrize("command", [
    ["quota", "show"],
    ["status"],
    ["enqueue", "--group", "g", "http", '{"method": "GET", "url": "https://api.example.com/v1/items"}'],
])
def test_operator_commands_work_against_a_stage_from_an_installed_copy(
    installed: Installed, stage: Emulated, command: list[str]
) -> None:
    env = {**installed.env, **stage.aws_env}
    result = subprocess.run([str(installed.venv / "bin" / "throttler"), *command, "--stage", "dev"], env=env,
                            cwd=installed.venv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
