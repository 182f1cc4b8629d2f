#!/usr/bin/env python
"""Inference-time benchmark: every routing function against ``none``, per model family, task and PEFT method
(the paper's Table B3: "Are we sacrificing the efficiency?", Appendix B).

Run by hand (not a test)::

    .venv/bin/python scripts/bench/bench_inference.py                    # bart-base-shaped, 10 rounds
    .venv/bin/python scripts/bench/bench_inference.py --arch tiny --rounds 3     # a quick run
    .venv/bin/python scripts/bench/bench_inference.py --device cuda --batch 32 --out bench_inference.json

For every registered model family (:func:`vlrouting.models.registry.list_families`; a family that cannot be built
is skipped with a printed note) and every task whose objective it serves, the family's own ``predict`` — what
evaluation runs: generation with the task's decoding options, NLVR²'s first-step logits, ... — is timed on one
synthetic batch per task, for each PEFT method (``--methods``, default LoRA and Adapter, shared, the PEFT config's
default sizes) and each routing function (``--routings``). Per-sample time = call time / batch size.

- Models: ``build_model(..., pretrained=False)`` — the family's packaged architecture with random weights
  (``--arch base``, e.g. bart-base-shaped CLIP-BART) or its toy-sized variant (``--arch tiny``,
  :meth:`vlrouting.models.FamilyConfig.tiny`, its vocabulary sized to the tokenizer). Nothing is downloaded. One model per family × method: routing
  functions have no parameters, so a model built with routing r is this model with every wrapper's routing set to
  r, which the benchmark does between calls (same weights, same memory layout for every routing).
- Inputs: the synthetic benchmark's annotations (written to a temporary folder) through the task's own dataset and
  ``collate``, with random visual features of the family's data shapes (``FamilyConfig.data_spec``). Tokenizer:
  ``--tokenizer local`` (default) is a byte-level BPE trained on those texts (vlrouting.models.tiny), which only
  provides token ids and decoding; ``--tokenizer family`` loads the family's own (hub name or local folder).
- Timing: after ``--warmup`` untimed rounds, each round times one call of every (task, routing) of the model, the
  routing order rotating by one each round, so drifts in machine load hit every routing alike. CPU: wall clock
  (``time.perf_counter``); CUDA: ``torch.cuda.Event`` pairs around the call, as the paper measured.
- Report (Markdown on stdout; raw times in ``--out`` JSON): median ms per sample; the median over rounds of the
  per-round ratio to ``none`` (same task, method and round) with a 90 % bootstrap interval of that median (rounds
  resampled) and the ratios' min–max; the paper's Table B3 ratio where it has the task (ViT+RoBERTa ``vqa_cls``,
  ViT+GPT-2 ``coco_lm``). The paper's ratios lie in 0.975–1.100.

Random weights decode to full length (no early end-of-sequence), so every routing generates the same number of
tokens; the benchmark checks that the predictions' lengths agree across routings and flags any row where they do not
(the ratio then includes decoding-length differences).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROUTINGS = ("none", "mul", "add", "proj", "expand")
METHODS = ("lora", "adapter")
PAPER_RANGE = (0.975, 1.100)  # Table B3: min and max of routing / none over both benchmarks and methods


# ---------------------------------------------------------------------------------------------- inputs
class RandomFeatures:
    """A feature store of random (n_boxes, feat_dim) float32 blocks, fixed per image id (for ``build_dataset``)."""

    def __init__(self, spec, seed: int):
        self.shape, self.seed = (spec.n_boxes, spec.feat_dim), seed

    def __getitem__(self, image_id: str) -> np.ndarray:
        rng = np.random.default_rng([self.seed, zlib.crc32(str(image_id).encode())])
        return rng.standard_normal(self.shape, dtype=np.float32)


def synthetic_root(workdir: Path) -> Path:
    from vlrouting.data.synthetic import generate

    root = workdir / "datasets"
    generate(root, seed=0, scale=0.05)  # annotations (and small images, unused): every task's splits, real formats
    return root


def local_tokenizer(root: Path, workdir: Path):
    from vlrouting.models.tiny import corpus_from_datasets, train_tiny_tokenizer

    return train_tiny_tokenizer(workdir / "tokenizer", corpus_from_datasets(root))


def task_batch(task, root: Path, tokenizer, spec, batch: int, seed: int, device: torch.device) -> dict:
    """``batch`` examples of the task's test split (cycled when the split is smaller), collated by the task."""
    split = "test" if "test" in task.splits else next(iter(task.splits))
    ds = task.build_dataset(root, split, tokenizer, features=lambda _name: RandomFeatures(spec, seed), spec=spec)
    examples = ds.__getitems__([i % len(ds) for i in range(batch)])
    out = task.collate(examples)
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------- models
def family_tasks(family) -> list:
    from vlrouting.data.tasks import get_task, list_tasks

    return [get_task(name) for name in list_tasks() if get_task(name).objective in family.objectives]


