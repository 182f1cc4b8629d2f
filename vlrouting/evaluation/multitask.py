"""The multitask "Avg" column of the routing-functions paper (Tables 7-8) and of VL-Adapter.

Avg = plain mean of four headline numbers, CIDEr on its ×100 scale (reference/vladapter_spec.md §6):
VQAv2 Karpathy-test accuracy, GQA test-dev accuracy, NLVR² test-P accuracy and COCO Karpathy-test CIDEr. The task
list and each task's headline metric come from the task registry (``vl4`` in :mod:`vlrouting.data.tasks.sets`).
"""

from __future__ import annotations

__all__ = ["multitask_average"]


def multitask_average(scores: dict) -> float:
    """Mean of VQA accuracy, GQA accuracy, NLVR² accuracy and COCO CIDEr (all ×100), the paper's "Avg".

    ``scores`` maps ``vqa``/``gqa``/``nlvr``/``caption`` to a number or to the dict its evaluator returned
    (``overall``, ``accuracy``, ``accuracy``, ``CIDEr``). Other keys are ignored.
    """
    from vlrouting.data.tasks import get_task_set, set_average

    return set_average(get_task_set("vl4"), scores)
