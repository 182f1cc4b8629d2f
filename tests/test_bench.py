"""Smoke test of the throughput benchmark (scripts/bench/bench_throughput.py): a reduced run on the CPU with the
tiny architecture prints every column of every table; the numbers themselves are measured by hand."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(text: str, header: tuple[str, ...]) -> list[list[str]]:
    """The body rows of the Markdown table whose header is ``header``."""
    lines = text.splitlines()
    start = lines.index("| " + " | ".join(header) + " |")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.mark.usefixtures("single_thread")
def test_bench_throughput_reduced_run_prints_every_column(tmp_path, capsys):
    bench = _load("bench_throughput")
    out = tmp_path / "bench.json"
    assert bench.main(["--arch", "tiny", "--device", "cpu", "--workers", "0", "1", "--steps", "1", "--warmup", "1",
                       "--batch-size", "4", "--batches-per-task", "2", "--feat-dim", "32", "--eval-batches", "1",
                       "--out", str(out)]) == 0
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["batch_sizes"] == {"vqa": 4, "gqa": 6, "nlvr": 1, "caption": 3}  # the paper's ratios of 4
    # 2 batches per task: 8 + 12 + 2 questions/statements, 2 images × 5 captions
    assert [r["samples"] for r in res["loader"]] == [32, 32]
    loader = _rows(text, bench.COLUMNS_LOADER)
    assert [r[0] for r in loader] == ["0", "1"] and loader[1][1] == "2 of 4" and loader[1][4] == "≥ 0.9"
    assert all(re.fullmatch(r"[\d,]+", r[2]) for r in loader) and re.fullmatch(r"\d+\.\d\d", loader[1][3])
    step = _rows(text, bench.COLUMNS_STEP)
    assert len(step) == 3 and step[0][6] == "n/a"  # no MFU on a CPU
    assert re.fullmatch(r"[\d.]+", step[0][1]) and step[0][4].endswith("GB (RSS)") and float(step[0][5]) > 0
    for row in step[1:]:
        assert re.fullmatch(r"[\d.]+", row[2]) and re.fullmatch(r"\d+\.\d %", row[3])
    flops = _rows(text, bench.COLUMNS_FLOPS)
    assert [r[0] for r in flops] == ["vqa", "gqa", "nlvr", "caption"]
    for row in flops:  # the counter and the formula agree up to padding and the small ops the formula leaves out
        assert 0.9 <= float(row[6]) <= 1.5, row
    evals = _rows(text, bench.COLUMNS_EVAL)
    assert [(r[0], r[1]) for r in evals] == [("vqa", "greedy"), ("gqa", "greedy"), ("nlvr", "true_false"),
                                             ("caption", "beam 5")]
    assert all(float(r[3].replace(",", "")) > 0 for r in evals)


def test_peak_table():
    import torch

    bench = _load("bench_throughput")
    assert bench.peak_tflops(torch.device("cpu"), "bf16", None) == (None, "n/a on CPU")
    assert bench.peak_tflops(torch.device("cpu"), "bf16", 100.0) == (100.0, "--peak-tflops")
    names = {"NVIDIA H200": 989.0, "NVIDIA GH200 480GB": 989.0, "NVIDIA H100 80GB HBM3": 989.0,
             "NVIDIA H100 PCIe": 756.0, "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA L4": 121.0}
    for name, peak in names.items():
        assert next(p["bf16"] for pattern, p in bench.PEAK_TFLOPS if pattern in name) == peak, name
