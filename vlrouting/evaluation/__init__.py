"""The four tasks' metrics as the benchmarks define them (VQAv2, GQA, NLVR2, COCO captions) and the multitask Avg.

``python -m vlrouting eval`` (:mod:`vlrouting.evaluation.cli`) scores prediction files; the functions below score
in-memory predictions. The caption metrics need Java; everything else is pure Python.
"""

from vlrouting.evaluation.caption import evaluate_caption
from vlrouting.evaluation.gqa import evaluate_gqa
from vlrouting.evaluation.multitask import multitask_average
from vlrouting.evaluation.nlvr import evaluate_nlvr, write_nlvr_submission
from vlrouting.evaluation.vqa import evaluate_vqa, normalize_answer, vqa_accuracy, write_vqa_submission

__all__ = [
    "evaluate_caption",
    "evaluate_gqa",
    "evaluate_nlvr",
    "evaluate_vqa",
    "multitask_average",
    "normalize_answer",
    "vqa_accuracy",
    "write_nlvr_submission",
    "write_vqa_submission",
]
