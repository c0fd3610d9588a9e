"""Tasks: the registry, the built-in `http` task, and how to add your own."""

from throttler.tasks.registry import TaskContext, TaskResult, default_registry, task

__all__ = ["TaskContext", "TaskResult", "default_registry", "task"]
