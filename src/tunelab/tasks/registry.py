"""Every task kind by the name `task:` gives it in a config."""

from __future__ import annotations

from tunelab.tasks.base import Task
from tunelab.tasks.classify.task import ClassifyTask
from tunelab.tasks.sft.task import SftTask

TASKS: dict[str, Task] = {"sft": SftTask(), "classify": ClassifyTask()}