def build(family_name: str, method: str, tasks: list, args, tokenizer, device: torch.device):
    """(config, model) of one family × method, routing ``none`` (switched per call by :func:`set_routing`)."""
    from vlrouting.config import build_config
    from vlrouting.models.registry import build_model, get_family

    model_cfg = get_family(family_name).config_cls()
    if args.arch == "tiny":
        model_cfg = model_cfg.tiny()
    peft = {"method": method, "shared": True, "routing": "none"}
    if args.lora_r is not None:
        peft["r"] = args.lora_r
    if args.reduction_factor is not None:
        peft["reduction_factor"] = args.reduction_factor
    cfg = build_config({"model": dataclasses.asdict(model_cfg), "peft": peft,
                        "data": {"tasks": [t.name for t in tasks]}})
    torch.manual_seed(args.seed)  # the same weights for every family × method run of the same seed
    # base: the packaged vocabulary (its output layer is part of the cost of every decoding step) unless the family's
    # own tokenizer is used; tiny: the vocabulary of the tokenizer at hand
    sized = args.tokenizer == "family" or args.arch == "tiny"
    model = build_model(cfg.model, cfg.peft, pretrained=False, tokenizer=tokenizer if sized else None, device=device)
    return cfg, model.eval()


def set_routing(model, routing: str) -> None:
    """Every PEFT wrapper routes every task with ``routing`` (routing functions have no parameters)."""
    from vlrouting.peft import peft_wrappers

    for wrapper in peft_wrappers(model):
        wrapper.routing_map = dict.fromkeys(wrapper.routing_map, routing)


# ---------------------------------------------------------------------------------------------- timing
class Timer:
    """Seconds of one call: CUDA events on a GPU, the wall clock on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> tuple[float, object]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000.0, out
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out


def time_model(model, tasks: list, batches: dict, tokenizer, args, timer: Timer, label: str) -> dict:
    """Interleaved rounds; returns {task: {routing: [seconds per call, ...]}} and prediction lengths."""
    routings = list(args.routings)
    times = {t.name: {r: [] for r in routings} for t in tasks}
    lengths = {t.name: {} for t in tasks}
    t_start = time.perf_counter()
    with torch.inference_mode():
        for k in range(args.warmup + args.rounds):
            for task in tasks:
                for j in range(len(routings)):
                    routing = routings[(k + j) % len(routings)]
                    set_routing(model, routing)
                    seconds, preds = timer(lambda: model.predict(task, batches[task.name], tokenizer))
                    if k >= args.warmup:
                        times[task.name][routing].append(seconds)
                    lengths[task.name].setdefault(routing, [len(str(p)) for p in preds])
            done = k + 1 - args.warmup
            if done > 0:
                print(f"  [{label}] round {done}/{args.rounds} ({time.perf_counter() - t_start:.0f} s, "
                      f"load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    return {"times": times, "lengths": lengths}


# ---------------------------------------------------------------------------------------------- statistics
def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def bootstrap_median_ci(xs: list[float], level: float = 0.90, n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median, resampling rounds."""
    rng = random.Random(seed)
    meds = [statistics.median(rng.choices(xs, k=len(xs))) for _ in range(n)]
    a = (1 - level) / 2
    return quantile(meds, a), quantile(meds, 1 - a)


def summarize(family: str, method: str, result: dict, batch: int) -> list[dict]:
    from vlrouting.paper_results.ablations import inference_ratio

    rows = []
    for task, by_routing in result["times"].items():
        base = by_routing["none"]
        base_len = result["lengths"][task].get("none")
        for routing, secs in by_routing.items():
            ratios = [a / b for a, b in zip(secs, base)]
            lo, hi = bootstrap_median_ci(ratios)
            rows.append({
                "family": family, "task": task, "method": method, "routing": routing,
                "ms_per_sample": 1000.0 * statistics.median(secs) / batch,
                "ratio": statistics.median(ratios), "ci90": [lo, hi], "min": min(ratios), "max": max(ratios),
                "paper_ratio": inference_ratio(task, method, routing),
                "same_length": result["lengths"][task].get(routing) == base_len,
                "seconds": secs,
            })
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| family | task | method | routing | ms / sample | ratio to none | 90 % CI | min–max | "
             "paper (B3) |", "|---|---|---|---|---:|---:|---|---|---:|"]
    for r in rows:
        paper = "" if r["paper_ratio"] is None else f"{r['paper_ratio']:.3f}"
        flag = "" if r["same_length"] else " †"
        lines.append(f"| {r['family']} | {r['task']} | {r['method']} | {r['routing']}{flag} | "
                     f"{r['ms_per_sample']:.3f} | {r['ratio']:.3f} | {r['ci90'][0]:.3f}–{r['ci90'][1]:.3f} | "
                     f"{r['min']:.3f}–{r['max']:.3f} | {paper} |")
    if any(not r["same_length"] for r in rows):
        lines.append("")
        lines.append("† the predictions' lengths differ from `none`'s: the ratio includes decoding-length differences")
    return "\n".join(lines)


