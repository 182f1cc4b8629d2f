"""Predictions and metrics for one task split (reference §4.3).

The model family decides how a task is predicted (:meth:`vlrouting.models.FamilyModel.predict`: CLIP-BART greedy
decoding for VQA/GQA, beam search for captions with every option set explicitly, NLVR² by comparing the
``true``/``false`` logits at the first decoder step). Predictions are written beside the metrics as
``predictions/<split>_<task>_epoch<k>.json``.
"""

from __future__ import annotations

import json

import torch

from vlrouting.data.multitask import make_eval_loader
from vlrouting.fileio import atomic_write_bytes


@torch.no_grad()
def predict_batch(model, task, batch: dict, tokenizer) -> list[str]:
    """One prediction per example of ``batch`` (kept for callers of the former helper)."""
    return model.predict(task, batch, tokenizer)


def evaluate_split(trainer, task, split: str) -> dict:
    cfg = trainer.cfg
    dataset = task.build_dataset(cfg.data.root, split, trainer.tokenizer, limit=cfg.data.limit_eval,
                                 seed=cfg.train.seed, spec=cfg.model.data_spec())
    batch_size = cfg.train.eval_batch_size or task.batch_size(cfg.train.batch_size)
    loader = make_eval_loader(dataset, task, batch_size, num_workers=cfg.data.num_workers)
    device = trainer.info.device
    predictions = {}
    for batch in loader:
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        predictions.update(zip(batch["ids"], trainer.model.predict(task, batch, trainer.tokenizer)))
    out = trainer.run_dir / "predictions" / f"{split}_{task.name}_epoch{trainer.epoch}.json"
    atomic_write_bytes(out, json.dumps([{"id": k, "prediction": v} for k, v in predictions.items()],
                                       indent=1).encode())
    return task.evaluate(predictions, dataset)
