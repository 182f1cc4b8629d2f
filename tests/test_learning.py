"""Training must actually learn (issue 6): single Adapter + comb3 and single LoRA + proj on the synthetic benchmark.

The recipe is the demo's (scripts/demo.sh): a random tiny BART (d 128) is first fully fine-tuned on a disjoint
synthetic set (seed 1) — the "pretraining" a real run gets from facebook/bart-base — with the task prompts the
``single_*`` configs use (a warm-up without them left NLVR² at chance after the prompts appeared), then saved,
exported and reloaded through ``from_pretrained``; the PEFT runs start from it with the packaged paper configs and train on the
seed-0 benchmark. Every run is a real ``python -m vlrouting.train`` subprocess. Asserted per task on the validation
split: the training loss falls (epoch means), and the score beats the blind answer prior of the benchmark card (majority answer;
for captions the CIDEr of the majority caption) by a stated margin.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from test_train import run_train

WARMUP_EPOCHS = 5  # the demo's recipe (scripts/demo.sh), data included: the test checks what `make demo` shows
PEFT_EPOCHS = 3
MARGIN = {"vqa": 10.0, "gqa": 10.0, "nlvr": 5.0, "caption": 20.0}  # points above the blind baseline


@pytest.fixture(scope="module")
def warmed(tmp_path_factory):
    """Benchmark (seed 0) + disjoint warm-up set (seed 1), tiny features, warmed-up tiny backbone."""
    from feature_extraction.extract import extract_dataset
    from vlrouting.data.synthetic import generate
    from vlrouting.models.export import main as export_main
    from vlrouting.models.tiny import main as tiny_main

    base = tmp_path_factory.mktemp("learning")
    root, warm = base / "datasets", base / "warmup"
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        card = generate(root, seed=0)  # the demo's benchmark (1,016 images; NLVR² val: 24 image pairs, 192 examples)
        generate(warm, seed=1, scale=2, nlvr_per_set=24)  # the demo's warm-up set (scripts/demo.sh)
        for r in (root, warm):
            extract_dataset(r, "synthetic", model="RN-tiny-w16", recalibrate_images=str(root / "COCO/images/train2014"),
                            workers=0, progress=False, verbose=False)
        tiny_main(["--out", str(base / "tiny"), "--corpus-root", str(root), "--d-model", "128"])
    finally:
        torch.set_num_threads(before)
    snap = base / "snap"
    proc = run_train(["--config", "vladapter_full_finetuning", f"data.root={warm}", f"model.backbone={base / 'tiny'}",
                      "model.feat_dim=512", "model.dropout=0", f"output.snap_dir={snap}", "output.experiment=warmup",
                      "data.use_task_prompts=true",  # the single_* runs below read "vqa: ..." prompts too
                      "data.num_workers=0", "train.batch_size=32", "train.lr=5e-4", f"train.epochs={WARMUP_EPOCHS}",
                      "train.eval_every=0", "train.test_after=false", "train.log_every=0", "train.seed=0"],
                     env_extra={"OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert export_main(["--run", str(snap / "warmup" / "seed0"), "--out", str(base / "backbone")]) == 0
    from vlrouting.baselines import blind_baselines

    return {"root": root, "backbone": base / "backbone", "card": card, "base": base,
            "baselines": {t: b["val"]["majority"] for t, b in blind_baselines(root).items()}}


@pytest.mark.parametrize("config, overrides", [
    ("multitask_adapter_single_none", ["peft.routing=comb3"]),
    ("multitask_lora_single_proj", []),
], ids=["single_adapter_comb3", "single_lora_proj"])
def test_peft_training_learns_every_task(warmed, config, overrides, tmp_path):
    bb = warmed["backbone"]
    proc = run_train(["--config", config, *overrides, f"data.root={warmed['root']}", f"model.backbone={bb}",
                      f"model.visual_init={bb}", "model.feat_dim=512", f"output.snap_dir={tmp_path}",
                      "data.num_workers=0", "train.batch_size=32", "train.lr=1e-3", f"train.epochs={PEFT_EPOCHS}",
                      f"train.eval_every={PEFT_EPOCHS}", "train.test_after=false", "train.log_every=0",
                      "train.num_beams=3", "train.seed=0"], env_extra={"OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / config / "seed0"
    # the loss falls on every task: mean of the last epoch below that of the first (the warmed-up backbone starts
    # low, so the drop is a few per cent: measured 2-9 %)
    by_epoch: dict[tuple[str, int], list[float]] = {}
    for line in (run / "train_log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        by_epoch.setdefault((rec["task"], rec["epoch"]), []).append(rec["loss"])
    assert {t for t, _ in by_epoch} == {"vqa", "gqa", "nlvr", "caption"}
    epochs = sorted({e for _, e in by_epoch})
    assert len(epochs) == PEFT_EPOCHS
    for task in ("vqa", "gqa", "nlvr", "caption"):
        first, last = (statistics.mean(by_epoch[(task, e)]) for e in (epochs[0], epochs[-1]))
        assert last < 0.99 * first, f"{task}: mean loss {first:.4f} (first epoch) -> {last:.4f} (last epoch)"
    # validation scores beat the blind answer prior
    val = {r["task"]: r["headline"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
           if r.get("split") == "val"}
    baseline = warmed["baselines"]  # majority answer; for captions the majority caption's CIDEr
    report = ", ".join(f"{t} {val[t]:.1f} vs {baseline[t]:.1f}" for t in baseline)
    for task, floor in baseline.items():
        assert val[task] > floor + MARGIN[task], f"{task} did not beat its blind baseline by {MARGIN[task]}: {report}"
