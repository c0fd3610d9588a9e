"""The stage's secret headers: values read from SSM Parameter Store, for the worker to load once per batch.

A value never appears in a message, a log line, a result or an exception: a failure names the parameter and
the kind of error only, and raises SecretsUnavailable (the worker's failure, not the job's).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from throttler.core.errors import ConfigError, SecretsUnavailable

SecretsGetter = Callable[[], dict[str, str]]
MAX_AGE_S = 300  # Powertools caches each value this long: one SSM read per parameter per 5 minutes at most
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NOT_SECRET = frozenset({"host", "content-length", "transfer-encoding", "connection", "idempotency-key"})


def _from_ssm(name: str) -> Any:
    from aws_lambda_powertools.utilities import parameters

    return parameters.get_parameter(name, decrypt=True, max_age=MAX_AGE_S)


def _kind(exc: BaseException) -> str:
    """The error's type and, for an AWS error anywhere in its chain, its code: never its text."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        code = (getattr(seen, "response", None) or {}).get("Error", {}).get("Code")
        if code:
            return f"{type(exc).__name__} ({code})"
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def secret_headers_getter(
    pairs: Iterable[tuple[str, str]],
    get_parameter: Callable[[str], Any] | None = None,
) -> SecretsGetter:
    """A function that returns `{header: value}` for the settings' `(header, SSM parameter name)` pairs.

    Raises ConfigError now for a header name that is not an RFC 9110 token or that the http task sets itself;
    the returned function raises SecretsUnavailable (naming the parameter, never a value) when a parameter
    cannot be read or its value cannot be sent as a header. `get_parameter` replaces SSM in tests.
    """
    pairs = tuple(pairs)
    for header, _ in pairs:
        if not _TOKEN.fullmatch(header) or header.lower() in _NOT_SECRET:
            raise ConfigError(f"SECRET_HEADERS: {header[:64]!r} cannot be a secret header name")
    fetch = get_parameter or _from_ssm

    def load() -> dict[str, str]:
        from throttler.tasks.http import header_value_problem

        values: dict[str, str] = {}
        for header, name in pairs:
            try:
                value = fetch(name)
            except Exception as exc:  # noqa: BLE001 - any failure to read is the stage's, not the job's
                raise SecretsUnavailable(f"cannot read SSM parameter {name!r} (header {header}): {_kind(exc)}") from None
            if not isinstance(value, str) or not value or header_value_problem(value):
                raise SecretsUnavailable(f"SSM parameter {name!r} does not hold a value that header {header} can carry")
            values[header] = value
        return values

    return load
