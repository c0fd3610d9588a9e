"""Settings: one validated model read once from the environment; names match serverless.yml."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from throttler.core.errors import ConfigError

REQUIRED = ("THROTTLER_STAGE", "JOBS_QUEUE_URL", "DLQ_URL", "STATE_TABLE", "WORKER_FUNCTION", "ALLOWED_HOSTS")
LATENCY_MODES = ("low", "cost")


@dataclass(frozen=True)
class Settings:
    stage: str
    jobs_queue_url: str
    dlq_url: str
    state_table: str
    worker_function: str
    allowed_hosts: tuple[str, ...]
    default_quotas: str = ""
    default_latency: str = "cost"
    max_attempts: int = 3
    max_message_bytes: int = 256 * 1024
    run_budget_s: float = 290.0  # a run goes on for about 3 minutes: each hand-over costs requests
    worker_timeout_s: float = 40.0
    retry_base_s: float = 10.0
    retry_max_s: float = 900.0
    response_max_bytes: int = 1024 * 1024
    worker_max_parallel: int = 256
    tasks_module: str = ""
    secret_headers: tuple[tuple[str, str], ...] = ()  # (header, SSM parameter name); hashable
    # Endpoints a job may never call whatever ALLOWED_HOSTS says: the stage's own AWS endpoint (an emulator on the
    # local stack) and the Lambda runtime API (AWS_ENDPOINT_URL, AWS_LAMBDA_RUNTIME_API).
    never_call: tuple[str, ...] = ()
    in_lambda: bool = False  # AWS_LAMBDA_RUNTIME_API is set: loopback and link-local hosts are refused

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        missing = [name for name in REQUIRED if not env.get(name)]
        if missing:
            raise ConfigError(f"missing environment variables: {', '.join(missing)}")
        try:
            secret_headers = json.loads(env.get("SECRET_HEADERS") or "{}")
            if not isinstance(secret_headers, dict):
                raise ValueError("SECRET_HEADERS must be a JSON object")
            settings = cls(
                stage=env["THROTTLER_STAGE"],
                jobs_queue_url=env["JOBS_QUEUE_URL"],
                dlq_url=env["DLQ_URL"],
                state_table=env["STATE_TABLE"],
                worker_function=env["WORKER_FUNCTION"],
                allowed_hosts=tuple(h.strip() for h in env["ALLOWED_HOSTS"].split(",") if h.strip()),
                default_quotas=env.get("DEFAULT_QUOTAS", ""),
                default_latency=(env.get("DEFAULT_LATENCY") or "cost").strip().lower(),
                max_attempts=int(env.get("MAX_ATTEMPTS", "3")),
                max_message_bytes=int(env.get("MAX_MESSAGE_BYTES", str(256 * 1024))),
                run_budget_s=float(env.get("RUN_BUDGET_S", "290")),
                worker_timeout_s=float(env.get("WORKER_TIMEOUT_S", "40")),
                retry_base_s=float(env.get("RETRY_BASE_S", "10")),
                retry_max_s=float(env.get("RETRY_MAX_S", "900")),
                response_max_bytes=int(env.get("RESPONSE_MAX_BYTES", str(1024 * 1024))),
                worker_max_parallel=int(env.get("WORKER_MAX_PARALLEL", "256")),
                tasks_module=env.get("TASKS_MODULE", ""),
                secret_headers=tuple((str(k), str(v)) for k, v in secret_headers.items()),
                never_call=tuple(v for v in (env.get("AWS_ENDPOINT_URL"), env.get("AWS_LAMBDA_RUNTIME_API")) if v),
                in_lambda=bool(env.get("AWS_LAMBDA_RUNTIME_API")),
            )
        except ValueError as exc:
            raise ConfigError(f"invalid setting: {exc}") from exc
        if settings.max_attempts < 1 or settings.max_message_bytes < 1 or settings.worker_max_parallel < 1:
            raise ConfigError("MAX_ATTEMPTS, MAX_MESSAGE_BYTES and WORKER_MAX_PARALLEL must be positive")
        if settings.default_latency not in LATENCY_MODES:
            raise ConfigError(f"DEFAULT_LATENCY must be one of {', '.join(LATENCY_MODES)}")
        if settings.run_budget_s <= 0 or settings.worker_timeout_s <= 0:
            raise ConfigError("RUN_BUDGET_S and WORKER_TIMEOUT_S must be positive")
        return settings
