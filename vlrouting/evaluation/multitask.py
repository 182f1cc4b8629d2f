"""The multitask "Avg" column of the routing-functions paper (Tables 7-8) and of VL-Adapter.

Avg = plain mean of four headline numbers, CIDEr on its ×100 scale (reference/vladapter_spec.md §6):
VQAv2 Karpathy-test accuracy, GQA test-dev accuracy, NLVR² test-P accuracy and COCO Karpathy-test CIDEr.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from vlrouting.errors import DataError

__all__ = ["HEADLINE_METRICS", "headline_scores", "multitask_average"]

#: task → the metric key its evaluator returns for the headline number.
HEADLINE_METRICS: dict[str, str] = {"vqa": "overall", "gqa": "accuracy", "nlvr": "accuracy", "caption": "CIDEr"}


def _headline(task: str, value: Any) -> float:
    if isinstance(value, Mapping):
        key = HEADLINE_METRICS[task]
        if key not in value:
            raise DataError(f"the {task} metrics have no '{key}' entry; pass the dict returned by the {task} "
                            f"evaluator or the number itself.")
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise DataError(f"the {task} score is {value!r}, not a number; pass the {HEADLINE_METRICS[task]} value ×100.")
    return float(value)


def headline_scores(scores: Mapping[str, Any]) -> dict[str, float]:
    """``{vqa, gqa, nlvr, caption}`` headline numbers from numbers or from the evaluators' metric dicts."""
    if not isinstance(scores, Mapping):
        raise DataError(f"multitask scores must be a mapping task → score, got {type(scores).__name__}.")
    missing = [task for task in HEADLINE_METRICS if scores.get(task) is None]
    if missing:
        raise DataError(f"the multitask average needs all of vqa, gqa, nlvr and caption, but {', '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} missing; evaluate every task first.")
    return {task: _headline(task, scores[task]) for task in HEADLINE_METRICS}


def multitask_average(scores: dict) -> float:
    """Mean of VQA accuracy, GQA accuracy, NLVR² accuracy and COCO CIDEr (all ×100), the paper's "Avg".

    ``scores`` maps ``vqa``/``gqa``/``nlvr``/``caption`` to a number or to the dict its evaluator returned
    (``overall``, ``accuracy``, ``accuracy``, ``CIDEr``). Other keys are ignored.
    """
    values = headline_scores(scores)
    return sum(values.values()) / len(values)
