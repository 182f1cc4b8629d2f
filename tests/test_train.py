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
        "train.log_every": 0,
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
    ("vladapter_single_compacter", "trainable: 3,870,240 | total: 143,395,104 | trainable%: 2.70"),
    ("vladapter_multiple_compacters", "trainable: 10,584,960 | total: 150,109,824 | trainable%: 7.05"),
    ("vladapter_hyperformer", "trainable: 8,579,088 | total: 148,103,952 | trainable%: 5.79"),
    ("vladapter_half_shared_adapters", "trainable: 12,725,760 | total: 152,250,624 | trainable%: 8.36"),
    ("vladapter_single_prompt", "trainable: 2,843,936 | total: 142,417,952 | trainable%: 2.00"),
    ("vladapter_multiple_prompts", "trainable: 6,627,200 | total: 146,201,216 | trainable%: 4.53"),
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



def test_warmup_steps_override_the_ratio_and_clipping_can_be_switched_off():
    """The GPT-2 captioning recipe (spec §5.1): 5,000 warm-up steps whatever the run length, no gradient clipping."""
    from vlrouting.config import build_config
    from vlrouting.errors import ConfigError
    from vlrouting.train.trainer import linear_schedule

    def factors(**kw):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = linear_schedule(opt, 10, **kw)
        out = []
        for _ in range(10):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert factors(warmup_ratio=0.2) == pytest.approx([0, 0.5, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    assert factors(warmup_ratio=0.2, warmup_steps=4) == pytest.approx(
        [0, 0.25, 0.5, 0.75, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert factors(warmup_ratio=0.2, warmup_steps=0)[:2] == pytest.approx([1.0, 0.9])
    cfg = build_config({"name": "x", "train": {"clip_grad_norm": 0, "warmup_steps": 5000}})
    assert (cfg.train.clip_grad_norm, cfg.train.warmup_steps) == (0, 5000)
    with pytest.raises(ConfigError, match="train.warmup_steps must be 0 or more steps"):
        build_config({"name": "x", "train": {"warmup_steps": -1}})
    with pytest.raises(ConfigError, match=r"train.clip_grad_norm must be 0 or \.inf \(no clipping\) or positive"):
        build_config({"name": "x", "train": {"clip_grad_norm": -1.0}})

# ----------------------------------------------------------------------------------------------- DDP


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(synthetic_bench, tmp_path):
    """gloo, 2 × batch b against 1 × batch 2b, all four tasks. Every task's loss is a local mean over units
    (examples; COCO: target tokens) whose count the trainer sums over the ranks, so the two processes optimise the
    mean over the global batch even when their halves hold different numbers of caption tokens (a per-rank token
    mean averaged by DDP does not). Losses and weights agree up to float summation order.

    Dropout is off here (and only here): its masks come from each process' own random stream, so 2 processes
    cannot draw the masks 1 process draws for the same examples, whatever the reduction."""
    shared = dict(**{"data.limit_train": 40, "train.epochs": 1, "train.lr": 3e-3, "train.max_steps": 8,
                     "model.dropout": 0.0})
    one = run_train(["--config", "multitask_lora_single_mul", "peft.lora_dropout=0.0",
                     *common(synthetic_bench, tmp_path / "one", **shared, **{"train.batch_size": 12})])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_train(["--config", "multitask_lora_single_mul", "peft.lora_dropout=0.0",
                     *common(synthetic_bench, tmp_path / "two", **shared, **{"train.batch_size": 6})], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    run_a = tmp_path / "one" / "multitask_lora_single_mul" / "seed9595"
    run_b = tmp_path / "two" / "multitask_lora_single_mul" / "seed9595"
    a, b = losses(run_a), losses(run_b)
    assert len(a) == len(b) == 8
    assert [t for t, _ in a] == [t for t, _ in b]
    assert {"vqa", "gqa", "nlvr", "caption"} <= {t for t, _ in a}  # every task took a step
    for (_, la), (_, lb) in zip(a, b):
        assert lb == pytest.approx(la, rel=1e-4)
    assert a[-1][1] != a[0][1]  # the steps really updated something
    wa = load_file(str(run_a / "adapter_model.safetensors"))
    wb = load_file(str(run_b / "adapter_model.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


# ----------------------------------------------------------------------------------------------- resume


#: A packaged config with every dropout of a real run: bart-base's 0.1 (the tiny backbone keeps bart-base's
#: rates) and LoRA's 0.1. 12 training examples per task, base batch 8: 11 steps per epoch, 22 in all; checkpoints
#: every 5 steps and at the end of each epoch.
RESUME_CONFIG = "multitask_lora_single_mul"
KILL_AT = "VLROUTING_FAULT_KILL_AT_STEP"


def _resume_args(bench, snap, **extra):
    return ["--config", RESUME_CONFIG,
            *common(bench, snap, **{"data.limit_train": 12, "train.epochs": 2, "train.batch_size": 8,
                                    "train.checkpoint_every": 5, "train.lr": 3e-3, **extra})]


def _run_dir(snap: Path) -> Path:
    return snap / RESUME_CONFIG / "seed9595"


def _checkpoint(run: Path) -> tuple[int, int, int]:
    state = torch.load(run / "training_state.pt", weights_only=True)
    return state["step"], state["epoch"], state["loader"]["consumed"]


def _assert_same_run(run: Path, reference: Path) -> None:
    """Bit-identical trainable tensors and an identical step log (every loss and lr, each step once)."""
    ref = load_file(str(reference / "adapter_model.safetensors"))
    got = load_file(str(run / "adapter_model.safetensors"))
    assert got.keys() == ref.keys() and len(ref) > 0
    for key in ref:
        assert torch.equal(got[key], ref[key]), (key, (got[key] - ref[key]).abs().max().item())
    assert (run / "train_log.jsonl").read_text() == (reference / "train_log.jsonl").read_text()


@pytest.fixture(scope="module")
def reference_run(synthetic_bench, tmp_path_factory):
    """The uninterrupted run every resumed one is compared with (data.num_workers=0)."""
    snap = tmp_path_factory.mktemp("reference")
    proc = run_train(_resume_args(synthetic_bench, snap))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(losses(_run_dir(snap))) == 22
    return _run_dir(snap)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_after_kills_is_bit_identical_with_dropout(synthetic_bench, reference_run, tmp_path, workers):
    """SIGKILL mid-epoch, resume; SIGKILL right after an epoch boundary, resume from the end-of-epoch checkpoint;
    the weights and every logged loss equal the uninterrupted run's (which ran with 0 workers: the batches and the
    dropout masks do not depend on the workers)."""
    args = _resume_args(synthetic_bench, tmp_path, **{"data.num_workers": workers})
    run = _run_dir(tmp_path)
    killed = run_train(args, env_extra={KILL_AT: "7"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _checkpoint(run) == (5, 0, 5)  # mid-epoch: 5 of epoch 0's 11 batches consumed
    again = run_train([*args, "--resume", "latest"], env_extra={KILL_AT: "13"})
    assert again.returncode == -signal.SIGKILL, again.stderr[-3000:]
    assert _checkpoint(run) == (11, 1, 0)  # the end-of-epoch checkpoint: epoch 1, nothing consumed yet
    steps = [json.loads(x)["step"] for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 14))  # steps 6-7 of the first attempt were cut on resume and logged again
    # keys that may change on resume, changed (config.yaml then records them)
    final = run_train([*args, "train.checkpoint_every=4", "train.log_every=5", "--resume", "latest"])
    assert final.returncode == 0, final.stderr[-3000:]
    assert "checkpoint_every: 4" in (run / "config.yaml").read_text()
    _assert_same_run(run, reference_run)


def test_failed_first_attempt_then_kill_during_checkpoint_write(synthetic_bench, reference_run, tmp_path):
    """A first attempt dies before its first checkpoint; a fresh start dies while writing its second checkpoint
    (after the temporary file is complete, before it replaces the first). The checkpoint is never torn, and the
    resumed run equals the uninterrupted one, its logs holding nothing of the first attempt."""
    args, run = _resume_args(synthetic_bench, tmp_path), _run_dir(tmp_path)
    first = run_train(args, env_extra={KILL_AT: "2"})
    assert first.returncode == -signal.SIGKILL and not (run / "training_state.pt").exists()
    assert len(losses(run)) == 2
    died = run_train(args, env_extra={"VLROUTING_FAULT_KILL_IN_CHECKPOINT": "2"})
    assert died.returncode == -signal.SIGKILL
    assert [json.loads(x)["step"] for x in (run / "train_log.jsonl").read_text().splitlines()] == list(range(1, 11))
    assert _checkpoint(run) == (5, 0, 5)  # loads (not torn): the first checkpoint
    orphans = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert len(orphans) == 1 and orphans[0].startswith(".training_state.pt.")  # the complete, never renamed file
    resumed = run_train([*args, "--resume", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["status"] == "completed"
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]  # removed when the run resumed
    umask = os.umask(0)
    os.umask(umask)
    for name in ("adapter_model.safetensors", "training_state.pt", "results.json"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name  # not mkstemp's 0600
    _assert_same_run(run, reference_run)


def test_ddp_resume_is_bit_identical_with_dropout(synthetic_bench, tmp_path):
    """2 gloo processes: each rank continues its own RNG stream (its batches have their own shapes, so the ranks'
    streams drift apart; restoring rank 0's on both changed every later mask of rank 1)."""
    every = {"train.checkpoint_every": 3}  # 6 steps per epoch on each rank
    full = run_train(_resume_args(synthetic_bench, tmp_path / "a", **every), nproc=2)
    assert full.returncode == 0, full.stderr[-3000:]
    args = _resume_args(synthetic_bench, tmp_path / "b", **every)
    killed = run_train(args, nproc=2, env_extra={KILL_AT: "5"})
    assert killed.returncode != 0
    assert _checkpoint(_run_dir(tmp_path / "b")) == (3, 0, 3)
    resumed = run_train([*args, "--resume", "latest"], nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(losses(_run_dir(tmp_path / "a"))) == 12  # 6 steps per epoch on each of 2 ranks
    _assert_same_run(_run_dir(tmp_path / "b"), _run_dir(tmp_path / "a"))


# ----------------------------------------------------------------------------------------------- resume rules


def _snapshot(run: Path) -> dict:
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture
def unfinished_run(reference_run, tmp_path):
    """The reference run as if killed during its test evaluation: every checkpoint written, no results.json."""
    import shutil

    run = _run_dir(tmp_path)
    shutil.copytree(reference_run, run)
    (run / "results.json").unlink()
    return run


def _resume_in_process(args, capsys, *extra) -> tuple[int, str]:
    from vlrouting.train import main

    code = main([*args, *extra, "--resume", "latest"])
    return code, capsys.readouterr().err


def test_resume_refuses_a_changed_configuration(synthetic_bench, unfinished_run, tmp_path, capsys):
    args, run = _resume_args(synthetic_bench, tmp_path), unfinished_run
    before = _snapshot(run)
    code, err = _resume_in_process(args, capsys, "peft.routing=add", "train.lr=5e-4")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --resume latest: the configuration differs")
    assert "(peft.routing: mul → add; train.lr: 0.003 → 0.0005)" in err and "another output.run" in err
    code, err = _resume_in_process(args, capsys, "peft.method=adapter", "train.epochs=1", "data.num_workers=2")
    assert code == 2 and err.count("\n") == 1
    assert "(peft.method: lora → adapter; train.epochs: 2 → 1 (may only grow))" in err  # no KeyError
    assert _snapshot(run) == before  # nothing written, config.yaml included


def test_resume_of_a_finished_run_says_it_is_finished(synthetic_bench, reference_run, capsys):
    before = _snapshot(reference_run)
    code, err = _resume_in_process(_resume_args(synthetic_bench, reference_run.parents[1]), capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --resume latest: the run in {reference_run} is finished (results.json says "
                          "completed after 22 steps, 2 epochs)")
    assert _snapshot(reference_run) == before


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
