"""Task sets: which tasks a benchmark trains together, and the columns its result tables have.

A task contributes its own columns (:meth:`vlrouting.data.tasks.Task.columns`: its headline number first, then any
breakdowns it reports); a registered task set adds an average column over its tasks' headline numbers. Result
tables (``aggregate``), the trainer's ``results.json`` summary and the paper's rows (:mod:`vlrouting.paper_results`)
all take their columns from here, so a benchmark with other columns (the paper's Tables 1–4) needs no code
elsewhere.

``vl4`` is VL-Adapter's four-task CLIP-BART benchmark (paper Tables 7, 8, C7): VQAv2, GQA, NLVR² and COCO
captions; its "Avg" is the plain mean of VQA accuracy, GQA accuracy, NLVR² accuracy and COCO CIDEr, all ×100
(reference/vladapter_spec.md §6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from vlrouting.errors import ConfigError, DataError


@dataclass(frozen=True)
class TaskSet:
    """Tasks trained together, and the key/title of the column averaging their headline numbers."""

    name: str
    tasks: tuple[str, ...]
    average_key: str = "avg"
    average_title: str = "Avg"
    description: str = ""
    table_note: str = ""  # what the numbers of its tables are, printed above them


TASK_SETS: dict[str, TaskSet] = {}


def register_task_set(task_set: TaskSet) -> TaskSet:
    if task_set.name in TASK_SETS:
        raise ValueError(f"task set '{task_set.name}' is already registered")
    TASK_SETS[task_set.name] = task_set
    return task_set


register_task_set(TaskSet("vl4", ("vqa", "gqa", "nlvr", "caption"),
                          description="VL-Adapter's four-task CLIP-BART benchmark (paper Tables 7, 8, C7)",
                          table_note="Accuracy ×100 for VQA, GQA, NLVR²; CIDEr ×100 for COCO; Avg = mean of the four."))
register_task_set(TaskSet("vit_vqa", ("vqa_cls",), average_key="",
                          description="VQAv2 as answer classification (ViT+RoBERTa; paper Tables 1, 2, 3, B4)",
                          table_note="VQA: the headline score ×100 — official VQA accuracy (recipe paper) or the "
                                     "soft score Σ label[pred]/N (recipe released, the paper's own evaluator); "
                                     "VQA soft: the soft score; yes/no … person: the headline score per answer "
                                     "type (Table 2) and question group (Table 3)."))
#: The task set of the packaged CLIP-BART configs and the library defaults.
DEFAULT_TASK_SET = "vl4"


def default_tasks() -> list[str]:
    """The tasks of the default task set, in the paper's column order."""
    return list(TASK_SETS[DEFAULT_TASK_SET].tasks)


def get_task_set(name: str) -> TaskSet:
    try:
        return TASK_SETS[name]
    except KeyError:
        raise ConfigError(f"unknown task set '{name}'; known: {', '.join(TASK_SETS)}.") from None


def task_set_of(tasks: Iterable[str]) -> TaskSet | None:
    """The registered set holding exactly these tasks (in any order), or None."""
    wanted = set(tasks)
    return next((s for s in TASK_SETS.values() if set(s.tasks) == wanted), None)


def _headline(task: str, value: Any) -> float:
    from vlrouting.data.tasks import get_task

    metric = get_task(task).headline_metric
    if isinstance(value, Mapping):
        if metric not in value:
            raise DataError(f"the {task} metrics have no '{metric}' entry; pass the dict returned by the {task} "
                            f"evaluator or the number itself.")
        value = value[metric]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise DataError(f"the {task} score is {value!r}, not a number; pass the {metric} value ×100.")
    return float(value)


def set_average(task_set: TaskSet, scores: Mapping[str, Any]) -> float:
    """Mean of the set's headline numbers; ``scores`` maps each task to its number or its evaluator's metric dict."""
    if not isinstance(scores, Mapping):
        raise DataError(f"multitask scores must be a mapping task → score, got {type(scores).__name__}.")
    missing = [t for t in task_set.tasks if scores.get(t) is None]
    if missing:
        names = list(task_set.tasks)
        listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
        raise DataError(f"the {task_set.average_title} of {task_set.name} needs all of {listed}, but "
                        f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing; evaluate every task "
                        "first.")
    values = [_headline(t, scores[t]) for t in task_set.tasks]
    return sum(values) / len(values)


@dataclass(frozen=True)
class TableColumn:
    """A result-table column: a task's column, or (``task=None``) the average column of a task set."""

    key: str
    title: str
    task: str | None
    path: tuple[str, ...] = ()


def report_columns(tasks: Iterable[str]) -> list[TableColumn]:
    """The columns of a table over runs of ``tasks``: each task's columns in registry order, then the average
    column when the tasks form a registered set."""
    from vlrouting.data.tasks import TASKS

    wanted = set(tasks)
    unknown = sorted(wanted - set(TASKS))
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}; registered tasks: {', '.join(TASKS)}.")
    cols = [TableColumn(c.key, c.title, name, c.path) for name, task in TASKS.items() if name in wanted
            for c in task.columns()]
    task_set = task_set_of(wanted)
    if task_set is not None and task_set.average_key:
        cols.append(TableColumn(task_set.average_key, task_set.average_title, None))
    return cols


def table_values(test: Mapping[str, Mapping], summary: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Every column's number of one run from its test metrics (``{task: metrics}``); a task's headline may come
    from ``summary`` when its metrics lack it. The average exists only when every task of the set has a number."""
    summary = summary or {}
    tasks = [t for t in test if isinstance(test.get(t), Mapping) or _is_number(summary.get(t))]
    tasks += [t for t in summary if t not in tasks and _is_known_task(t) and _is_number(summary[t])]
    values: dict[str, float] = {}
    for col in report_columns(tasks):
        if col.task is None:
            continue
        value = _column_value(col, test.get(col.task))
        if value is None and col.key == col.task and _is_number(summary.get(col.task)):
            value = float(summary[col.task])
        if value is not None:
            values[col.key] = value
    task_set = task_set_of(tasks)
    if task_set is not None and task_set.average_key and all(t in values for t in task_set.tasks):
        values[task_set.average_key] = sum(values[t] for t in task_set.tasks) / len(task_set.tasks)
    return values


def _column_value(col: TableColumn, metrics: Any) -> float | None:
    node = metrics
    for part in col.path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return float(node) if _is_number(node) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _is_known_task(name: str) -> bool:
    from vlrouting.data.tasks import TASKS

    return name in TASKS
