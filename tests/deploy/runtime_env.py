"""A Python environment that holds the Lambda runtime's dependencies and nothing else.

A venv built from requirements.txt alone, with Python 3.12 (the Lambda runtime's version) when this machine has
one: no pip, no moto, no dev tool. Built once and cached under .cache/runtime-venv/, keyed by the interpreter's
version and the hash of requirements.txt, so a changed pin builds a new one. pip downloads from PyPI (its own
cache makes a rebuild quick).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements.txt"
CACHE = ROOT / ".cache" / "runtime-venv"
LAMBDA_PYTHON = (3, 12)


@dataclass(frozen=True)
class RuntimeEnv:
    python: Path  # the venv's interpreter
    site_packages: Path
    version: tuple[int, int]
    built_in_s: float  # 0.0 when it came from the cache


def _version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out[0]), int(out[1])


def find_python() -> str:
    """Python 3.12 where scripts/package.sh finds it (PYTHON312, PATH, pyenv); else this interpreter."""
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = [os.environ.get("PYTHON312"), shutil.which("python3.12"), "/usr/bin/python3.12",
                  "/usr/local/bin/python3.12", *sorted(glob.glob(f"{pyenv_root}/versions/3.12*/bin/python3.12"))]
    for candidate in candidates:
        if candidate and _version(candidate) == LAMBDA_PYTHON:
            return candidate
    return sys.executable


def runtime_env(requirements: Path = REQUIREMENTS, cache: Path = CACHE) -> RuntimeEnv:
    base = find_python()
    version = _version(base)
    assert version, f"cannot run {base}"
    key = hashlib.sha256(requirements.read_bytes() + f"{version}".encode()).hexdigest()[:16]
    venv = cache / f"py{version[0]}{version[1]}-{key}"
    python = venv / "bin" / "python"
    stamp = venv / ".complete"
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    built = False
    with open(cache / ".lock", "w") as lock:  # one builder at a time (parallel test runs in this tree)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.is_file():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
            # The base interpreter's pip installs into the venv, so that the venv holds no pip of its own.
            subprocess.run(
                [base, "-m", "pip", "--python", str(python), "install", "--quiet", "--disable-pip-version-check",
                 "--no-input", "-r", str(requirements)],
                check=True, timeout=600, stdin=subprocess.DEVNULL,
            )
            stamp.write_text(requirements.read_text())
            built = True
    site = subprocess.run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    return RuntimeEnv(python, Path(site), version, time.monotonic() - started if built else 0.0)
