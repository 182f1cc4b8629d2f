"""Task registry: VQAv2, GQA, NLVR2 and COCO captioning as in VL-Adapter's four-task setup, and the tasks of the
other model families.

``TASKS`` is the one registration point: a new task is one module with a :class:`Task` subclass plus one line here.
Task sets (which tasks train together and their average column) live in :mod:`vlrouting.data.tasks.sets`.
Use :func:`get_task` (unknown names raise :class:`~vlrouting.errors.ConfigError`) and :func:`build_tasks` for a
configured set (prompts off as in VL-Adapter's ``multiple_*`` scripts, or the ``gpa: `` typo of its ``single_*``
scripts).
"""

from __future__ import annotations

from typing import Iterable

from vlrouting.errors import ConfigError
from vlrouting.data.tasks.base import (
    IGNORE_INDEX, SPLITS, Column, DecodeSpec, ExampleBatch, FeatureSource, LossTerm, Source, Task, TaskDataset,
    best_answer, example_mean_loss, sample_answer, token_losses,
)
from vlrouting.data.tasks.caption import CaptionTask
from vlrouting.data.tasks.coco_lm import CocoLMTask
from vlrouting.data.tasks.gqa import GQATask
from vlrouting.data.tasks.nlvr import NLVRTask
from vlrouting.data.tasks.vqa import VQATask
from vlrouting.data.tasks.vqa_cls import VQAClsTask

from vlrouting.data.tasks.sets import (
    DEFAULT_TASK_SET, TASK_SETS, TableColumn, TaskSet, default_tasks, get_task_set, register_task_set,
    report_columns, set_average, table_values, task_set_of,
)

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Register a task instance (all-default fields) under its name; the order is the tables' column order."""
    if task.name in TASKS:
        raise ValueError(f"task '{task.name}' is already registered")
    TASKS[task.name] = task
    return task


for _task in (VQATask(), GQATask(), NLVRTask(), CaptionTask()):
    register_task(_task)
register_task(VQAClsTask())
register_task(CocoLMTask())  # ViT+GPT-2 captioning (prefix LM), paper Table 4


def list_tasks() -> list[str]:
    """Registered task names, in the tables' column order (VQA, GQA, NLVR², COCO, then other families' tasks)."""
    return list(TASKS)


def get_task(name: str, *, use_task_prompts: bool = True, vladapter_prompt_typo: bool = False) -> Task:
    """The registered task ``name``, configured (see :meth:`Task.configured`)."""
    if name not in TASKS:
        raise ConfigError(f"Unknown task '{name}'; valid tasks: {', '.join(TASKS)}.")
    return TASKS[name].configured(use_task_prompts=use_task_prompts, vladapter_prompt_typo=vladapter_prompt_typo)


def build_tasks(names: Iterable[str] | str | None = None, *, use_task_prompts: bool = True,
                vladapter_prompt_typo: bool = False) -> dict[str, Task]:
    """``{name: task}`` for a list (or comma-separated string) of names, in the given order."""
    if names is None:
        names = default_tasks()
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    if not names:
        raise ConfigError(f"No tasks given; choose from {', '.join(TASKS)}.")
    return {n: get_task(n, use_task_prompts=use_task_prompts, vladapter_prompt_typo=vladapter_prompt_typo)
            for n in names}


__all__ = [
    "TASKS", "register_task", "list_tasks", "get_task", "build_tasks", "Task", "TaskDataset", "ExampleBatch", "Source",
    "Column", "LossTerm", "DecodeSpec", "FeatureSource", "TASK_SETS", "DEFAULT_TASK_SET", "TaskSet", "default_tasks",
    "get_task_set", "register_task_set", "report_columns", "set_average", "table_values", "task_set_of",
    "TableColumn",
    "VQATask", "VQAClsTask", "GQATask", "NLVRTask", "CaptionTask", "CocoLMTask", "SPLITS", "IGNORE_INDEX",
    "sample_answer", "best_answer",
    "token_losses", "example_mean_loss",
]
