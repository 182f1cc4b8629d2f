"""VQAv2 as classification over the answer vocabulary (routing paper §4, Tables 1–3, B4; reference/
routing_official_spec.md §4.1, §5.2, §5.3): the task of the ViT+RoBERTa family.

- Data: the same Karpathy files and images as ``vqa`` (the layout's ``vqa`` annotations, COCO images), the
  answer vocabulary ``vqa/trainval_ans2label.json`` (3,129 answers for VQAv2). The question is tokenized as
  ``<s> … </s>`` and truncated to 19 tokens (the visual prefix makes 20); no task prompt.
- Target: the VL-T5 / LXMERT soft label of the record (answer → score; answers outside the vocabulary are dropped)
  as a dense (B, A) vector. Loss: ``BCEWithLogits`` averaged over all B × A entries, as the released code's
  ``BCEWithLogitsLoss()``. As a :class:`~vlrouting.data.tasks.LossTerm` it is the local mean over B × A with
  weight B (A is the same on every process), so the trainer's all-reduce of the weights makes N processes optimise
  exactly Σ_all entries / (A · global B) — the one-process loss of the same global batch.
- Prediction: the arg-max answer string.
- Evaluation (evaluator ``vqa``): the official VQAv2 accuracy and VL-Adapter's soft score ``Σ label[pred] / N``
  from :func:`vlrouting.evaluation.vqa.evaluate_vqa`, per answer type (Table 2) and per Appendix-A question group
  (Table 3). The headline (``accuracy``) is the official accuracy by default; a data spec with
  ``headline="soft"`` (the family's released recipe: the authors' evaluator) makes it the soft score. The
  breakdowns (``breakdown``) always use the headline's score, so the column "all" is the mean of its parts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from vlrouting.data.layout import ANNOTATIONS, FILES, DataSpec
from vlrouting.data.tasks.base import (
    Column, DecodeSpec, LossTerm, Source, TaskDataset, check_limit, check_root, open_stores,
)
from vlrouting.data.tasks.vqa import VQATask
from vlrouting.errors import ConfigError, DataError

#: The headline scores this task offers (``DataSpec.headline``) and the metric each reads.
HEADLINES: dict[str, str] = {"official": "overall", "soft": "topk_score"}
DEFAULT_HEADLINE = "official"
ANSWER_TYPE_KEYS = ("yes/no", "number", "other")  # Table 2
GROUP_KEYS = ("where", "color", "time", "person")  # Table 3 / Appendix A


@lru_cache(maxsize=8)
def _read_vocab(path: str, mtime: float) -> tuple[str, ...]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"Answer vocabulary {path} is not readable JSON ({exc}); re-create or re-download it.") \
            from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"Answer vocabulary {path} must map answers to indices 0..A-1; re-create or re-download it.")
    indices = sorted(data.values()) if all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()) \
        else None
    if indices != list(range(len(data))):
        raise DataError(f"Answer vocabulary {path} must map its {len(data)} answers to the indices 0..{len(data) - 1} "
                        "once each; re-create or re-download it.")
    label2ans = [""] * len(data)
    for answer, index in data.items():
        label2ans[index] = answer
    return tuple(label2ans)


def answer_vocabulary(root: str | Path) -> tuple[str, ...]:
    """label → answer of ``<root>/vqa/trainval_ans2label.json`` (index order)."""
    path = Path(root) / FILES["vqa_ans2label"]
    if not path.is_file():
        raise DataError(f"Answer vocabulary {path} does not exist; place the VL-T5 trainval_ans2label.json there "
                        "(or create the synthetic set with `python -m vlrouting synthetic --root DIR`).")
    return _read_vocab(str(path), path.stat().st_mtime)


def headline_kind(spec: DataSpec | None) -> str:
    kind = (spec.headline if spec is not None else "") or DEFAULT_HEADLINE
    if kind not in HEADLINES:
        raise ConfigError(f"headline score '{kind}' is unknown to vqa_cls; choose one of {', '.join(HEADLINES)}.")
    return kind


class VQAClsDataset(TaskDataset):
    """Examples of ``vqa_cls``: question ids, the visual input and the soft scores as (answer index, score)."""

    def __init__(self, *args, label2ans: tuple[str, ...], **kwargs):
        super().__init__(*args, **kwargs)
        self.label2ans = label2ans
        self.ans2label = {a: i for i, a in enumerate(label2ans)}

    def __getitem__(self, index: int) -> dict:
        task, rec = self.task, self.records[index]
        (ds, img_id), = task.image_keys(rec)
        label = rec.get("label") or {}
        return {
            "task": task.name,
            "id": task.example_id(rec),
            "input_ids": self._encode(task.text(rec), task.max_input_length),
            "vis_feats": np.asarray(self.stores[ds][img_id], dtype=np.float32),
            "answer_scores": [(self.ans2label[a], float(s)) for a, s in label.items() if a in self.ans2label],
            "pad_token_id": self.pad_token_id,
            "label2ans": self.label2ans,  # a reference to one tuple: lets predict() return answer strings
        }

    def __getitems__(self, indices) -> list[dict]:
        """The examples of ``indices`` one by one (the DataLoader's batch read): the soft-label targets draw
        nothing per epoch and a pooled vector is one 1 × d row (or an image online), so the batched read of the
        generation tasks has nothing to gain here."""
        return [self[int(i)] for i in indices]


@dataclass(frozen=True)
class VQAClsTask(VQATask):
    name: str = "vqa_cls"
    prompt: str = ""
    splits: Mapping[str, tuple[Source, ...]] = field(default_factory=lambda: dict(ANNOTATIONS["vqa"]))
    max_input_length: int | None = 19  # question incl. <s> </s>; + the one-token visual prefix = 20
    max_target_length: int | None = None
    decode: DecodeSpec = DecodeSpec("greedy", max_length=1)  # not used: the prediction is the arg-max answer
    headline_metric: str = "accuracy"
    title: str = "VQA"
    objective: str = "classify"
    evaluator: str = "vqa"

    def columns(self) -> tuple[Column, ...]:
        """Headline, the soft score, then Table 2's answer types and Table 3's question groups."""
        return (Column(self.name, self.title, ("accuracy",)),
                Column(f"{self.name}.soft", "VQA soft", ("topk_score",)),
                *(Column(f"{self.name}.{k}", k, ("breakdown", k)) for k in ANSWER_TYPE_KEYS + GROUP_KEYS))

    # ------------------------------------------------------------------------------------------ data
    def check_data(self, root: Path, spec: DataSpec) -> None:
        headline_kind(spec)
        vocab = answer_vocabulary(root)
        if spec.num_answers is not None and spec.num_answers != len(vocab):
            raise ConfigError(f"{Path(root) / FILES['vqa_ans2label']} has {len(vocab)} answers but the model's "
                              f"classifier has {spec.num_answers}; set model.num_answers={len(vocab)}.")

    def build_dataset(self, datasets_root, split: str, tokenizer, features=None, limit: int | None = None, *,
                      seed: int = 0, spec: DataSpec | None = None) -> VQAClsDataset:
        spec = spec or DataSpec()
        self.sources(split)
        limit = check_limit(limit)
        root = check_root(datasets_root)
        self.check_data(root, spec)
        records = self.load_records(root, split)
        if limit is not None:
            records = records[:limit]
        stores = open_stores(root, self.feature_datasets(split), features, spec)
        return VQAClsDataset(self, split, records, tokenizer, stores, seed=seed,
                             max_text_positions=spec.max_text_positions, datasets_root=root, spec=spec,
                             label2ans=answer_vocabulary(root))

    def collate(self, examples: Sequence[dict]) -> dict:
        """``input_ids``/``attention_mask`` (B, L) right-padded, ``vis_feats`` stacked, ``labels`` (B, A) soft
        scores, ``label2ans`` (the vocabulary, for predictions)."""
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        b = len(examples)
        lengths = [len(e["input_ids"]) for e in examples]
        input_ids = torch.full((b, max(lengths)), examples[0]["pad_token_id"], dtype=torch.long)
        attention_mask = torch.zeros((b, max(lengths)), dtype=torch.long)
        for i, e in enumerate(examples):
            input_ids[i, : lengths[i]] = torch.as_tensor(e["input_ids"], dtype=torch.long)
            attention_mask[i, : lengths[i]] = 1
        shapes = {e["vis_feats"].shape for e in examples}
        if len(shapes) != 1:
            raise DataError(f"Visual inputs of one {self.name} batch differ in shape ({sorted(shapes)}); "
                            "re-extract the features with one model.")
        label2ans = examples[0]["label2ans"]
        labels = torch.zeros((b, len(label2ans)), dtype=torch.float32)
        for i, e in enumerate(examples):
            for k, score in e["answer_scores"]:
                labels[i, k] = score
        return {"task": self.name, "ids": [e["id"] for e in examples], "input_ids": input_ids,
                "attention_mask": attention_mask,
                "vis_feats": torch.from_numpy(np.stack([e["vis_feats"] for e in examples])),
                "labels": labels, "label2ans": label2ans}

    # ------------------------------------------------------------------------------------------ loss
    def loss_term(self, output, batch: Mapping) -> LossTerm:
        """BCE with logits, mean over the B × A entries (module docstring), weight B."""
        logits, targets = output.logits.float(), output.targets
        if targets is None or targets.shape != logits.shape:
            raise ValueError(f"vqa_cls needs logits and soft-score targets of one shape (B, A), got "
                             f"{tuple(logits.shape)} and {None if targets is None else tuple(targets.shape)}")
        value = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
        return LossTerm(value, torch.tensor(float(logits.shape[0]), device=logits.device))

    # ------------------------------------------------------------------------------------------ metrics
    def evaluate(self, predictions: Mapping, dataset: TaskDataset) -> dict:
        from vlrouting.evaluation.vqa import evaluate_vqa

        records = self.evaluation_records(dataset)
        metrics = evaluate_vqa(predictions, records, version=self.eval_version)  # train.vqa_eval_version
        kind = headline_kind(getattr(dataset, "spec", None))
        if HEADLINES[kind] not in metrics:
            raise DataError(f"the {kind} score needs a soft 'label' on every {self.name} {dataset.split} record; "
                            "use the VL-T5 Karpathy files or the official accuracy.")
        metrics["accuracy"] = metrics[HEADLINES[kind]]
        metrics["accuracy_kind"] = kind
        if kind == "official":
            metrics["breakdown"] = {**metrics["per_answer_type"], **metrics["question_groups"]}
        else:
            metrics["breakdown"] = soft_breakdown(predictions, records)
        return metrics


def soft_breakdown(predictions: Mapping, records: Sequence[Mapping]) -> dict:
    """The soft score ×100 (two decimals) per answer type and per Appendix-A question group (None when empty)."""
    from vlrouting.evaluation._common import id_key, percent
    from vlrouting.evaluation.vqa import QUESTION_GROUPS

    preds = {id_key(k): v for k, v in predictions.items()}
    sums = {k: [0.0, 0] for k in ANSWER_TYPE_KEYS + GROUP_KEYS}
    for rec in records:
        score = float((rec.get("label") or {}).get(preds.get(id_key(rec["question_id"])), 0.0))
        qtype = rec.get("question_type")
        keys = [rec.get("answer_type")] + [g for g, types in QUESTION_GROUPS.items() if qtype in types]
        for key in keys:
            if key in sums:
                sums[key][0] += score
                sums[key][1] += 1
    return {k: percent(total, n, 2) for k, (total, n) in sums.items()}
