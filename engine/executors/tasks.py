"""Executor tasks: named functions a child process runs, each registered by the module that owns it.

The executor knows no application: a task is `@task("name")` on a function of (payload, progress) -> JSON
result in its own module; the parent sends the task's name and module, and the child imports that module
(which registers the task) and runs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ProgressFn = Callable[[str, float], None]
TaskFn = Callable[[dict[str, Any], ProgressFn], dict[str, Any]]


@dataclass(frozen=True)
class Task:
    """A registered task: its stable name, the module that registers it and the function."""

    name: str
    module: str
    fn: TaskFn

    def __call__(self, payload: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
        return self.fn(payload, progress)


TASKS: dict[str, Task] = {}


def task(name: str) -> Callable[[TaskFn], Task]:
    """Register the decorated function as the executor task `name`."""

    def wrap(fn: TaskFn) -> Task:
        registered = Task(name, fn.__module__, fn)
        known = TASKS.get(name)
        if known is not None and known.module != registered.module:
            raise ValueError(f"executor task '{name}' is registered twice ({known.module}, {registered.module})")
        TASKS[name] = registered
        return registered

    return wrap


def resolve(name: str, module: str) -> Task:
    """The task `name` that `module` registers, importing the module in this (child) process."""
    if name not in TASKS:
        importlib.import_module(module)
    found = TASKS.get(name)
    if found is None or found.module != module:
        raise ValueError(f"module {module} registers no executor task '{name}'")
    return found
