"""The command line, `python -m throttler COMMAND`: the local stack, the demo, and the producer's and
operator's commands against any stage.

Exit codes: 0 success, 2 usage or validation error (one line on stderr), 1 any other failure (one line).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import click

from throttler import __version__
from throttler.core.errors import ConfigError, InvalidJob, ThrottlerError

PROG = "python -m throttler"
LOCAL_REGION = "us-east-1"
LOCAL_ENDPOINT = "http://127.0.0.1:4566"
STAGE_META = "throttler.stage"
DURATION = re.compile(r"^([0-9]{1,9}(?:\.[0-9]{1,6})?)([smhd]?)$")
MAX_DURATION_S = 365 * 86400.0
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Failure(click.ClickException):
    """Any failure that is not the user's input: exit 1 with one line."""

    exit_code = 1


class Invalid(click.ClickException):
    """A usage or validation error: exit 2 with one line."""

    exit_code = 2


def _line(text: object) -> str:
    return " ".join(str(text).split()) or "unknown error"


@contextlib.contextmanager
def _exit_codes() -> Iterator[None]:
    """Map every error to its exit code and one line on stderr, without a traceback."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )

    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # prints the help
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        raise Invalid(_line(exc.format_message()) + hint) from None
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except (ConfigError, InvalidJob) as exc:
        raise Invalid(_line(exc)) from None
    except NoCredentialsError:
        raise Failure("no AWS credentials found: configure them (AWS_PROFILE, AWS_ACCESS_KEY_ID...)") from None
    except NoRegionError:
        raise Failure("no AWS region: set AWS_REGION") from None
    except EndpointConnectionError as exc:
        where = str(getattr(exc, "kwargs", {}).get("endpoint_url") or "AWS")
        hint = f": is `{PROG} local` running?" if "127.0.0.1" in where or "localhost" in where else ""
        raise Failure(f"cannot reach {where}{hint}") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        missing = _missing_resource(exc)
        raise Failure(_line(missing or f"{exc.operation_name} failed: {error.get('Code')}: {error.get('Message', '')}")) from None
    except (ThrottlerError, BotoCoreError, OSError) as exc:
        raise Failure(_line(_missing_resource(exc) or exc)) from None
    except Exception as exc:
        if os.environ.get("THROTTLER_DEBUG"):
            raise
        raise Failure(_line(f"{type(exc).__name__}: {exc}")) from None


class CommandGroup(click.Group):
    """A click group whose errors all end as one line with the right exit code."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        with _exit_codes():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _exit_codes():
            return super().invoke(ctx)


