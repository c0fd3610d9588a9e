"""A stage's resource names, in one place: serverless.yml builds the same ones, `${self:service}-${sls:stage}-...`.

The producer, the command line, the local stack and the composition root all ask here; nothing else spells
a queue, table or function name.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from throttler.core.errors import ConfigError

SERVICE = "throttler"
DEFAULT_STAGE = "local"
# A stage name that keeps every resource name valid: SQS queue names (80 characters with `.fifo`), Lambda
# function names (64) and the IAM role names serverless.yml derives from them.
STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,30}$")


def check_stage(stage: str) -> str:
    """The stage name, or ConfigError with a one-line reason."""
    if not isinstance(stage, str) or not STAGE_NAME.match(stage):
        raise ConfigError(f"invalid stage name {stage!r}: 1-31 letters, digits and dashes, starting with a letter or digit")
    return stage


@dataclass(frozen=True)
class StageNames:
    """Every named resource of one stage."""

    stage: str
    jobs_queue: str
    dlq: str
    state_table: str
    throttler_function: str
    worker_function: str

    @classmethod
    def of(cls, stage: str) -> StageNames:
        prefix = f"{SERVICE}-{check_stage(stage)}"
        return cls(
            stage=stage,
            jobs_queue=f"{prefix}-jobs.fifo",
            dlq=f"{prefix}-dlq.fifo",
            state_table=f"{prefix}-state",
            throttler_function=f"{prefix}-throttler",
            worker_function=f"{prefix}-worker",
        )

    def as_dict(self) -> dict[str, str]:
        """The names without the stage: {jobs_queue, dlq, state_table, throttler_function, worker_function}."""
        names = asdict(self)
        names.pop("stage")
        return names
