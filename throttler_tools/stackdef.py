"""serverless.yml as data: the resources and environment of a stage, for tests and the local stack.

A tiny resolver for the variables this project's serverless.yml uses (`${sls:stage}`,
`${self:service}`, `${param:x}`, `${opt:x, default}`) and for `Ref` / `Fn::GetAtt`, so that moto
resources are created from the very definitions that get deployed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVERLESS_YML = ROOT / "serverless.yml"
VAR = re.compile(r"\$\{([^}]+)\}")


def _loader() -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def short_form(loader: Any, suffix: str, node: Any) -> dict[str, Any]:
        name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if suffix == "GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}

    Loader.add_multi_constructor("!", short_form)
    return Loader


def load_raw(path: Path = SERVERLESS_YML) -> dict[str, Any]:
    import yaml

    data: dict[str, Any] = yaml.load(path.read_text(), Loader=_loader())  # noqa: S506 - SafeLoader subclass
    return data


def params(stage: str, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    raw = raw or load_raw()
    merged = dict(raw.get("params", {}).get("default", {}))
    merged.update(raw.get("params", {}).get(stage, {}) or {})
    return merged


def resolve(value: Any, stage: str, raw: dict[str, Any]) -> Any:
    """Substitute serverless variables (not CloudFormation intrinsics) in a value."""
    if isinstance(value, dict):
        return {k: resolve(v, stage, raw) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, stage, raw) for v in value]
    if not isinstance(value, str):
        return value
    stage_params = params(stage, raw)

    def one(expr: str) -> Any:
        head, _, default = expr.partition(",")
        head = head.strip()
        if head == "sls:stage" or head == "opt:stage":
            return stage
        if head == "self:service":
            return raw["service"]
        if head.startswith("param:"):
            return stage_params[head[6:]]
        if head.startswith("opt:"):
            return default.strip().strip("'\"")
        raise KeyError(f"unsupported serverless variable ${{{expr}}}")

    whole = VAR.fullmatch(value)
    if whole:
        return one(whole.group(1))
    return VAR.sub(lambda m: str(one(m.group(1))), value)


_DEFINITIONS: dict[tuple[str, float], dict[str, Any]] = {}


def stage_definition(stage: str) -> dict[str, Any]:
    """{'resources': {logical id: {Type, Properties}}, 'environment': {...}} with variables resolved (read
    once per process while serverless.yml is unchanged: the simulation builds a stage per seed)."""
    import copy

    key = (stage, SERVERLESS_YML.stat().st_mtime)
    if key not in _DEFINITIONS:
        _DEFINITIONS[key] = _stage_definition(stage)
    return copy.deepcopy(_DEFINITIONS[key])


def _stage_definition(stage: str) -> dict[str, Any]:
    raw = load_raw()
    return {
        "resources": resolve(raw["resources"]["Resources"], stage, raw),
        "environment": resolve(raw["provider"].get("environment", {}), stage, raw),
        "functions": resolve(raw.get("functions", {}), stage, raw),
        "service": raw["service"],
    }
