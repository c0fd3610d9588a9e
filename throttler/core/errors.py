"""The error tree: callers branch on the type, never on message text."""


class ThrottlerError(Exception):
    """Base of every error this library raises on purpose."""


class ConfigError(ThrottlerError):
    """Settings or quota configuration that cannot be used."""


class InvalidJob(ThrottlerError):
    """A message that can never succeed as sent: not JSON, wrong envelope, unknown task, bad host."""


class TaskError(ThrottlerError):
    """Raised by a task to report how its call failed (with the HTTP status, when there was one)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RetryableTaskError(TaskError):
    """The call failed in a way that may pass on a later attempt (5xx, 408, timeouts)."""


class PermanentTaskError(TaskError):
    """The call failed in a way that another attempt will not fix (4xx other than 408 and 429)."""


class ThrottledTaskError(TaskError):
    """The API said 'too many requests' (429); pause everyone, spend no attempt.

    `headers` holds the response's rate-limit headers (lowercased names), as `TaskResult.headers` does.
    """

    def __init__(
        self,
        message: str,
        retry_after_s: float | None = None,
        status: int | None = 429,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message, status)
        self.retry_after_s = retry_after_s
        self.headers: dict[str, str] = dict(headers or {})


class SecretsUnavailable(ThrottlerError):
    """The stage's secrets could not be read: the worker's failure, not the job's (no attempt is counted).

    Its message names the parameter that failed, never a value.
    """


class StoreError(ThrottlerError):
    """The state store failed in a way the caller cannot treat as an expected outcome."""
