"""COCO captioning as a prefix language-modelling task (routing paper §4.3, Table 4; reference/routing_official_spec.md
§4.2, §5.2, §5.3): task ``coco_lm``, objective ``prefix_lm``, scored by the ``caption`` evaluator.

- Annotations: Karpathy's ``COCO/dataset_coco.json`` (the layout's ``coco_captions``); images by file stem
  (``COCO_val2014_000000391895``), one pooled ViT vector each from ``COCO/vit_features``.
- Train: Karpathy ``train`` only — the released code reads ``captions_train_karpathy.json`` with images from
  ``train2014``, which excludes ``restval`` (whose images are in val2014) — one example per caption.
  Val/test: one example per image with all its references (``limit`` counts images); test = Karpathy test.
- Captions: GPT-2 tokens of the raw caption, at most 50 (``max_target_length``); no BOS/EOS is added here — the
  model family decides how EOS enters the targets (its ``recipe``). No encoder text, no prompt.
- Batches: ``vis_feats`` (B, 1, d), ``caption_ids``/``caption_mask`` (B, T) right-padded with the tokenizer's pad id
  (EOS for GPT-2), ``caption_limit`` (50). The model returns logits and targets already aligned.
- Loss: token mean over every target token of the batch; its weight is the number of target tokens, so N DDP
  processes optimise the one-process token mean.
- Decoding: beam 5, no n-gram blocking, no early stopping (the released code's HF defaults); the decoding length is
  the model recipe's (``model.max_new_tokens``).
- Columns: Table 4's BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE and Avg (×100); CIDEr is the headline. Without SPICE's
  jars SPICE is reported as unavailable and Avg averages the other four, naming them in ``Avg_metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from vlrouting.data.layout import ANNOTATIONS
from vlrouting.data.tasks.base import Column, DecodeSpec, LossTerm, Source, Task, TaskDataset, token_losses
from vlrouting.data.tasks.caption import karpathy_records
from vlrouting.errors import DataError

#: Table 4's metric columns in its order (keys of :func:`vlrouting.evaluation.caption.evaluate_caption`).
TABLE4_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "Avg")


@dataclass(frozen=True)
class CocoLMTask(Task):
    name: str = "coco_lm"
    prompt: str = ""
    batch_ratio: Fraction = Fraction(1)
    splits: Mapping[str, tuple[Source, ...]] = field(default_factory=lambda: dict(ANNOTATIONS["coco_captions"]))
    max_input_length: int | None = None
    max_target_length: int | None = 50
    decode: DecodeSpec = DecodeSpec("beam", num_beams=5, max_length=50, no_repeat_ngram_size=0, early_stopping=False)
    headline_metric: str = "CIDEr"
    title: str = "CIDEr"
    objective: str = "prefix_lm"
    evaluator: str = "caption"
    average_available_metrics: bool = True  # Avg over the metrics that exist (SPICE may be absent), named
    karpathy_splits: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"train": ("train",), "val": ("val",), "test": ("test",)})

    def columns(self) -> tuple[Column, ...]:
        """Table 4's columns in its order; CIDEr, the headline, is the one keyed by the task name."""
        return tuple(Column(self.name if m == self.headline_metric else f"{self.name}.{m}", m, (m,))
                     for m in TABLE4_METRICS)

    def load_records(self, root: Path, split: str) -> list[dict]:
        return karpathy_records(root, self.sources(split)[0], self.karpathy_splits[split], train=split == "train")

    def example_id(self, record: dict):
        return record["img_id"]

    def text(self, record: dict) -> str:
        return ""  # a prefix LM reads no text before the image

    def target(self, record: dict, train: bool, rng: np.random.Generator | None) -> tuple[str, float]:
        if train:
            return record["sent"], 1.0
        refs = record.get("references") or [""]
        return refs[0], 1.0  # for logging only: eval batches carry no captions

    def collate(self, examples: Sequence[dict]) -> dict:
        """The prefix-LM batch (module docstring)."""
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        shapes = {e["vis_feats"].shape for e in examples}
        if len(shapes) != 1:
            raise DataError(f"Visual features of one {self.name} batch differ in shape ({sorted(shapes)}); "
                            "re-extract vit_features with one ViT.")
        batch = {
            "task": self.name,
            "ids": [e["id"] for e in examples],
            "vis_feats": torch.from_numpy(np.stack([e["vis_feats"] for e in examples])),
            "caption_limit": int(self.max_target_length),
            "targets": [e["target"] for e in examples],
        }
        if examples[0]["target_ids"] is not None:
            lengths = [len(e["target_ids"]) for e in examples]
            ids = torch.full((len(examples), max(lengths)), examples[0]["pad_token_id"], dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, e in enumerate(examples):
                ids[i, : lengths[i]] = torch.as_tensor(e["target_ids"], dtype=torch.long)
                mask[i, : lengths[i]] = 1
            batch["caption_ids"], batch["caption_mask"] = ids, mask
        return batch

    def loss_term(self, output, batch: Mapping) -> LossTerm:
        """Token mean over the batch's target tokens (the released ``cross_entropy`` mean); weight = their count."""
        loss, mask = token_losses(output.logits, output.targets)
        count = mask.sum()
        return LossTerm(loss.sum() / count.clamp(min=1.0), count)

    def evaluate(self, predictions: Mapping, dataset: TaskDataset) -> dict:
        from vlrouting.evaluation.caption import evaluate_caption

        references: dict[str, list[str]] = {}
        for r in dataset.records:  # train records hold one caption each: gather each image's captions
            references.setdefault(r["img_id"], []).extend(r.get("references") or [r["sent"]])
        return evaluate_caption(predictions, references, average_available=self.average_available_metrics)
