"""vlrouting.demo_report: the demo's closing block from its output files, and its copy in the README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlrouting import demo_report
from vlrouting.__main__ import main as cli_main
from vlrouting.errors import DataError

README = Path(__file__).resolve().parents[1] / "README.md"

TABLE = """| Configuration | VQA | GQA | NLVR² | COCO CIDEr | Avg | Seeds | Trainable % |
|---|---:|---:|---:|---:|---:|---|---:|
| **multitask_adapter_comb3** | 59.96 ± 0.85 | 41.11 ± 0.79 | 85.94 ± 0.74 | 190.09 ± 9.31 | 94.27 ± 2.92 | n=2 (42, 43) | 23.29 |
"""
BASELINES = {"vqa": {"test": {"majority": 23.36, "type_prior": 45.86}},
             "gqa": {"test": {"majority": 25.0, "type_prior": 41.39}},
             "nlvr": {"test": {"majority": 50.0, "type_prior": 56.77}},
             "caption": {"majority_caption": "a red circle.", "test": {"majority": 62.49}}}
MACHINE = {"cpu_model": "AMD EPYC", "cpu_id": "AuthenticAMD family 25 model 1 stepping 1", "arch": "x86_64",
           "logical_cores": 2, "usable_cores": 2, "torch_threads": 2, "torch_interop_threads": 2,
           "cpu_capability": "AVX2", "blas": "mkl", "mkl": "2024.2", "onednn": "3.12.0", "torch": "2.13.0",
           "gpu": None}
MACHINE_LINE = ("Machine: AMD EPYC (AuthenticAMD family 25 model 1 stepping 1, x86_64, 2 logical cores), torch "
                "2.13.0 on 2 threads, AVX2 kernels, BLAS mkl 2024.2, oneDNN 3.12.0, 1 training process")


def fake_demo(out: Path, machines=(MACHINE, MACHINE), times="1 synthetic benchmark\t3\n6 comb3 seed 42\t57\n"
              "total\t453\n") -> Path:
    out.mkdir(parents=True)
    (out / "results.md").write_text(TABLE)
    (out / "baselines.json").write_text(json.dumps(BASELINES))
    (out / "stage_times.tsv").write_text(times)
    for seed, machine in zip((42, 43), machines):
        run = out / "multitask_adapter_comb3" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"seed": seed, "world_size": 1, "machine": machine,
                                                      "git_commit": "1a2b3c4d5e6f" + "0" * 28}))
    warm = out / "work" / "snap" / "warmup" / "seed0"  # the warm-up run is not one of the table's runs
    warm.mkdir(parents=True)
    (warm / "results.json").write_text(json.dumps({"machine": dict(MACHINE, torch_threads=7)}))
    return out


def test_render_exact(tmp_path):
    out = fake_demo(tmp_path / "demo")
    assert demo_report.render(out) == f"""{MACHINE_LINE}

{TABLE}
Blind baselines on the synthetic test splits (x100): majority answer / best per-question-type prior
  vqa       23.36 /  45.86
  gqa       25.00 /  41.39
  nlvr      50.00 /  56.77
  caption   62.49 CIDEr of the majority caption "a red circle."

Stage times (wall clock; they vary with the load):
  1 synthetic benchmark                         3s
  6 comb3 seed 42                              57s
  total                                       453s
Table, CSV, plot, baselines: {out}/results.md {out}/results.csv {out}/results.png {out}/baselines.json
"""


def test_render_names_every_machine_and_missing_records(tmp_path):
    out = fake_demo(tmp_path / "demo", machines=(MACHINE, dict(MACHINE, torch_threads=1)))
    lines = demo_report.render(out).splitlines()
    assert lines[:2] == [MACHINE_LINE, MACHINE_LINE.replace("on 2 threads", "on 1 thread")]
    old = fake_demo(tmp_path / "old", machines=(None, None))
    assert demo_report.render(old).splitlines()[0] == (
        "Machine: not recorded (results.json written before this field), 1 training process")


@pytest.mark.parametrize("times, message", [
    ("1 synthetic benchmark\t3\n", "has no 'total' line"),
    ("1 synthetic benchmark 3\ntotal\t3\n", "line 1 is not 'stage<TAB>seconds'"),
])
def test_bad_stage_times(tmp_path, times, message):
    out = fake_demo(tmp_path / "demo", times=times)
    with pytest.raises(DataError, match=message):
        demo_report.render(out)


def test_missing_outputs_say_run_the_demo(tmp_path):
    with pytest.raises(DataError, match=r"results.md .*run the demo first"):
        demo_report.render(tmp_path)


def test_readme_rewrite_only_between_markers(tmp_path, capsys):
    out = fake_demo(tmp_path / "demo")
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nintro\n{demo_report.BEGIN}\nold block\n{demo_report.END}\n\nafter\n")
    assert cli_main(["demo-report", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text == (f"# title\n\nintro\n{demo_report.BEGIN}\nPrinted by `make demo` at commit `1a2b3c4` (written "
                    f"into this README by `make demo-readme`, never by hand):\n\n```\n{demo_report.render(out)}```\n"
                    f"{demo_report.END}\n\nafter\n")
    assert cli_main(["demo-report", str(out), "--readme", str(readme)]) == 0
    assert readme.read_text() == text  # idempotent
    # Without --readme the block is printed, exactly as the demo prints it.
    capsys.readouterr()
    assert cli_main(["demo-report", str(out)]) == 0
    assert capsys.readouterr().out == demo_report.render(out)


def test_readme_markers_must_be_there_once(tmp_path, capsys):
    out = fake_demo(tmp_path / "demo")
    readme = tmp_path / "README.md"
    for text in ("no markers\n", f"{demo_report.END}\n{demo_report.BEGIN}\n",
                 f"{demo_report.BEGIN}\n{demo_report.BEGIN}\n{demo_report.END}\n"):
        readme.write_text(text)
        assert cli_main(["demo-report", str(out), "--readme", str(readme)]) == 2
        assert "must contain '<!-- demo-output:begin -->' once" in capsys.readouterr().err
        assert readme.read_text() == text  # nothing half-written
    # The project's README carries the markers the command needs, around a block in the rendered layout.
    text = README.read_text()
    block = text[text.index(demo_report.BEGIN):text.index(demo_report.END)]
    assert text.count(demo_report.BEGIN) == 1 and text.count(demo_report.END) == 1
    assert "\n```\nMachine: " in block and "\nStage times (wall clock;" in block
