"""COCO captioning on the Karpathy split (VL-Adapter ``caption_clip_data.py`` / ``caption_model.py``; reference §1.2,
§4.1-§4.3, §3.4, §6).

- One file, ``COCO/dataset_coco.json``; ``restval`` is merged into ``train``. ``img_id`` = the file name without its
  extension (e.g. ``COCO_val2014_000000391895``); features from ``COCO/clip_features``.
- Train: one example per caption, target = that caption (stripped, case and punctuation kept), at most 40 tokens.
  Val/test: one example per image with all its raw captions as references (``record["references"]``); ``limit``
  counts images there.
- Encoder text = the prompt alone (``caption: ``; just ``<s></s>`` when prompts are off), at most 40 tokens.
- Loss: token mean over the whole batch (``reduce_loss=True``), unlike the other tasks' per-example mean.
- Decoding: beam 5, max length 40, no-repeat trigram blocking and early stopping — the options VL-Adapter inherited
  from bart-base's config, set here explicitly (DESIGN §9).
- Evaluation: COCO caption metrics; the headline is CIDEr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from vlrouting.errors import DataError
from vlrouting.data.layout import ANNOTATIONS
from vlrouting.data.tasks.base import IGNORE_INDEX, DecodeSpec, Source, Task, TaskDataset, read_json, token_losses

KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


def karpathy_records(root: Path, source: Source, wanted: tuple[str, ...], *, train: bool) -> list[dict]:
    """The images of Karpathy's ``dataset_coco.json`` (``source.annotation`` under ``root``) whose split is in
    ``wanted``: one record per caption when ``train`` (``sent``), else one per image with every caption as
    ``references``. ``img_id`` = the file name without its extension; captions stripped, case and punctuation kept."""
    path = root / source.annotation
    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"Annotation file {path} lacks an 'images' list; re-create it or re-download the Karpathy split.")
    records: list[dict] = []
    for i, img in enumerate(images):
        try:
            if img["split"] not in wanted:
                continue
            img_id = Path(img["filename"]).stem.split(".")[0]
            raw = [s["raw"] for s in img["sentences"]]
        except (KeyError, TypeError):
            raise DataError(
                f"Image entry {i} of {path} lacks filename, split or sentences[].raw; "
                "re-create the file or re-download the Karpathy split."
            ) from None
        bad = next((r for r in [img["filename"], *raw] if not isinstance(r, str)), None)
        if bad is None and not img_id:
            bad = img["filename"]
        if bad is not None:
            raise DataError(f"Image entry {i} of {path} has the filename or caption {bad!r}, which is not a "
                            f"(non-empty) string; fix the file or re-download the Karpathy split.")
        captions = [c.strip() for c in raw]
        if train:
            records += [{"img_id": img_id, "sent": c, "_features": source.features} for c in captions]
        else:
            records.append({"img_id": img_id, "references": captions, "_features": source.features})
    return records


@dataclass(frozen=True)
class CaptionTask(Task):
    name: str = "caption"
    prompt: str = "caption: "
    batch_ratio: Fraction = Fraction(50, 60)
    splits: Mapping[str, tuple[Source, ...]] = field(default_factory=lambda: dict(ANNOTATIONS["coco_captions"]))
    max_input_length: int | None = 40
    max_target_length: int | None = 40
    decode: DecodeSpec = DecodeSpec("beam", num_beams=5, max_length=40, no_repeat_ngram_size=3, early_stopping=True)
    headline_metric: str = "CIDEr"
    title: str = "COCO CIDEr"

    def load_records(self, root: Path, split: str) -> list[dict]:
        return karpathy_records(root, self.sources(split)[0], KARPATHY_SPLITS[split], train=split == "train")

    def example_id(self, record: dict):
        return record["img_id"]

    def text(self, record: dict) -> str:
        return self.prompt  # the caption encoder sees only the prompt (and the image)

    def target(self, record: dict, train: bool, rng: np.random.Generator | None) -> tuple[str, float]:
        if train:
            return record["sent"], 1.0
        refs = record.get("references") or [""]
        return refs[0], 1.0  # for logging only: eval batches carry no labels

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Token mean over every valid target token of the batch (``VLBartCOCOCaption.train_step``, reference §3.4)."""
        loss, mask = token_losses(logits, labels)
        return loss.sum() / mask.sum().clamp(min=1.0)

    def loss_weight(self, labels: torch.Tensor) -> torch.Tensor:
        """The batch's valid target tokens: with several processes the token mean must be over the global batch."""
        return (labels != IGNORE_INDEX).sum().to(torch.float32)

    def evaluate(self, predictions: Mapping, dataset: TaskDataset) -> dict:
        from vlrouting.evaluation.caption import evaluate_caption

        references = {}
        for r in dataset.records:
            references.setdefault(r["img_id"], []).extend(r.get("references") or [r["sent"]])
        return evaluate_caption(predictions, references)
