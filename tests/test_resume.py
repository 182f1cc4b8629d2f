"""Resume rules (vlrouting.train.resume): which configuration changes are refused, how the logs are cut back to a
checkpoint, what a fresh start removes. In-process and file-level; the end-to-end runs are in test_train.py."""

from __future__ import annotations

import json

import pytest

from vlrouting.config import load_config
from vlrouting.errors import ConfigError
from vlrouting.train.resume import MAY_CHANGE, check_resumable, clear_failed_attempt, config_differences, \
    start_run, truncate_logs

BASE = ["train.epochs=20"]


def diffs(*overrides, name="multitask_adapter_comb3"):
    return config_differences(load_config("multitask_adapter_comb3", BASE), load_config(name, [*BASE, *overrides]))


def test_keys_that_may_change_are_accepted():
    assert diffs("train.epochs=30", "train.max_steps=7", "train.checkpoint_every=100", "train.log_every=1",
                 "train.tensorboard=true", "train.eval_batch_size=64", "data.num_workers=0", "train.compile=true",
                 "data.persistent_workers=false", "data.prefetch_factor=4", "data.buffers_per_worker=0",
                 "data.pin_memory=false",
                 "output.snap_dir=/elsewhere", "output.experiment=multitask_adapter_comb3") == []
    assert sorted(MAY_CHANGE) == ["data.buffers_per_worker", "data.num_workers", "data.persistent_workers",
                                  "data.pin_memory", "data.prefetch_factor", "train.checkpoint_every", "train.compile",
                                  "train.compile_backend", "train.compile_dynamic", "train.epochs",
                                  "train.eval_batch_size", "train.log_every", "train.max_steps", "train.tensorboard"]


def test_other_changes_are_listed_old_to_new():
    assert diffs("peft.routing=comb1", "train.lr=3e-4") == ["peft.routing: comb3 → comb1",
                                                          "train.lr: 0.001 → 0.0003"]
    assert diffs("train.epochs=19") == ["train.epochs: 20 → 19 (may only grow)"]
    assert diffs("peft.method=lora") == ["peft.method: adapter → lora"]
    assert diffs("data.tasks=[vqa,gqa]") == ['data.tasks: ["vqa", "gqa", "nlvr", "caption"] → ["vqa", "gqa"]']
    assert diffs(name="vladapter_full_finetuning")[0] == "peft: adapter config → null (full fine-tuning)"
    assert diffs("data.root=/other") == ["data.root: datasets → /other"]


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_logs_are_cut_back_to_the_checkpoint(tmp_path):
    steps = [{"step": s, "epoch": 0 if s <= 4 else 1, "task": "vqa", "loss": 1.0 / s} for s in range(1, 7)]
    val1 = [{"epoch": 1, "step": 4, "split": "val", "task": t, "headline": 1.0} for t in ("vqa", "gqa")]
    val2 = [{"epoch": 2, "step": 6, "split": "val", "task": "vqa", "headline": 2.0}]
    test = [{"epoch": 2, "step": 6, "split": "test", "task": "vqa", "headline": 3.0}]
    _write(tmp_path / "train_log.jsonl", steps, tail='{"step": 7, "ep')  # cut short by the kill
    _write(tmp_path / "metrics.jsonl", val1 + val2 + test)
    # the end-of-epoch checkpoint after epoch 2's validation: only the test lines go
    truncate_logs(tmp_path, step=6, epoch=2)
    assert (tmp_path / "train_log.jsonl").read_text().splitlines() == [json.dumps(r) for r in steps]
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == [json.dumps(r) for r in val1 + val2]
    # a mid-epoch checkpoint at step 6 (epoch 1), taken before epoch 2's validation: it goes as well
    truncate_logs(tmp_path, step=6, epoch=1)
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == [json.dumps(r) for r in val1]
    # the in-loop checkpoint at epoch 0's last step precedes epoch 1's validation, logged at the same step
    truncate_logs(tmp_path, step=4, epoch=0)
    assert (tmp_path / "train_log.jsonl").read_text().splitlines() == [json.dumps(r) for r in steps[:4]]
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_a_fresh_start_clears_an_attempt_without_checkpoint(tmp_path):
    cfg = load_config("multitask_adapter_comb3", [f"output.snap_dir={tmp_path}"])
    run = cfg.run_dir
    (run / "predictions").mkdir(parents=True)
    (run / "predictions" / "val_vqa_epoch1.json").write_text("[]")
    for name in ("train_log.jsonl", "metrics.jsonl", "log.txt", "config.yaml"):
        (run / name).write_text("stale\n")
    start_run(cfg, is_main=True)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]  # rewritten by the trainer right after
    assert clear_failed_attempt(run) == []
    (run / "training_state.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="already holds a run; pass --resume latest"):
        start_run(cfg, is_main=True)


def test_resume_without_a_checkpoint_or_with_a_broken_results_file(tmp_path):
    from vlrouting.errors import DataError

    cfg = load_config("multitask_adapter_comb3", [f"output.snap_dir={tmp_path}"])
    cfg.run_dir.mkdir(parents=True)
    with pytest.raises(DataError, match="no training_state.pt .* start without --resume"):
        check_resumable(cfg)
    (cfg.run_dir / "results.json").write_text('{"status": "compl')
    with pytest.raises(DataError, match="results.json is not readable JSON"):
        check_resumable(cfg)
