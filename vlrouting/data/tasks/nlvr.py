"""NLVR2 (VL-Adapter ``nlvr_clip_data.py`` / ``nlvr_model.py``; reference §1.2, §1.6, §4.2, §4.3, §6).

- Splits ``nlvr/{train,valid,test}.json``; both images of every example come from ``nlvr/clip_features``.
- Two images: the visual tokens are ``[img0 ; img1]`` (72 for 36 boxes each), image-order ids 0 then 1, object-order
  ids restarting at 0 for each image (VL-Adapter builds the same ids in ``VLBartNLVR.train_step``).
- Encoder text ``"nlvr: " + sentence``, not truncated (only guarded by the model's text positions); target ``true``
  for label 1 else ``false``, at most 3 tokens; loss = per-example token mean, batch mean.
- Decoding: no generation; the prediction is ``true`` iff the logit of the first token of ``true`` beats that of
  ``false`` at the first decoder step (see :meth:`NLVRTask.answer_token_ids`).
- Evaluation: accuracy (and consistency over ``identifier`` groups) from ``evaluate_nlvr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Mapping

import numpy as np

from vlrouting.data.layout import ANNOTATIONS
from vlrouting.data.tasks.base import DecodeSpec, Source, Task, TaskDataset, id_problem, image_id_problem, text_problem


@dataclass(frozen=True)
class NLVRTask(Task):
    name: str = "nlvr"
    prompt: str = "nlvr: "
    batch_ratio: Fraction = Fraction(20, 60)
    splits: Mapping[str, tuple[Source, ...]] = field(default_factory=lambda: dict(ANNOTATIONS["nlvr"]))
    max_input_length: int | None = None
    max_target_length: int | None = 3
    decode: DecodeSpec = DecodeSpec("true_false", num_beams=1, max_length=2)
    headline_metric: str = "accuracy"
    required_fields: tuple[str, ...] = ("uid", "img0", "img1", "label")
    answer_words: tuple[str, str] = ("true", "false")
    title: str = "NLVR²"

    def check_record(self, record: dict) -> str | None:
        label = record.get("label")
        if isinstance(label, bool) or label not in (0, 1) or not isinstance(label, int):
            return f"has label {label!r}, but an NLVR2 label is 1 (true) or 0 (false)"
        return (id_problem(record, "uid") or image_id_problem(record, "img0") or image_id_problem(record, "img1")
                or text_problem(record, "sent", "identifier"))

    def example_id(self, record: dict):
        return record["uid"]

    def image_keys(self, record: dict) -> list[tuple[str, str]]:
        return [(record["_features"], str(record["img0"])), (record["_features"], str(record["img1"]))]

    def target(self, record: dict, train: bool, rng: np.random.Generator | None) -> tuple[str, float]:
        return ("true" if int(record["label"]) == 1 else "false"), 1.0

    def has_labels(self, train: bool) -> bool:
        return True  # one target per example in every split

    def answer_token_ids(self, tokenizer) -> tuple[int, int]:
        """Ids of the first token of ``true`` and ``false``, encoded without specials and without a leading space
        (VL-Adapter ``model.true_id`` / ``false_id``)."""
        ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in self.answer_words]
        return ids[0], ids[1]

    def evaluate(self, predictions: Mapping, dataset: TaskDataset) -> dict:
        from vlrouting.evaluation.nlvr import evaluate_nlvr

        data = [{"uid": r["uid"], "identifier": r.get("identifier", r["uid"]), "label": int(r["label"])}
                for r in dataset.records]
        return evaluate_nlvr(predictions, data)
