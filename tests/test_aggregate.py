"""``python -m vlrouting aggregate`` and the paper's numbers (vlrouting.paper_results; Tables 7, 8, C7, A1)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from vlrouting import aggregate
from vlrouting.__main__ import main as cli_main
from vlrouting.errors import ConfigError, DataError
from vlrouting.paper_results import COLUMNS, PAPER_ROWS, TASKS, clip_bart, get_paper_row, vladapter

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The four-task CLIP-BART rows (Tables 7, 8, C7 and VL-Adapter's Table 1); other settings have other columns.
VL4_ROWS = {**clip_bart.ROWS, **vladapter.ROWS}
CONFIG_DIR = Path(__file__).resolve().parents[1] / "vlrouting" / "configs"


# ------------------------------------------------------------------------------------------------ paper data
def test_paper_avg_is_mean_of_four_tasks():
    # Avg. is printed as the mean of the four columns; a transcription typo shows up here. Tables 7/8 round the
    # mean of the printed numbers; C7 means are over unrounded seeds, so allow one more rounding step there.
    for key, row in VL4_ROWS.items():
        mean = sum(row.values[t] for t in TASKS) / 4
        tol = (1.0 if row.table == "Table C7" else 0.5) * 10 ** -row.decimals + 1e-9
        assert abs(row.values["avg"] - mean) <= tol, (key, row.values["avg"], mean)


def test_paper_rows_spot_checks():
    assert get_paper_row("table7/single_adapter/proj").values == {
        "vqa": 65.77, "gqa": 54.14, "nlvr": 74.29, "caption": 117.99, "avg": 78.05}
    assert get_paper_row("table7/single_lora/expand").values == {
        "vqa": 64.84, "gqa": 52.72, "nlvr": 73.46, "caption": 119.53, "avg": 77.64}
    comb3 = get_paper_row("table8/multiple_adapters/comb3")
    assert comb3.values == {"vqa": 66.34, "gqa": 53.77, "nlvr": 70.02, "caption": 117.73, "avg": 76.97}
    assert comb3.routing_per_task == {"vqa": "mul", "gqa": "mul", "nlvr": "mul", "caption": "expand"}
    assert comb3.lr == 1e-3 and not comb3.baseline
    base = get_paper_row("table8/multiple_adapters/none")
    assert base.baseline and base.decimals == 1 and base.format("vqa") == "65.4" and "VL-Adapter" in base.source
    c7 = get_paper_row("tablec7/single_adapter/proj")
    assert c7.format("avg") == "77.87 ± 0.18" and c7.n_seeds == 3
    hyper = get_paper_row("vladapter_table1/hyperformer/none")
    assert hyper.values == {"vqa": 65.1, "gqa": 53.4, "nlvr": 72.3, "caption": 114.6, "avg": 76.4}
    assert hyper.baseline and hyper.trainable_percent == 5.79 and "VL-Adapter" in hyper.source
    with pytest.raises(ConfigError, match="unknown paper_row 'table9/x'"):
        get_paper_row("table9/x")


def test_paper_rows_cross_consistent():
    # Table 7's "None [†]" rows are the means of Table C7's "None†" rows; footnote 11 repeats the Avg stds.
    for block in ("single_lora", "single_adapter"):
        assert PAPER_ROWS[f"table7/{block}/none"].values == PAPER_ROWS[f"tablec7/{block}/none"].values
    assert PAPER_ROWS["tablec7/single_lora/none"].std["avg"] == 0.32
    assert PAPER_ROWS["tablec7/single_adapter/none"].std["avg"] == 0.25
    assert PAPER_ROWS["tablec7/single_lora/proj"].std["avg"] == 0.11
    assert PAPER_ROWS["tablec7/single_adapter/proj"].std["avg"] == 0.18
    assert len(VL4_ROWS) == 12 + 9 + 4 + 4  # Tables 7, 8, C7; VL-Adapter's Table 1 rows of issue 16
    assert set(VL4_ROWS) <= set(PAPER_ROWS)
    for row in VL4_ROWS.values():
        assert set(row.values) == set(COLUMNS)
        assert row.baseline == (row.routing == "none")



def test_vit_gpt2_paper_rows():
    """Tables 4 and B5 (ViT+GPT-2 COCO captions): Table 4's columns, Avg = the mean of the five printed metrics, the
    printed delta slips against the derived ones, B5's GPT-2 base half = Table 4's Adapter r = 64 block."""
    from vlrouting.data.tasks import get_task
    from vlrouting.paper_results.vit_gpt2 import COLUMNS as CAPTION_COLUMNS
    from vlrouting.paper_results.vit_gpt2 import PRINTED_DELTA_SLIPS, ROWS

    assert len(ROWS) == 6 * 5 and all(PAPER_ROWS[k] is row for k, row in ROWS.items())
    assert CAPTION_COLUMNS == tuple(c.key for c in get_task("coco_lm").columns())
    for key, row in ROWS.items():
        assert tuple(row.values) == CAPTION_COLUMNS and not row.baseline and row.lr == 3e-5
        assert row.values["coco_lm.Avg"] == pytest.approx(sum(row.values[c] for c in CAPTION_COLUMNS[:5]) / 5,
                                                          abs=0.005)
    lora = get_paper_row("table4/lora_r64/expand")
    assert lora.values["coco_lm"] == 80.5 and lora.format("coco_lm") == "80.5" and lora.format("coco_lm.Avg") == "37.28"
    assert lora.label == "x_t x'_v" and "x_t x''_v" in lora.note  # the printed label of the x''_v row
    for key, slips in PRINTED_DELTA_SLIPS.items():
        none = ROWS[key.rsplit("/", 1)[0] + "/none"]
        for col, (printed, derived) in slips.items():
            assert ROWS[key].values[col] - none.values[col] == pytest.approx(derived)
            assert abs(printed - derived) > 0.09  # every other printed delta equals its derived value
    for routing in ("none", "mul", "add", "proj", "expand"):
        assert ROWS[f"tableb5/gpt2_base/{routing}"].values == ROWS[f"table4/adapter_r64/{routing}"].values
    assert ROWS["tableb5/gpt2_medium/expand"].values["coco_lm"] == 90.0

def test_packaged_configs_name_known_paper_rows_with_table_a1_lr():
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        key = cfg.get("paper_row")
        if not key:
            continue
        assert key in PAPER_ROWS, f"{path.name}: paper_row {key!r} is unknown"
        lr = (cfg.get("train") or {}).get("lr")
        if PAPER_ROWS[key].lr is not None and lr is not None:
            assert float(lr) == PAPER_ROWS[key].lr, f"{path.name}: lr {lr} != Table A1 {PAPER_ROWS[key].lr}"


# ------------------------------------------------------------------------------------------------- fake runs
def write_run(snap: Path, experiment: str, run: str, *, seed=42, vqa=60.0, gqa=50.0, nlvr=70.0, caption=110.0,
              paper_row="table8/multiple_adapters/comb3", status="completed", tasks=TASKS, **extra) -> Path:
    values = {"vqa": vqa, "gqa": gqa, "nlvr": nlvr, "caption": caption}
    summary = {t: values[t] for t in tasks}
    if set(tasks) == set(TASKS):
        summary["avg"] = sum(summary.values()) / 4
    results = {"experiment": experiment, "run": run, "config_name": experiment, "paper_row": paper_row,
               "seed": seed, "status": status, "summary": summary,
               "test": {t: m for t, m in (("vqa", {"overall": vqa}), ("gqa", {"accuracy": gqa}),
                                          ("nlvr", {"accuracy": nlvr}), ("caption", {"CIDEr": caption})) if t in tasks},
               "params": {"trainable": 6081600, "total": 145606464, "percent": 4.18}, **extra}
    d = snap / experiment / run
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps(results))
    return d


@pytest.fixture
def snap(tmp_path: Path) -> Path:
    s = tmp_path / "snap"
    for seed, vqa, gqa in ((42, 60.0, 50.0), (43, 61.0, 52.0), (9595, 62.0, 54.0)):
        write_run(s, "multitask_adapter_comb3", f"seed{seed}", seed=seed, vqa=vqa, gqa=gqa)
    write_run(s, "multitask_adapter_single_proj", "seed42", seed=42, vqa=65.5, gqa=53.25, nlvr=74.0,
              caption=118.0, paper_row="table7/single_adapter/proj")
    write_run(s, "vqa_only", "seed7", seed=7, vqa=63.0, tasks=("vqa",), paper_row=None)
    failed = s / "multitask_adapter_comb3" / "seed44"
    write_run(s, "multitask_adapter_comb3", "seed44", seed=44, status="failed",
              error="Traceback ...\nRuntimeError: CUDA out of memory")
    unfinished = s / "multitask_adapter_comb3" / "seed45"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("name: multitask_adapter_comb3\n")
    (unfinished / "metrics.jsonl").write_text("{}\n")
    (unfinished / "tensorboard").mkdir()
    assert failed.exists()
    return s


def test_collect_and_aggregate(snap: Path):
    runs, problems = aggregate.collect_runs([snap])
    assert len(runs) == 5
    reasons = {p.path.name: p.reason for p in problems}
    assert reasons == {"seed44": "status=failed: RuntimeError: CUDA out of memory",
                       "seed45": "no results.json (unfinished or crashed)"}
    rows = {r["group"]: r for r in aggregate.aggregate_runs(runs)}
    comb3 = rows["multitask_adapter_comb3"]
    assert comb3["n"] == 3 and comb3["seeds"] == [42, 43, 9595]
    assert comb3["vqa"] == {"mean": pytest.approx(61.0), "std": pytest.approx(1.0), "n": 3}
    assert comb3["gqa"]["std"] == pytest.approx(2.0)
    assert comb3["nlvr"]["std"] == pytest.approx(0.0)
    assert comb3["avg"]["mean"] == pytest.approx((61 + 52 + 70 + 110) / 4)
    assert comb3["paper"].key == "table8/multiple_adapters/comb3"
    single = rows["multitask_adapter_single_proj"]
    assert single["n"] == 1 and single["vqa"]["std"] is None
    vqa_only = rows["vqa_only"]
    assert vqa_only["vqa"]["n"] == 1 and vqa_only["gqa"]["n"] == 0 and vqa_only["avg"]["n"] == 0
    assert vqa_only["paper"] is None


def test_cli_outputs(snap: Path, tmp_path: Path, capsys):
    out = tmp_path / "report"
    assert aggregate.main([str(snap), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    md = (out / "results.md").read_text()
    assert stdout == md
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Configuration"))
    assert header == "| Configuration | VQA | GQA | NLVR² | COCO CIDEr | Avg | Seeds | Trainable % |"
    comb3 = next(line for line in lines if "**multitask_adapter_comb3**" in line)
    assert "| 61.00 ± 1.00 | 52.00 ± 2.00 | 70.00 ± 0.00 | 110.00 ± 0.00 | 73.25 ± 0.75 |" in comb3
    assert "n=3 (42, 43, 9595)" in comb3 and comb3.endswith("| 4.18 |")
    paper = lines[lines.index(comb3) + 1]
    assert paper.startswith("| ↳ paper `table8/multiple_adapters/comb3`")
    assert "| 66.34 | 53.77 | 70.02 | 117.73 | 76.97 | n=1 |" in paper
    single = next(line for line in lines if "**multitask_adapter_single_proj**" in line)
    assert "| 65.50 | 53.25 | 74.00 | 118.00 | 77.69 | n=1 (42) |" in single and "±" not in single
    assert "| 65.77 | 54.14 | 74.29 | 117.99 | 78.05 |" in lines[lines.index(single) + 1]
    vqa_only = next(line for line in lines if "**vqa_only**" in line)
    assert "| 63.00 |  |  |  |  | n=1 (7) |" in vqa_only
    assert "↳" not in lines[lines.index(vqa_only) + 1]
    assert f"- {snap}/multitask_adapter_comb3/seed44: status=failed: RuntimeError: CUDA out of memory" in md
    assert f"- {snap}/multitask_adapter_comb3/seed45: no results.json (unfinished or crashed)" in md

    table = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [r["configuration"] for r in table] == ["multitask_adapter_comb3", "multitask_adapter_single_proj",
                                                   "vqa_only"]
    c = table[0]
    assert (c["vqa_mean"], c["vqa_std"], c["vqa_n"], c["n_seeds"], c["seeds"]) == ("61", "1", "3", "3", "42;43;9595")
    assert (c["paper_row"], c["paper_vqa"], c["paper_caption"], c["paper_avg"]) == (
        "table8/multiple_adapters/comb3", "66.34", "117.73", "76.97")
    assert table[1]["vqa_std"] == "" and table[1]["n_seeds"] == "1"
    assert table[2]["gqa_mean"] == "" and table[2]["avg_mean"] == ""
    header_row = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert [h for h in header_row if h.endswith("_mean")] == ["vqa_mean", "gqa_mean", "nlvr_mean", "caption_mean",
                                                              "avg_mean"]
    png = (out / "results.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_default_out_and_no_plot(snap: Path, capsys):
    exp = snap / "multitask_adapter_comb3"
    assert cli_main(["aggregate", str(exp), "--no-plot"]) == 0
    assert (exp / "results.md").exists() and (exp / "results.csv").exists()
    assert not (exp / "results.png").exists()
    # re-running over the folder that now holds results.* finds the same runs and no new problems
    runs, problems = aggregate.collect_runs([snap])
    assert len(runs) == 5 and len(problems) == 2
    assert aggregate.main([str(exp), "--no-plot", "--strict"]) == 1


def test_empty_and_missing_dirs_exit_2(tmp_path: Path, capsys):
    empty = tmp_path / "snap" / "nothing_here"
    empty.mkdir(parents=True)
    assert cli_main(["aggregate", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no runs under") and str(empty) in err[0]
    assert not list(empty.iterdir())

    assert cli_main(["aggregate", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and "missing" in err[0]

    with pytest.raises(DataError):
        aggregate.collect_runs([tmp_path / "missing"])


def test_only_failed_runs_listed_then_exit_2(tmp_path: Path, capsys):
    snap = tmp_path / "snap"
    write_run(snap, "exp", "seed42", status="failed", error="boom")
    (snap / "exp" / "seed43").mkdir()
    assert cli_main(["aggregate", str(snap)]) == 2
    err = capsys.readouterr().err
    assert "seed42: status=failed: boom" in err
    assert "seed43: empty directory, no results.json (unfinished or crashed)" in err
    assert err.strip().splitlines()[-1].startswith("error: no completed runs under")


def test_malformed_results_and_group_by(tmp_path: Path):
    snap = tmp_path / "snap"
    write_run(snap, "a", "seed1", seed=1, vqa=60.0)
    write_run(snap, "b", "seed2", seed=2, vqa=62.0)
    bad = snap / "a" / "seed3"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    runs, problems = aggregate.collect_runs([snap, snap / "a"])  # overlapping paths: each run once
    assert len(runs) == 2 and len(problems) == 1 and "unreadable results.json" in problems[0].reason
    rows = aggregate.aggregate_runs(runs, group_by="paper_row")
    assert len(rows) == 1 and rows[0]["vqa"]["mean"] == pytest.approx(61.0) and rows[0]["n"] == 2
    with pytest.raises(ConfigError):
        aggregate.aggregate_runs(runs, group_by="colour")


def test_headline_numbers_fall_back_to_test_metrics(tmp_path: Path):
    d = write_run(tmp_path / "snap", "exp", "seed1", vqa=64.0, caption=120.0)
    data = json.loads((d / "results.json").read_text())
    del data["summary"]
    (d / "results.json").write_text(json.dumps(data))
    (run,), problems = aggregate.collect_runs([tmp_path / "snap"])
    assert not problems
    assert run.values == {"vqa": 64.0, "gqa": 50.0, "nlvr": 70.0, "caption": 120.0, "avg": 76.0}


def test_caption_avg_without_spice_is_named_beside_table4(tmp_path: Path):
    """A coco_lm run scored without SPICE: Table 4's columns, the paper row beneath, and a note that its Avg is the
    mean of four metrics (the paper's Avg has five)."""
    four = {"BLEU-4": 20.0, "METEOR": 20.0, "ROUGE-L": 40.0, "CIDEr": 80.0}
    metrics = {**four, "SPICE": None, "Avg": 40.0, "Avg_metrics": list(four), "spice_unavailable": "no jars", "n": 5}
    run = tmp_path / "snap" / "vit_gpt2_coco_lora_r128_proj" / "seed9898"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "experiment": "vit_gpt2_coco_lora_r128_proj", "config_name": "vit_gpt2_coco_lora_r128_proj", "seed": 9898,
        "paper_row": "table4/lora_r128/proj", "status": "completed", "summary": {"coco_lm": 80.0},
        "test": {"coco_lm": metrics}, "params": {"trainable": 4746240, "total": 129158400, "percent": 3.67}}))
    runs, problems = aggregate.collect_runs([tmp_path / "snap"])
    assert not problems
    (row,) = aggregate.aggregate_runs(runs)
    assert [c.key for c in row["columns"]] == ["coco_lm.BLEU-4", "coco_lm.METEOR", "coco_lm.ROUGE-L", "coco_lm",
                                               "coco_lm.SPICE", "coco_lm.Avg"]
    assert row["coco_lm"]["mean"] == 80.0 and row["coco_lm.Avg"]["mean"] == 40.0 and row["coco_lm.SPICE"]["n"] == 0
    assert row["notes"] == ["Avg is the mean of BLEU-4, METEOR, ROUGE-L, CIDEr only (SPICE unavailable)"]
    md = aggregate.format_markdown([row], problems)
    assert "| ↳ paper `table4/lora_r128/proj` (Table 4, x_t(x'_v)ᵀ x_v) | 24.9 | 22.7 | 45.4 | 83.8 | 16.9 | 38.74 |" in md
    assert "Avg is the mean of BLEU-4, METEOR, ROUGE-L, CIDEr only (SPICE unavailable)" in md
