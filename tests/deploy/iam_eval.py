"""A small evaluator of identity-based IAM policy statements: is this call, on this resource, with these condition
keys, allowed? Enough of AWS's rules for this project's roles (actions and resources with wildcards; StringEquals, StringLike,
ArnEquals and ArnLike with the ForAllValues / ForAnyValue set qualifiers and IfExists); anything else raises,
so that a policy it does not understand can never pass for allowed.

AWS's own rules it follows (IAM User Guide, "Policy evaluation logic" and "Multivalued context keys"):
an explicit Deny wins; otherwise one matching Allow allows. Within a Condition, operators and keys are ANDed and a
key's values ORed. ForAllValues is true when every value in the request matches, and also when the request has no
value at all (why a LeadingKeys condition must not sit on Scan or Query); ForAnyValue is false without a value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

OPERATORS = {"StringEquals", "StringLike", "ArnEquals", "ArnLike"}


@dataclass(frozen=True)
class Call:
    """One authorisation request: `dynamodb:PutItem` on a table ARN with its keys, e.g.
    {"dynamodb:LeadingKeys": ["worker#batch#1"]} (every item's partition key, for a batch)."""

    action: str
    resource: str
    context: Mapping[str, list[str]] = field(default_factory=dict)


def _wildcard(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body + r"\Z", (re.IGNORECASE if ignore_case else 0) | re.DOTALL)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _value_matches(operator: str, request_value: str, policy_value: str) -> bool:
    if operator in ("StringEquals", "ArnEquals"):
        return request_value == policy_value
    return bool(_wildcard(policy_value).match(request_value))


def _operator_holds(operator: str, request_values: list[str] | None, policy_values: list[str]) -> bool:
    qualifier, _, name = operator.rpartition(":")
    if_exists = name.endswith("IfExists")
    name = name.removesuffix("IfExists")
    if name not in OPERATORS or qualifier not in ("", "ForAllValues", "ForAnyValue"):
        raise NotImplementedError(f"condition operator {operator!r}")

    def one(value: str) -> bool:
        return any(_value_matches(name, value, p) for p in policy_values)

    if qualifier == "ForAllValues":
        return all(one(v) for v in request_values or [])
    if qualifier == "ForAnyValue":
        return any(one(v) for v in request_values or [])
    if not request_values:
        return if_exists  # a missing key: false, unless the operator says IfExists
    return any(one(v) for v in request_values)


def conditions_hold(condition: Mapping[str, Mapping[str, Any]], context: Mapping[str, list[str]]) -> bool:
    lowered = {k.lower(): v for k, v in context.items()}  # condition key names are case-insensitive
    return all(
        _operator_holds(operator, lowered.get(key.lower()), [str(v) for v in _as_list(values)])
        for operator, keys in condition.items()
        for key, values in keys.items()
    )


def _statement_matches(statement: Mapping[str, Any], call: Call) -> bool:
    if {"NotAction", "NotResource", "Principal", "NotPrincipal"} & set(statement):
        raise NotImplementedError(f"statement element among {sorted(statement)}")
    actions = _as_list(statement["Action"])
    if not any(_wildcard(a, ignore_case=True).match(call.action) for a in actions):
        return False
    if not any(_wildcard(r).match(call.resource) for r in _as_list(statement["Resource"])):
        return False
    return conditions_hold(statement.get("Condition", {}), call.context)


def allowed(statements: Iterable[Mapping[str, Any]], call: Call) -> bool:
    matching = [s for s in statements if _statement_matches(s, call)]
    if any(s["Effect"] == "Deny" for s in matching):
        return False
    return any(s["Effect"] == "Allow" for s in matching)
