"""Predictions and metrics for one task split (reference §4.3).

The model family decides how a task is predicted (:meth:`vlrouting.models.FamilyModel.predict`: CLIP-BART greedy
decoding for VQA/GQA, beam search for captions with every option set explicitly, NLVR² by comparing the
``true``/``false`` logits at the first decoder step), a whole batch at a time; examples are visited sorted by their
input length so a batch pads little. Predictions are written beside the metrics as
``predictions/<split>_<task>_epoch<k>.json``; the metrics gain ``eval_examples_per_s``.
"""

from __future__ import annotations

import json
import time

import torch

from vlrouting.data.multitask import make_eval_loader
from vlrouting.fileio import atomic_write_bytes


def evaluate_split(trainer, task, split: str) -> dict:
    cfg = trainer.cfg
    dataset = task.build_dataset(cfg.data.root, split, trainer.tokenizer, limit=cfg.data.limit_eval,
                                 seed=cfg.train.seed, spec=cfg.model.data_spec())
    batch_size = cfg.train.eval_batch_size or task.batch_size(cfg.train.batch_size)
    loader = make_eval_loader(dataset, task, batch_size, num_workers=cfg.data.num_workers,
                              pin_memory=trainer.info.device.type == "cuda", order=dataset.length_order(),
                              seed=cfg.train.seed, prefetch_factor=cfg.data.prefetch_factor)
    device = trainer.info.device
    predictions = {}
    start = time.perf_counter()
    for batch in loader:
        batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        predictions.update(zip(batch["ids"], trainer.model.predict(task, batch, trainer.tokenizer)))
    rate = len(predictions) / max(time.perf_counter() - start, 1e-9)
    out = trainer.run_dir / "predictions" / f"{split}_{task.name}_epoch{trainer.epoch}.json"
    atomic_write_bytes(out, json.dumps([{"id": k, "prediction": v} for k, v in predictions.items()],
                                       indent=1).encode())
    metrics = task.evaluate(predictions, dataset)
    metrics["eval_examples_per_s"] = round(rate, 2)
    return metrics
