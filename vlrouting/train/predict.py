"""Predictions and metrics for one task split, with the task's own decoding (reference §4.3).

Greedy decoding for VQA/GQA, beam search for captions (beams, max length 40, no-repeat trigrams, early stopping,
set explicitly), and NLVR² by comparing the ``true``/``false`` logits at the first decoder step. Predictions are
written beside the metrics as ``predictions/<split>_<task>_epoch<k>.json``.
"""

from __future__ import annotations

import json

import torch

from vlrouting.data.multitask import make_eval_loader
from vlrouting.fileio import atomic_write_bytes


@torch.no_grad()
def predict_batch(model, task, batch: dict, tokenizer) -> list[str]:
    if task.decode.strategy == "true_false":
        true_id, false_id = task.answer_token_ids(tokenizer)
        logits = model.first_step_logits(batch)
        return ["true" if bool(t > f) else "false" for t, f in zip(logits[:, true_id], logits[:, false_id])]
    ids = model.generate(batch, **task.generate_kwargs())
    return [s.strip() for s in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def evaluate_split(trainer, task, split: str) -> dict:
    cfg = trainer.cfg
    dataset = task.build_dataset(cfg.data.root, split, trainer.tokenizer, limit=cfg.data.limit_eval,
                                 seed=cfg.train.seed, n_boxes=cfg.model.n_boxes)
    batch_size = cfg.train.eval_batch_size or task.batch_size(cfg.train.batch_size)
    loader = make_eval_loader(dataset, task, batch_size, num_workers=cfg.data.num_workers, seed=cfg.train.seed)
    device = trainer.info.device
    predictions = {}
    for batch in loader:
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        predictions.update(zip(batch["ids"], predict_batch(trainer.model, task, batch, trainer.tokenizer)))
    out = trainer.run_dir / "predictions" / f"{split}_{task.name}_epoch{trainer.epoch}.json"
    atomic_write_bytes(out, json.dumps([{"id": k, "prediction": v} for k, v in predictions.items()],
                                       indent=1).encode())
    return task.evaluate(predictions, dataset)
