"""The command-line path users touch first (issue 7): a paper-row script under torchrun (gloo, 2 processes) over
two seeds, then ``aggregate``; and the scripts' fast, one-sentence failure without data."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env(**extra):
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PYTHON": sys.executable, "PATH": f"{bindir}:{os.environ['PATH']}",
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def test_comb3_script_two_processes_two_seeds_then_aggregate(synthetic_bench, tmp_path):
    snap = tmp_path / "snap"
    overrides = [
        f"data.root={synthetic_bench['root']}", f"model.backbone={synthetic_bench['tiny']}", f"output.snap_dir={snap}",
        "model.feat_dim=512", "data.num_workers=0", "data.limit_train=24", "data.limit_eval=8", "train.epochs=1",
        "train.batch_size=8", "train.eval_every=0", "train.num_beams=2", "train.log_every=0",
    ]
    for seed in ("42", "43"):
        proc = subprocess.run(["bash", "scripts/multitask_adapter_comb3.sh", "2", *overrides], cwd=REPO,
                              env=_env(SEED=seed), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        results = snap / "multitask_adapter_comb3" / f"seed{seed}" / "results.json"
        assert results.is_file()
    agg = subprocess.run([sys.executable, "-m", "vlrouting", "aggregate", str(snap / "multitask_adapter_comb3")],
                         cwd=REPO, env=_env(), capture_output=True, text=True)
    assert agg.returncode == 0, agg.stderr
    out_dir = snap / "multitask_adapter_comb3"
    md = (out_dir / "results.md").read_text()
    assert "multitask_adapter_comb3" in md
    assert "±" in md  # two seeds: a std column
    assert "66.34" in md and "117.73" in md  # the paper's Table 8 comb3 row beside ours
    with open(out_dir / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    ours = [r for r in rows if r.get("group", r.get("config", "")).startswith("multitask_adapter_comb3")
            or "multitask_adapter_comb3" in ",".join(r.values())]
    assert ours, rows
    assert (out_dir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "42" in md and "43" in md
    # `vlrouting eval` reads the trainer's own prediction files and gives the trainer's test numbers
    from vlrouting.evaluation import cli

    run = out_dir / "seed42"
    summary = json.loads((run / "results.json").read_text())["summary"]
    root = synthetic_bench["root"]
    references = {"vqa": root / "vqa/karpathy_test.json", "gqa": root / "GQA/testdev.json",
                  "nlvr": root / "nlvr/test.json", "caption": root / "COCO/dataset_coco.json"}
    headline = {"vqa": "overall", "gqa": "accuracy", "nlvr": "accuracy", "caption": "CIDEr"}
    for task, refs in references.items():
        metrics = cli.run(cli.build_parser().parse_args([
            "--task", task, "--predictions", str(run / "predictions" / f"test_{task}_epoch1.json"),
            "--references", str(refs), "--only-predicted"]))
        assert metrics[headline[task]] == pytest.approx(summary[task], abs=1e-9), task


def test_script_without_data_fails_fast_with_one_sentence(tmp_path):
    proc = subprocess.run(["bash", "scripts/multitask_adapter_comb3.sh", "1", f"data.root={tmp_path / 'datasets'}",
                           f"output.snap_dir={tmp_path / 'snap'}"], cwd=REPO, env=_env(), capture_output=True,
                          text=True)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(tmp_path / "datasets") in lines[0], proc.stderr
    assert "extract_features.sh" in lines[0] or "synthetic" in lines[0]
    assert not (tmp_path / "snap").exists()


def test_script_rejects_a_bad_process_count():
    proc = subprocess.run(["bash", "scripts/multitask_adapter_comb3.sh", "zero"], cwd=REPO, env=_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "NGPU" in proc.stderr


def test_every_script_names_a_packaged_config():
    from vlrouting.config import packaged_configs

    names = set(packaged_configs())
    scripts = sorted(p for p in (REPO / "scripts").glob("*.sh")
                     if p.stem.startswith(("multitask_", "vladapter_", "vit_roberta_", "vit_gpt2_", "petal_")))
    # CLIP-BART rows and baselines, + VL-Adapter's Compacter, Hyperformer, half-shared and prompt rows, + ViT+RoBERTa
    # Tables 1 (20) and B4 (5), + PETAL's Table 4 map (full, v1-v4, random instruction), + ViT+GPT-2 COCO (Table 4:
    # {LoRA, Adapter} × r ∈ {64, 128} × 5 routings; Table B5: GPT-2 medium, Adapter r = 64 × 5 routings)
    assert len(scripts) == 29 + 6 + 25 + 6 + 4 * 5 + 5
    assert (REPO / "scripts" / "multitask_adapter_comb3.sh").is_file()
    assert (REPO / "scripts" / "vit_gpt2_medium_coco_adapter_r64_expand.sh").is_file()
    for script in scripts:
        assert script.stem in names, script
        assert f"_launch.sh\" {script.stem} " in script.read_text()
