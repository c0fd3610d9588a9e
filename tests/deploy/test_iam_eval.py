"""The policy evaluator the deploy tests judge the deployed roles with follows AWS's rules, traps included."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.iam_eval import Call, allowed

TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/throttler-dev-state"
FENCED = {
    "Effect": "Allow",
    "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:BatchWriteItem", "dynamodb:Scan"],
    "Resource": [TABLE],
    "Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["worker#*"]}},
}


def keys(*pks: str) -> dict[str, list[str]]:
    return {"dynamodb:LeadingKeys": list(pks)}


def test_leading_keys_with_a_wildcard_allow_only_matching_items() -> None:
    assert allowed([FENCED], Call("dynamodb:PutItem", TABLE, keys("worker#batch#x")))
    assert not allowed([FENCED], Call("dynamodb:PutItem", TABLE, keys("usage")))
    assert not allowed([FENCED], Call("dynamodb:PutItem", TABLE, keys("xworker#batch")))  # a prefix, not a substring
    assert not allowed([FENCED], Call("dynamodb:BatchWriteItem", TABLE, keys("worker#a", "lease")))  # every item


def test_for_all_values_holds_for_a_request_without_keys_the_trap_that_keeps_scan_off_a_fenced_role() -> None:
    assert allowed([FENCED], Call("dynamodb:Scan", TABLE))


def test_actions_match_without_case_and_with_wildcards_resources_exactly_or_by_wildcard() -> None:
    statement = {"Effect": "Allow", "Action": "dynamodb:Get*", "Resource": "arn:aws:dynamodb:*:*:table/throttler-*"}
    assert allowed([statement], Call("DynamoDB:getitem", TABLE))
    assert not allowed([statement], Call("dynamodb:PutItem", TABLE))
    assert not allowed([statement], Call("dynamodb:GetItem", TABLE.replace("throttler-", "other-")))


def test_an_explicit_deny_wins_and_no_statement_means_denied() -> None:
    deny_lease = {"Effect": "Deny", "Action": "dynamodb:*", "Resource": "*",
                  "Condition": {"StringEquals": {"dynamodb:LeadingKeys": "lease"}}}
    deny_own = deny_lease | {"Condition": {"ForAnyValue:StringEquals": {"dynamodb:LeadingKeys": ["worker#a"]}}}
    assert allowed([FENCED, deny_lease], Call("dynamodb:PutItem", TABLE, keys("worker#a")))
    assert not allowed([FENCED, deny_own], Call("dynamodb:PutItem", TABLE, keys("worker#a")))
    assert not allowed([], Call("dynamodb:GetItem", TABLE))


def test_a_plain_operator_needs_the_key_unless_if_exists() -> None:
    statement: dict[str, Any] = {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*",
                                 "Condition": {"StringEquals": {"kms:ViaService": "ssm.us-east-1.amazonaws.com"}}}
    assert allowed([statement], Call("kms:Decrypt", "arn:k", {"kms:viaservice": ["ssm.us-east-1.amazonaws.com"]}))
    assert not allowed([statement], Call("kms:Decrypt", "arn:k"))
    statement["Condition"] = {"StringEqualsIfExists": {"kms:ViaService": "ssm.us-east-1.amazonaws.com"}}
    assert allowed([statement], Call("kms:Decrypt", "arn:k"))


@pytest.mark.parametrize("operator", ["NumericLessThan", "StringNotLike", "Bool", "ForAllValues:StringNotEquals"])
def test_an_operator_it_does_not_know_is_an_error_never_an_allow(operator: str) -> None:
    statement = {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {operator: {"aws:x": "1"}}}
    with pytest.raises(NotImplementedError):
        allowed([statement], Call("s3:GetObject", "arn:aws:s3:::b/k", {"aws:x": ["1"]}))
