"""Trainer checks (issue 6): parameter anchors, DDP equivalence, resume, crash-safe checkpoints, bad input.

Every run here is a real ``python -m vlrouting.train`` (or ``torchrun``) subprocess on the synthetic benchmark with a
tiny backbone, one thread per process, so the code under test is exactly what users launch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def run_train(args: list[str], *, nproc: int = 1, env_extra: dict | None = None, cwd: Path | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    if nproc == 1:
        cmd = [sys.executable, "-m", "vlrouting.train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
               "-m", "vlrouting.train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd or REPO)


def common(bench, snap: Path, **extra) -> list[str]:
    opts = {
        "data.root": bench["root"], "model.backbone": bench["tiny"], "output.snap_dir": snap,
        "model.feat_dim": 512, "data.num_workers": 0, "train.eval_every": 0, "train.test_after": "false",
        "train.log_every": 0, "model.dropout": 0.0,
    }
    opts.update(extra)
    return [f"{k}={v}" for k, v in opts.items()]


def losses(run_dir: Path) -> list[tuple[str, float]]:
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [(r["task"], r["loss"]) for r in map(json.loads, lines)]


# ----------------------------------------------------------------------------------------------- params


@pytest.mark.parametrize("name, line", [
    ("vladapter_single_adapter", "trainable: 6,081,600 | total: 145,606,464 | trainable%: 4.18"),
    ("vladapter_multiple_adapters", "trainable: 19,430,400 | total: 158,955,264 | trainable%: 12.22"),
    ("vladapter_single_lora", "trainable: 8,786,688 | total: 148,234,752 | trainable%: 5.93"),
    ("vladapter_multiple_lora", "trainable: 30,020,352 | total: 169,468,416 | trainable%: 17.71"),
])
def test_params_prints_vladapter_anchors(name, line, capsys):
    from vlrouting.__main__ import main

    assert main(["params", "--config", name]) == 0
    assert capsys.readouterr().out.strip() == line


@pytest.mark.parametrize("routing", ["mul", "proj", "comb3"])
def test_routing_changes_no_parameter_count(routing, capsys):
    from vlrouting.__main__ import main

    main(["params", "--config", "vladapter_single_adapter", f"peft.routing={routing}"])
    assert capsys.readouterr().out.strip().startswith("trainable: 6,081,600 | total: 145,606,464")


def test_every_paper_config_loads_with_table_a1_rates():
    from vlrouting.config import load_config, packaged_configs

    names = packaged_configs()
    rows = [n for n in names if n.startswith("multitask_")]
    assert len(rows) == 24
    for name in rows:
        cfg = load_config(name)
        assert cfg.model.backbone == "facebook/bart-base"
        if "comb" in name:
            assert cfg.train.lr == {"comb1": 1e-3, "comb2": 3e-4, "comb3": 1e-3, "comb4": 3e-4}[name[-5:]]
        elif "adapter_multiple" in name:
            assert cfg.train.lr == 3e-4
        else:
            assert cfg.train.lr == 1e-3
        assert cfg.peft.route_sides == ["decoder"]  # x_R from the encoder feeds the decoder's modules


# ----------------------------------------------------------------------------------------------- DDP


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(synthetic_bench, tmp_path):
    """gloo, 2 × batch b against 1 × batch 2b. GQA and NLVR² reduce per example, so with equal per-rank batches
    the mean of the rank losses is the global mean and DDP's averaged gradient is the full-batch gradient: the
    losses agree up to float summation order (tolerance 1e-4 relative)."""
    shared = dict(**{"data.tasks": "[gqa,nlvr]", "data.limit_train": 40, "train.epochs": 1, "train.lr": 3e-3,
                     "train.max_steps": 6})
    one = run_train(["--config", "multitask_adapter_single_mul",
                     *common(synthetic_bench, tmp_path / "one", **shared, **{"train.batch_size": 12})])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_train(["--config", "multitask_adapter_single_mul",
                     *common(synthetic_bench, tmp_path / "two", **shared, **{"train.batch_size": 6})], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a = losses(tmp_path / "one" / "multitask_adapter_single_mul" / "seed9595")
    b = losses(tmp_path / "two" / "multitask_adapter_single_mul" / "seed9595")
    assert len(a) == len(b) == 6
    assert [t for t, _ in a] == [t for t, _ in b]
    for (_, la), (_, lb) in zip(a, b):
        assert lb == pytest.approx(la, rel=1e-4)
    assert a[-1][1] != a[0][1]  # the steps really updated something


# ----------------------------------------------------------------------------------------------- resume


def _resume_args(bench, snap):
    return ["--config", "multitask_adapter_comb3",
            *common(bench, snap, **{"data.limit_train": 24, "train.epochs": 2, "train.batch_size": 8,
                                    "train.checkpoint_every": 3, "train.lr": 3e-3})]


def test_resume_after_kill_mid_epoch_gives_the_same_weights(synthetic_bench, tmp_path):
    full = run_train(_resume_args(synthetic_bench, tmp_path / "a"))
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run_train(_resume_args(synthetic_bench, tmp_path / "b"), env_extra={"VLROUTING_FAULT_KILL_AT_STEP": "5"})
    assert killed.returncode == -signal.SIGKILL
    run_b = tmp_path / "b" / "multitask_adapter_comb3" / "seed9595"
    state = torch.load(run_b / "training_state.pt", weights_only=True)
    assert state["step"] == 3 and state["epoch"] == 0  # mid-epoch checkpoint
    resumed = run_train([*_resume_args(synthetic_bench, tmp_path / "b"), "--resume", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_a = tmp_path / "a" / "multitask_adapter_comb3" / "seed9595"
    wa = load_file(str(run_a / "adapter_model.safetensors"))
    wb = load_file(str(run_b / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and len(wa) > 0
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    la, lb = losses(run_a), losses(run_b)
    assert la[:5] == lb[:5] and la[3:] == lb[5:]  # b logged steps 1-5, died, resumed from step 3


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(synthetic_bench, tmp_path):
    died = run_train(_resume_args(synthetic_bench, tmp_path), env_extra={"VLROUTING_FAULT_KILL_IN_CHECKPOINT": "2"})
    assert died.returncode == -signal.SIGKILL
    run = tmp_path / "multitask_adapter_comb3" / "seed9595"
    state = torch.load(run / "training_state.pt", weights_only=True)  # loads: not torn
    assert state["step"] == 3
    orphans = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert len(orphans) == 1 and orphans[0].startswith(".training_state.pt.")  # the complete, never renamed file
    resumed = run_train([*_resume_args(synthetic_bench, tmp_path), "--resume", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["status"] == "completed"
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]  # removed when the run resumed
    umask = os.umask(0)
    os.umask(umask)
    for name in ("adapter_model.safetensors", "training_state.pt", "results.json"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name  # not mkstemp's 0600


# ----------------------------------------------------------------------------------------------- bad input
# (the pre-flight and configuration cases are in tests/test_bad_input.py)


def _assert_one_sentence(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_divergence_names_the_checkpoint_it_keeps(synthetic_bench, tmp_path):
    """lr 1e30: step 1 writes a checkpoint (checkpoint_every=1), then the loss is not finite; the message names
    the kept checkpoint (the case without a checkpoint is in test_bad_input)."""
    proc = run_train(["--config", "multitask_adapter_comb3",
                      *common(synthetic_bench, tmp_path, **{"data.limit_train": 24, "train.epochs": 1,
                                                            "train.batch_size": 8, "train.checkpoint_every": 1,
                                                            "train.lr": 1e30})])
    run = tmp_path / "multitask_adapter_comb3" / "seed9595"
    _assert_one_sentence(proc, "loss became NaN/Inf at step", f"the last checkpoint in {run} is kept",
                         "--resume latest")
    assert (run / "training_state.pt").is_file() and not (run / "results.json").exists()


def test_batch_ratio_overrides():
    """data.batch_ratios.<task> replaces VL-Adapter's ratio for that task only; bad entries are one sentence."""
    from vlrouting.config import load_config
    from vlrouting.errors import ConfigError
    from vlrouting.train.tasks_setup import build_tasks

    cfg = load_config("vladapter_full_finetuning", ["train.batch_size=32", "data.batch_ratios.nlvr=1.5"])
    assert {n: t.batch_size(32) for n, t in build_tasks(cfg).items()} == {"vqa": 32, "gqa": 53, "nlvr": 48,
                                                                         "caption": 26}
    for bad, needle in ((["data.batch_ratios.foo=1"], "not a task of this run"),
                        (["data.batch_ratios.nlvr=0"], "positive number"),
                        (["data.batch_ratios=3"], "map task names")):
        with pytest.raises(ConfigError, match=needle):
            build_tasks(load_config("vladapter_full_finetuning", bad))
