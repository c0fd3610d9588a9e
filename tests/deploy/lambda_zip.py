"""What the Lambda zip ships: its file list read from a packaged zip, or worked out from serverless.yml's
`package.patterns` applied to the work tree the way osls applies them (in order, the last match wins).
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

from throttler_tools.stackdef import load_raw

# The project's own code in the zip; everything else at its top level comes from requirements.txt.
CODE_DIRS = ("handlers", "throttler")
# Never walked: they are large, and no pattern of serverless.yml includes anything in them (checked below).
UNWALKED = {".git", "node_modules", ".cache", ".venv", ".checkov-venv", ".serverless", ".mypy_cache", ".hypothesis"}


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A package pattern as a regex over paths relative to the service root (micromatch's globstar syntax)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def package_patterns(raw: dict[str, object] | None = None) -> list[str]:
    raw = raw if raw is not None else load_raw()
    package = raw.get("package")
    assert isinstance(package, dict) and isinstance(package.get("patterns"), list), "serverless.yml: package.patterns"
    return [str(p) for p in package["patterns"]]


def included(path: str, patterns: list[str]) -> bool:
    """Whether osls packages `path`: every file starts included, then each pattern in order includes (or, with
    `!`, excludes) what it matches (osls: package-service.js, resolveFilePathsFromPatterns)."""
    state = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        if glob_regex(pattern.removeprefix("!")).match(path):
            state = not negated
    return state


def files_from_patterns(root: Path, patterns: list[str] | None = None) -> set[str]:
    """Every file of the work tree that serverless.yml's patterns put in the zip."""
    patterns = patterns if patterns is not None else package_patterns()
    # The walk skips UNWALKED folders: right only while everything starts excluded and no pattern reaches them.
    assert patterns and patterns[0] == "!**", "serverless.yml's package.patterns no longer start with '!**'"
    for pattern in patterns:
        if not pattern.startswith("!"):
            head = pattern.split("/", 1)[0]
            assert head not in UNWALKED and "*" not in head, f"pattern {pattern!r} reaches a folder this walk skips"
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not (Path(folder) == root and d in UNWALKED))
        for name in files:
            relative = (Path(folder) / name).relative_to(root).as_posix()
            if included(relative, patterns):
                found.add(relative)
    return found


def zip_names(zip_path: Path) -> set[str]:
    with zipfile.ZipFile(zip_path) as zf:
        return {n for n in zf.namelist() if not n.endswith("/")}


def code_files(names: set[str]) -> set[str]:
    """The project's own files among a zip's names (handlers/, throttler/)."""
    return {n for n in names if n.split("/", 1)[0] in CODE_DIRS}


def extract_code(zip_path: Path, dest: Path) -> Path:
    """Only the project's own code (the zip's arm64 wheels cannot load on this machine)."""
    with zipfile.ZipFile(zip_path) as zf:
        for name in code_files(zip_names(zip_path)):
            zf.extract(name, dest)
    return dest


def module_names(files: set[str]) -> list[str]:
    """Importable module names of the .py files among `files` (packages by their __init__)."""
    modules = []
    for name in sorted(files):
        if not name.endswith(".py"):
            continue
        parts = name.removesuffix(".py").split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules.append(".".join(parts))
    return modules


def distributions(names: set[str]) -> set[str]:
    """Normalised project names of the *.dist-info folders among a zip's (or a site-packages') names."""
    found = set()
    for name in names:
        top = name.split("/", 1)[0]
        if top.endswith(".dist-info"):
            project = top.removesuffix(".dist-info").rsplit("-", 1)[0]
            found.add(re.sub(r"[-_.]+", "-", project).lower())
    return found
