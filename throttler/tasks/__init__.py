"""Tasks: the registry, the built-in `http` task (always registered, with its validator), and how to add your own."""

from throttler.tasks import http as _http  # noqa: F401 - registers the built-in http task and its validator
from throttler.tasks.registry import TaskContext, TaskResult, ValidationContext, default_registry, task

__all__ = ["TaskContext", "TaskResult", "ValidationContext", "default_registry", "task"]
