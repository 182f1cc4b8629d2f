"""VQAv2 on the Karpathy splits (VL-Adapter ``vqa_clip_data.py`` / ``vqa_model.py``; reference §1.2, §4.2, §3.4, §6).

- Splits: ``vqa/karpathy_{train,val,test}.json``; images are COCO (``COCO/clip_features``).
- Encoder text ``"vqa: " + question``, truncated to 20 tokens; the training target is one answer sampled per
  access from the soft ``label`` (probability ∝ score), at most 10 tokens, and the loss is weighted by its score.
- Evaluation: the official VQAv2 accuracy on the generated strings, against the 10 human answers. These come from
  the Karpathy record's ``answers`` field when present, else from ``vqa/v2_mscoco_{train,val}2014_annotations.json``
  indexed by ``question_id`` as VL-Adapter does (read lazily, once per dataset object).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from vlrouting.errors import DataError
from vlrouting.data.layout import ANNOTATIONS, FILES
from vlrouting.data.tasks.base import (
    DecodeSpec, Source, Task, TaskDataset, best_answer, example_mean_loss, id_problem, image_id_problem, label_problem,
    read_json, sample_answer, text_problem,
)

OFFICIAL_ANNOTATIONS = (FILES["vqa_official_train"], FILES["vqa_official_val"])


def _answer_strings(answers) -> list[str]:
    """Karpathy ``answers`` are dicts with an ``answer`` key (official format) or plain strings."""
    return [a["answer"] if isinstance(a, Mapping) else str(a) for a in answers]


def _answers_problem(record: dict) -> str | None:
    """Karpathy ``answers``, when present: a non-empty list of strings or official ``{"answer": str}`` dicts."""
    if "answers" not in record:
        return None
    answers = record["answers"]
    if not isinstance(answers, list) or not answers:
        return (f"has answers {answers!r}, but answers must be a non-empty list of strings or {{\"answer\": ...}} "
                f"dicts")
    for a in answers:
        value = a.get("answer") if type(a) is dict else a
        if type(value) is not str:
            return f"has an answer {a!r}, but answers must be strings or {{\"answer\": str}} dicts"
    return None


@dataclass(frozen=True)
class VQATask(Task):
    name: str = "vqa"
    prompt: str = "vqa: "
    batch_ratio: Fraction = Fraction(1)
    splits: Mapping[str, tuple[Source, ...]] = field(default_factory=lambda: dict(ANNOTATIONS["vqa"]))
    max_input_length: int | None = 20
    max_target_length: int | None = 10
    # Greedy; 20 = the max_length VL-Adapter's generate() fell back to (HF default; reference §4.3).
    decode: DecodeSpec = DecodeSpec("greedy", num_beams=1, max_length=20)
    headline_metric: str = "overall"
    required_fields: tuple[str, ...] = ("img_id", "question_id")
    title: str = "VQA"
    # official vqaEval.py revision used by evaluate(): "2017" (VL-Adapter, the paper) or "2021" (train.vqa_eval_version)
    eval_version: str = "2017"

    def check_record(self, record: dict) -> str | None:
        return (id_problem(record, "question_id") or image_id_problem(record, "img_id")
                or label_problem(record, "VQA") or text_problem(record, "sent", "question")
                or _answers_problem(record))

    def target(self, record: dict, train: bool, rng: np.random.Generator | None) -> tuple[str, float]:
        """Training: sampled ∝ soft score, weight = its score. Eval: the top-scoring answer, for logging only."""
        label = record.get("label") or {}
        return sample_answer(label, rng) if train else best_answer(label)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example token mean × the soft score of the sampled answer, then batch mean (``VLBartVQA.train_step``)."""
        per_example = example_mean_loss(logits, labels)
        if loss_weights is None:
            raise ValueError("the VQA loss needs loss_weights (the soft scores of the sampled answers)")
        return (per_example * loss_weights.to(per_example)).mean()

    def evaluation_records(self, dataset: TaskDataset) -> list[dict]:
        """Records for ``evaluate_vqa``: question_id, answers (10 strings), answer_type, question_type, label."""
        cache = dataset.__dict__.setdefault("_vqa_official", {})
        if not cache:
            no_answers = {r["question_id"] for r in dataset.records if "answers" not in r}
            no_types = {r["question_id"] for r in dataset.records if "answer_type" not in r or "question_type" not in r}
            if no_answers:  # VL-Adapter's way: the official files are the ground truth
                cache.update(_official_answers(dataset.datasets_root, no_answers | no_types))
            elif no_types:  # types only refine the breakdowns: read them when the files are there
                try:
                    cache.update(_official_answers(dataset.datasets_root, no_types))
                except DataError:
                    pass
        out = []
        for r in dataset.records:
            official = cache.get(r["question_id"], {})
            answers = r["answers"] if "answers" in r else official.get("answers")
            if answers is None:
                raise DataError(
                    f"Question {r['question_id']} has no answers in {self.name} {dataset.split} nor in "
                    f"{', '.join(OFFICIAL_ANNOTATIONS)}; add the official VQAv2 annotation files to the datasets root."
                )
            out.append({
                "question_id": r["question_id"],
                "answers": _answer_strings(answers),
                "answer_type": r.get("answer_type", official.get("answer_type", "other")),
                "question_type": r.get("question_type", official.get("question_type", "")),
                "label": r.get("label") or {},
            })
        return out

    def evaluate(self, predictions: Mapping, dataset: TaskDataset) -> dict:
        from vlrouting.evaluation.vqa import evaluate_vqa

        return evaluate_vqa(predictions, self.evaluation_records(dataset), version=self.eval_version)


def _official_answers(root: Path | None, question_ids: set) -> dict:
    """question_id → {answers, answer_type, question_type} for ``question_ids``, from the official VQAv2 files."""
    if root is None:
        raise DataError("The VQA dataset has no datasets root to read the official answers from; build it with build_dataset.")
    found: dict = {}
    paths = [Path(root) / rel for rel in OFFICIAL_ANNOTATIONS]
    existing = [p for p in paths if p.is_file()]
    if not existing:
        raise DataError(
            f"The VQA records lack 'answers' and neither {paths[0]} nor {paths[1]} exists; "
            "add the official VQAv2 annotation files (see the README's data section)."
        )
    for path in existing:
        data = read_json(path)
        anns = data.get("annotations") if isinstance(data, dict) else None
        if not isinstance(anns, list):
            raise DataError(f"Annotation file {path} lacks an 'annotations' list; re-download the official VQAv2 annotations.")
        for a in anns:
            qid = a.get("question_id")
            if qid in question_ids:
                found[qid] = {
                    "answers": a.get("answers", []),
                    "answer_type": a.get("answer_type", "other"),
                    "question_type": a.get("question_type", ""),
                }
        if len(found) == len(question_ids):
            break
    return found
