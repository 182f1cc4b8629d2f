"""GQA (VL-Adapter ``gqa_clip_data.py`` / ``gqa_model.py``; reference §1.2, §1.7, §4.1, §4.2, §3.4, §6).

- Splits, as VL-Adapter chose them: train = ``GQA/train.json`` + ``GQA/valid.json`` (Visual Genome images, features
  from ``VG/clip_features``); val = test = ``GQA/testdev.json`` (GQA images, features from ``GQA/clip_features``).
  VL-Adapter never evaluates on a held-out GQA split: its only GQA number is testdev, so "val" and "test" coincide.
- Prompt ``gqa: ``; VL-Adapter's scripts used the typo ``gpa: `` (``configured(vladapter_prompt_typo=True)``).
- Encoder text truncated to 20 tokens; the target is sampled from ``label`` like VQA's but the loss is not weighted
  (per-example token mean, batch mean); no target length limit beyond the model's text positions.
- Evaluation: exact-match accuracy of the generated string against the record's label (no normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Mapping

import numpy as np

from vlrouting.data.layout import ANNOTATIONS
from vlrouting.data.tasks.base import (
    DecodeSpec, Source, Task, TaskDataset, best_answer, id_problem, image_id_problem, label_problem, sample_answer,
    text_problem,
)


@dataclass(frozen=True)
class GQATask(Task):
    name: str = "gqa"
    prompt: str = "gqa: "
    batch_ratio: Fraction = Fraction(100, 60)
    splits: Mapping[str, tuple[Source, ...]] = field(default_factory=lambda: dict(ANNOTATIONS["gqa"]))
    max_input_length: int | None = 20
    max_target_length: int | None = None
    decode: DecodeSpec = DecodeSpec("greedy", num_beams=1, max_length=20)
    headline_metric: str = "accuracy"
    vladapter_prompt: str | None = "gpa: "
    required_fields: tuple[str, ...] = ("img_id", "question_id")
    title: str = "GQA"

    def check_record(self, record: dict) -> str | None:
        return (id_problem(record, "question_id") or image_id_problem(record, "img_id")
                or label_problem(record, "GQA") or text_problem(record, "sent", "question"))

    def target(self, record: dict, train: bool, rng: np.random.Generator | None) -> tuple[str, float]:
        """Training: sampled ∝ score; eval: the top answer (testdev labels hold one answer). Weight is always 1."""
        label = record.get("label") or {}
        answer, _ = sample_answer(label, rng) if train else best_answer(label)
        return answer, 1.0

    def has_labels(self, train: bool) -> bool:
        return True  # testdev has a single answer per question: eval batches carry labels too (validation loss)

    def evaluate(self, predictions: Mapping, dataset: TaskDataset) -> dict:
        from vlrouting.evaluation.gqa import evaluate_gqa

        data = [{"question_id": r["question_id"], "label": r.get("label") or {}} for r in dataset.records]
        return evaluate_gqa(predictions, data)