def machine(device: torch.device) -> dict:
    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device),
            "commit": git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain") else "")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["base", "tiny"], default="base",
                    help="the families' packaged architecture (base) or their toy-sized one (tiny)")
    ap.add_argument("--families", nargs="+", help="registered families to run (default: all)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--routings", nargs="+", default=list(ROUTINGS), help="must include none (the reference)")
    ap.add_argument("--lora-r", type=int, help="LoRA rank (default: the PEFT config's, 128)")
    ap.add_argument("--reduction-factor", type=int, help="adapter d / r (default: the PEFT config's, 8)")
    ap.add_argument("--batch", type=int, default=8, help="examples per predict() call")
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    ap.add_argument("--tokenizer", choices=["local", "family"], default="local",
                    help="local: a byte-level BPE trained on the synthetic texts; family: the family's own")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write every time and summary as JSON here")
    args = ap.parse_args(argv)
    if "none" not in args.routings:
        ap.error("--routings must include none: every ratio is taken against it")
    args.routings = ["none"] + [r for r in args.routings if r != "none"]
    if args.rounds < 1 or args.batch < 1 or args.warmup < 0:
        ap.error("--rounds and --batch must be positive, --warmup non-negative")
    return args


def main(argv=None) -> int:
    import transformers

    from vlrouting.fileio import atomic_write_text
    from vlrouting.models.registry import get_family, list_families, load_tokenizer

    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    info = machine(device)
    timer = Timer(device)
    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        workdir = Path(tmp)
        root = synthetic_root(workdir)
        shared_tokenizer = local_tokenizer(root, workdir) if args.tokenizer == "local" else None
        for name in args.families or list_families():
            try:
                family = get_family(name)
                tasks = family_tasks(family)
                if not tasks:
                    raise RuntimeError(f"no registered task has one of its objectives ({', '.join(family.objectives)})")
                model_cfg = family.config_cls()
                tokenizer = shared_tokenizer or load_tokenizer(model_cfg)
                if args.arch == "tiny":
                    model_cfg.tiny()  # fails early for a family without a tiny architecture
                spec = model_cfg.data_spec()
                batches = {t.name: task_batch(t, root, tokenizer, spec, args.batch, args.seed, device) for t in tasks}
            except Exception as exc:  # a family that cannot be built is reported and skipped, never fatal
                note = f"skipped family '{name}': {exc.__class__.__name__}: {exc}"
                print(note, file=sys.stderr)
                skipped.append(note)
                continue
            for method in args.methods:
                label = f"{name}/{method}"
                try:
                    cfg, model = build(name, method, tasks, args, tokenizer, device)
                except Exception as exc:
                    note = f"skipped {label}: {exc.__class__.__name__}: {exc}"
                    print(note, file=sys.stderr)
                    skipped.append(note)
                    continue
                n_params = sum(p.numel() for p in model.parameters())
                print(f"{label}: {n_params:,} parameters, tasks {', '.join(t.name for t in tasks)}", file=sys.stderr)
                result = time_model(model, tasks, batches, tokenizer, args, timer, label)
                rows += summarize(name, method, result, args.batch)
                del model
    header = (f"Inference time per sample, routing vs none ({args.arch} architecture, random weights, batch "
              f"{args.batch}, {args.rounds} interleaved rounds after {args.warmup} warm-up, {args.tokenizer} "
              f"tokenizer)\n\nmachine: {info['cpu']} ({info['cores']} cores, torch threads "
              f"{info['torch_threads']}){', GPU ' + info['gpu'] if 'gpu' in info else ''}; device {info['device']}; "
              f"torch {info['torch']}; commit {info['commit']}\n")
    print(header)
    if rows:
        print(format_table(rows))
        routed = [r["ratio"] for r in rows if r["routing"] != "none"]
        print(f"\nmedian ratios of the routings: {min(routed):.3f}–{max(routed):.3f} "
              f"(paper, Table B3: {PAPER_RANGE[0]:.3f}–{PAPER_RANGE[1]:.3f})" if routed else "")
    for note in skipped:
        print(f"note: {note}")
    if args.out:
        atomic_write_text(args.out, json.dumps({"args": vars(args), "machine": info, "rows": rows,
                                              "skipped": skipped}, indent=2))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
