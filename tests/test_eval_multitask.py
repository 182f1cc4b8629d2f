"""The multitask Avg column: mean of VQA, GQA, NLVR2 accuracy and COCO CIDEr."""

from __future__ import annotations

import pytest

from vlrouting.errors import DataError
from vlrouting.evaluation.multitask import multitask_average


def test_average_of_numbers_and_metric_dicts():
    # VL-Adapter full fine-tuning row: (66.9 + 56.7 + 73.7 + 112.0) / 4 = 77.325
    assert multitask_average({"vqa": 66.9, "gqa": 56.7, "nlvr": 73.7, "caption": 112.0}) == pytest.approx(77.325)
    scores = {"vqa": {"overall": 66.9}, "gqa": {"accuracy": 56.7}, "nlvr": {"accuracy": 73.7, "consistency": 40.0},
              "caption": {"CIDEr": 112.0, "BLEU-4": 30.0}}
    assert multitask_average(scores) == pytest.approx(77.325)


def test_missing_task_is_named():
    with pytest.raises(DataError, match="but nlvr, caption are missing"):
        multitask_average({"vqa": 66.9, "gqa": 56.7})
    with pytest.raises(DataError, match="no 'CIDEr' entry"):
        multitask_average({"vqa": 1.0, "gqa": 1.0, "nlvr": 1.0, "caption": {"SPICE": 20.0}})