# ---------------------------------------------------------------------------- a stage's AWS resources
class StageAws:
    """The resources of one stage, found by name; clients honour AWS_ENDPOINT_URL, region and credentials."""

    def __init__(self, stage: str):
        from throttler.naming import StageNames

        self.names = StageNames.of(stage)  # ConfigError for a bad stage name
        self.stage = stage
        self._clients: dict[str, Any] = {}

    @property
    def endpoint(self) -> str | None:
        """AWS_ENDPOINT_URL; for stage `local` without it, the local stack's default address."""
        return os.environ.get("AWS_ENDPOINT_URL") or (LOCAL_ENDPOINT if self.stage == "local" else None)

    @cached_property
    def region(self) -> str:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or self._session.region_name
        if region:
            return str(region)
        if self.endpoint:
            return LOCAL_REGION
        raise ConfigError("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION)")

    @cached_property
    def _session(self) -> Any:
        import boto3

        return boto3.session.Session()  # one per stage: its clients share the loaded service models

    def client(self, service: str) -> Any:
        if service not in self._clients:
            from botocore.config import Config

            session = self._session
            extra: dict[str, str] = {}
            if self.endpoint:
                extra["endpoint_url"] = self.endpoint
                if session.get_credentials() is None:
                    # An emulator accepts any credentials; real AWS never gets these.
                    extra.update(aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106
            config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=30)
            self._clients[service] = session.client(service, region_name=self.region, config=config, **extra)  # type: ignore[call-overload]
        return self._clients[service]

    @cached_property
    def jobs_url(self) -> str:
        from throttler.producer import queue_url

        return queue_url(self.client("sqs"), self.names.jobs_queue)

    @cached_property
    def dlq_url(self) -> str:
        from throttler.producer import queue_url

        return queue_url(self.client("sqs"), self.names.dlq)

    @cached_property
    def store(self) -> Any:
        from throttler.store import DynamoStateStore

        return DynamoStateStore(self.client("dynamodb"), self.names.state_table)

    def resume(self, now: float) -> str:
        """`resume` (command line and dashboard): lift the operator's pause and the latest 429's, and start a run
        at once, so that dispatch restarts within 5 s rather than at the next scheduled run. Returns what it did."""
        from throttler.dispatch.control import BACKOFF_MAX_S
        from throttler.store.base import OPERATOR_SIGNAL

        control = self.store.read_control()
        lifted = []
        if control.pause_until is not None and control.pause_until > now:
            lifted.append("the operator's pause")
        # (A run mirrors an operator's pause in the 429 record for its workers: that one is not the API's.)
        if control.throttle is not None and control.throttle.batch_id != OPERATOR_SIGNAL:
            signal = control.throttle.bounded(now)
            if signal.at + (signal.retry_after_s if signal.retry_after_s is not None else BACKOFF_MAX_S) > now:
                lifted.append("the pause of the API's latest 429")
        self.store.clear_pause()
        if not lifted:
            return f"stage {self.stage} was not paused: nothing to lift"
        return f"stage {self.stage} resumed: lifted {' and '.join(lifted)}; {self.start_run()}"

    def start_run(self) -> str:
        """Invoke the throttler asynchronously (a run paused past its deadline ended; with latency=cost nothing
        else would start one before the next minute). Overlapping runs are safe: the lease decides."""
        if self.stage == "local":
            return "dispatch restarts within 5 s (the local stack's runs wait on a pause)"
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client("lambda").invoke(FunctionName=self.names.throttler_function, InvocationType="Event",
                                         Payload=b'{"source": "throttler.resume"}')
        except (BotoCoreError, ClientError) as exc:
            why = exc.response.get("Error", {}).get("Code", "error") if isinstance(exc, ClientError) else type(exc).__name__
            return f"dispatch restarts at the next scheduled run, within a minute (could not start one now: {why})"
        return "a run was started: dispatch restarts within 5 s"

    @cached_property
    def queue(self) -> Any:
        """The jobs queue and its DLQ (throttler.queue.SqsJobQueue)."""
        from throttler.queue import SqsJobQueue

        return SqsJobQueue(self.client("sqs"), self.jobs_url, self.dlq_url)

    def defaults(self, control: Any) -> Any:
        """The stage's defaults (quotas, allowed hosts...) as far as they can be known from here
        (throttler_tools.status.StageDefaults): published by its throttler, else serverless.yml, else unknown."""
        from throttler_tools.status import stage_defaults

        return stage_defaults(self.stage, control)


def stage_option(fn: Any) -> Any:
    return click.option(
        "--stage",
        metavar="STAGE",
        default=None,
        help="Stage to act on: dev, staging, prod, local... [default: $THROTTLER_STAGE, else local]",
    )(fn)


def _aws(stage: str | None) -> StageAws:
    ctx = click.get_current_context()
    root = ctx.find_root()
    if stage is not None and not stage.strip():
        raise ConfigError("--stage needs a stage name (e.g. dev)")
    aws = StageAws(stage or root.params.get("stage") or "local")
    root.meta[STAGE_META] = aws  # for the error messages below
    return aws


def _missing_resource(exc: BaseException) -> str | None:
    """"table X does not exist: is the stage deployed?" when an AWS call failed because the table is missing
    (the queues' lookup by name already says so)."""
    from botocore.exceptions import ClientError

    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ClientError):
        cause = cause.__cause__
    if cause is None or cause.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
        return None
    ctx = click.get_current_context(silent=True)
    aws = ctx.find_root().meta.get(STAGE_META) if ctx is not None else None
    what = f"table {aws.names.state_table}" if aws is not None else "the stage's state table"
    return f"{what} does not exist: is the stage deployed (or the local stack running)?"


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, default=str))  # the order is the report's own (tiers by window, keys by backlog)


def _when(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_duration(text: str, most_s: float = MAX_DURATION_S) -> float:
    """`90`, `90s`, `10m`, `2h`, `1d` to seconds, at most `most_s`; ConfigError otherwise."""
    match = DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"invalid duration {text!r}: use a positive number with s, m, h or d (e.g. 10m)")
    seconds = float(match.group(1)) * UNIT_S[match.group(2)]
    if seconds > most_s:
        raise ConfigError(f"invalid duration {text!r}: at most {most_s / 86400:g} days (without --for: until resume)")
    return seconds


# ---------------------------------------------------------------------------- the commands
@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--stage",
    envvar="THROTTLER_STAGE",
    default="local",
    show_default=True,
    metavar="STAGE",
    help="Stage for every command (or THROTTLER_STAGE); a command's own --stage wins.",
)
@click.version_option(version=__version__, prog_name="throttler")
def cli(stage: str) -> None:
    """Drain an SQS FIFO queue of API jobs as fast as the API's quotas allow, never faster.

    Commands that talk to AWS honour AWS_ENDPOINT_URL (point it at `local`), AWS_REGION and the usual
    credential settings. Exit codes: 0 success, 2 usage or validation error, 1 any other failure.
    """
