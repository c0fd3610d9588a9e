"""Validation (promise 7): quota items and job envelopes are refused with a readable reason."""

from __future__ import annotations

import json

import pytest

from throttler.core.envelope import parse_job
from throttler.core.errors import ConfigError, InvalidJob
from throttler.core.quotas import apply_assignments, defaults_item, parse_assignments, parse_quota_item, tier_window_s
from throttler.tasks import ValidationContext, default_registry

HOSTS = ("api.example.com", "127.0.0.1:8080")


def job(body: object, **kw: object) -> object:
    text = body if isinstance(body, str) else json.dumps(body)
    return parse_job(text, "g", "dedup-1", tasks=default_registry.view({"http", "custom"}),
                     validation=ValidationContext.build(HOSTS, "dev"), **kw)


def test_quota_item_parses_tiers_concurrency_alignment_and_margin() -> None:
    config = parse_quota_item({"pk": "quotas", "second": 20, "minute": "600", "90s": 100, "day": 10000,
                               "concurrency": 4, "aligned": ["day"], "margin_ms": 50})
    assert [t.name for t in config.tiers] == ["second", "minute", "90s", "day"]
    assert config.concurrency == 4 and config.tiers[-1].aligned and config.tiers[0].margin_s == 0.05
    assert config.binding.name == "day" and config.finest.name == "second"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"second": -1}, "negative"),
        ({"second": 1.5}, "whole number"),
        ({"second": "ten"}, "whole number"),
        ({"secnod": 5}, "unknown tier"),
        ({"concurrency": 2}, "at least one rate tier"),
        ({"second": 5, "concurrency": 0}, "concurrency"),
        ({"second": 5, "aligned": ["day"]}, "aligned"),
        ({"second": 5, "1s": 3}, "same window"),
        ({"second": 5, "margin_ms": "soon"}, "margin_ms"),
        ({"400d": 5}, "31 days"),
    ],
)
def test_invalid_quota_configuration_refused_with_a_clear_error(item: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_quota_item(item)


def test_quota_set_changes_only_named_tiers_and_off_removes_one() -> None:
    item = {"second": 5, "minute": 100, "day": 1000, "aligned": ["day"]}
    changed = apply_assignments(item, parse_assignments("minute=200 day=off concurrency=3"))
    assert changed == {"second": 5, "minute": 200, "concurrency": 3}
    with pytest.raises(ConfigError):
        parse_assignments("second")
    assert defaults_item("") is None
    assert tier_window_s("12h") == 43200


def test_valid_envelope_gives_a_job_with_the_dedup_id_as_default_id() -> None:
    parsed = job({"task": "http", "payload": {"method": "post", "url": "https://api.example.com/v1/items",
                                              "json": {"a": 1}, "timeout": 5}})
    assert parsed.job_id == "dedup-1" and parsed.group == "g" and parsed.task == "http"
    assert job({"task": "custom", "payload": {}, "id": "mine"}).job_id == "mine"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{nope", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ({"payload": {}}, "task"),
        ({"task": "http", "payload": "x"}, "payload"),
        ({"task": "http", "payload": {}, "extra": 1}, "extra"),
        ({"task": "fax", "payload": {}}, "unknown task"),
        ({"task": "http", "payload": {"method": "GET"}}, "url"),
        ({"task": "http", "payload": {"url": "https://api.example.com/"}}, "method"),
        ({"task": "http", "payload": {"method": "BREW", "url": "https://api.example.com/"}}, "method"),
        ({"task": "http", "payload": {"method": "GET", "url": "ftp://api.example.com/"}}, "scheme"),
        ({"task": "http", "payload": {"method": "GET", "url": "https://evil.com/"}}, "ALLOWED_HOSTS"),
        ({"task": "http", "payload": {"method": "GET", "url": "https://api.example.com/", "timeout": 999}}, "timeout"),
        ({"task": "http", "payload": {"method": "GET", "url": "https://api.example.com/", "json": 1, "data": "x"}}, "not both"),
        ({"task": 5, "payload": {}}, "task"),
        ({"task": "http", "payload": {}, "id": ""}, "id"),
        # Valid JSON the worker could not send: found by the security review (retried three times, no call).
        ('{"task": "http", "payload": {"method": "POST", "url": "https://api.example.com/", "data": "\\ud800"}}',
         "lone surrogate"),
        ('{"task": "http", "payload": {"method": "POST", "url": "https://api.example.com/", "json": '
         + "[" * 90 + "]" * 90 + "}}", "nested deeper than 64"),
    ],
)
def test_bad_message_refused_with_a_readable_reason(body: object, reason: str) -> None:
    with pytest.raises(InvalidJob, match=reason):
        job(body)


def test_nesting_and_surrogates_are_refused_exactly_at_their_bounds() -> None:
    # The envelope and the payload are two levels: 62 lists make 64 (sent), 63 make 65 (refused).
    assert job('{"task": "custom", "payload": {"x": ' + "[" * 62 + "]" * 62 + "}}").task == "custom"
    with pytest.raises(InvalidJob, match="nested deeper than 64"):
        job('{"task": "custom", "payload": {"x": ' + "[" * 63 + "]" * 63 + "}}")
    with pytest.raises(InvalidJob, match="lone surrogate"):
        job('{"task": "custom", "payload": {"\\udfff": 1}}')
    escaped_and_paired = job('{"task": "custom", "payload": {"x": "\\\\ud800 \\u00e9 \\ud83d\\ude00"}}')
    assert escaped_and_paired.payload["x"] == "\\ud800 \u00e9 \U0001f600"


def test_message_over_the_size_limit_is_a_bad_message() -> None:
    body = {"task": "custom", "payload": {"blob": "x" * 2000}}
    with pytest.raises(InvalidJob, match="over the 1000-byte limit"):
        job(body, max_bytes=1000)


# The allow-list and the URL check: tests/unit/test_url_check.py.


def test_a_key_override_edited_into_a_bad_shape_in_the_console_is_a_clear_configuration_error() -> None:
    # Found by the per-key review: `quota set --key` on such an item exited 1 with a Python TypeError.
    for bad in (5, "x", [1]):
        with pytest.raises(ConfigError, match=r"keys\.tenant-a must be a map"):
            apply_assignments({"second": 5, "keys": {"tenant-a": bad}}, {"second": "2"}, key="tenant-b")
