#!/usr/bin/env python
"""Throughput of four-task training: loader samples/s per worker count, step samples/s, data wait, memory, MFU.

Run by hand (not a test)::

    python scripts/bench/bench_throughput.py --arch tiny --device cpu --workers 0 1 --steps 3          # reduced
    python scripts/bench/bench_throughput.py --arch bart-base --device cpu --batch-size 4 --workers 0 1 2
    python scripts/bench/bench_throughput.py --arch bart-base --device cuda --workers 1 2 4 8         # full size

Everything is the training code itself; nothing is downloaded:

* **data** — ``bench_data.py``: the ``train`` annotation files of VQA, GQA, NLVR² and COCO captions (VL-Adapter's
  formats) sized for ``--batches-per-task`` batches of each task, and random float16 (36, ``--feat-dim``) features
  for their images in our ``--layout`` (``contiguous`` or ``per-image``), written with the extractor's writer;
* **model** — ``build_model(cfg.model, cfg.peft, pretrained=False)`` of ``--config`` (default
  ``multitask_adapter_single_mul``) on the packaged bart-base architecture (``--arch bart-base``: 6+6 layers,
  d = 768, 50,465-token vocabulary) or a tiny one (``--arch tiny``: d = 64, 2+2 layers). The tokenizer is a
  byte-level BPE trained on the generated texts (bart-base's own would be a download); the tokens per example are
  printed with the results;
* **loader** — ``TaskDataset`` + ``MultitaskLoader`` exactly as the trainer builds them (persistent workers,
  recycled feature buffers, ``pin_memory`` on CUDA, per-task batch sizes = the paper's ratios of ``--batch-size``,
  default 500 on CUDA);
* **step** — the trainer's own ``Trainer.train_step``: autocast (``--precision``, bf16 on CUDA), the family
  forward, ``task.loss_term``, backward, gradient clipping, AdamW (fused on CUDA), TF32 allowed,
  ``torch.compile`` with ``--compile``; timed with CUDA events on CUDA.

Measurements:

1. **Loader.** For each ``k`` in ``--workers``: one epoch to start the workers, then one epoch timed (every batch
   taken and dropped, no model): samples/s, and the ratio to ``k ×`` the 0-worker rate (target ≥ 0.9 for ``k`` up
   to the cores).
2. **Step.** Compute alone: ``--steps`` training steps (after ``--warmup``) on batches read beforehand, one task per
   step in the loader's order: samples/s from the summed step times. Then training fed by the loader of each ``k``:
   one epoch warm, one epoch timed with the trainer's ``LoaderTimer``: samples/s and the fraction of the time spent
   waiting for the next batch (target < 5 % at the paper's batch sizes on a GPU).
3. **FLOPs and MFU.** Counted: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward of one
   batch per task (matmul, bmm, attention and convolution FLOPs, 2 per multiply-add) → FLOP per example of each
   task; a measured step's FLOPs = Σ over its batches of that × the batch's examples. Analytic cross-check (printed
   per task): forward ≈ 2 · Σ_i N_i · T_i (the matmul weights N_i of each part times the tokens T_i they see:
   encoder layers and the decoder's cross-attention keys/values × encoder tokens; decoder layers and the LM head ×
   decoder tokens; the visual projection × visual tokens), and a frozen-backbone PEFT step ≈ 2 × forward (the
   backward computes input gradients through every frozen matmul, weight gradients only for the small trainable
   ones) = 4 · Σ N_i · T_i, plus the attention products (4 · d · T_q · T_k per layer and attention, forward), all
   on unpadded token counts (the counted FLOPs include padding). MFU = counted FLOP/s of the compute-alone steps / the device's dense peak at the step's
   precision (:data:`PEAK_TFLOPS`, ``--peak-tflops`` for other devices; n/a on CPU).
4. **Peak memory** — ``torch.cuda.max_memory_allocated`` over the steps on CUDA; peak RSS of the process on CPU.
5. **Evaluation** (``--eval-batches``, 0 to skip): ``model.predict`` over a few batches per task in input-length
   order, as evaluation runs (greedy VQA/GQA, beam 5 captions, NLVR² true/false logits): examples/s.

Output: Markdown tables on stdout; everything raw with ``--out FILE.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[2]
for p in (REPO, REPO / "scripts" / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

#: Dense (no sparsity) tensor-core peaks in TFLOP/s: bf16/fp16 inputs, and TF32 (fp32 steps with TF32 allowed).
#: Matched against ``torch.cuda.get_device_name()`` in this order (first match wins).
PEAK_TFLOPS = (
    ("H200 NVL", {"bf16": 835.0, "tf32": 417.5}),
    ("H200", {"bf16": 989.0, "tf32": 494.5}),  # also GH200
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0}),
    ("H100 NVL", {"bf16": 835.0, "tf32": 417.5}),
    ("H100", {"bf16": 989.0, "tf32": 494.5}),  # SXM
    ("A100", {"bf16": 312.0, "tf32": 156.0}),
    ("L40S", {"bf16": 362.0, "tf32": 183.0}),
    ("L4", {"bf16": 121.0, "tf32": 60.0}),
    ("A10", {"bf16": 125.0, "tf32": 62.5}),
)

COLUMNS_LOADER = ("workers per task", "reading processes", "loader samples/s", "ratio to processes × 0 workers",
                  "target")
COLUMNS_STEP = ("workers", "step samples/s", "train samples/s", "data wait", "peak memory", "GFLOP/step", "MFU")
COLUMNS_FLOPS = ("task", "batch", "enc tokens", "dec tokens", "GFLOP/example counted", "GFLOP/example analytic",
                 "counted / analytic")
COLUMNS_EVAL = ("task", "decoding", "eval batch", "eval examples/s")


def peak_tflops(device: torch.device, precision: str, override: float | None) -> tuple[float | None, str]:
    """The dense peak for this device and precision, and where it came from."""
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "n/a on CPU"
    name = torch.cuda.get_device_name(device)
    key = "tf32" if precision == "fp32" else "bf16"
    for pattern, peaks in PEAK_TFLOPS:
        if pattern in name:
            return peaks[key], f"{name}: {peaks[key]:g} TFLOP/s {key} dense"
    return None, f"n/a (no peak known for {name}; pass --peak-tflops)"


# ------------------------------------------------------------------------------------------------ setup


def build_everything(args, data_root: Path, work: Path):
    """Config, tokenizer, model, optimizer, tasks, datasets and a trainer-like object whose ``train_step`` is the
    trainer's."""
    from vlrouting.config import load_config
    from vlrouting.models.registry import build_model
    from vlrouting.models.tiny import corpus_from_datasets, tiny_bart_config, train_tiny_tokenizer
    from vlrouting.train.accel import configure_backends, maybe_compile
    from vlrouting.train.dist import DistInfo
    from vlrouting.train.tasks_setup import build_tasks
    from vlrouting.train.trainer import Trainer, build_optimizer, linear_schedule

    device = torch.device(args.device)
    tok = train_tiny_tokenizer(work / "tokenizer", corpus_from_datasets(data_root))
    if args.arch == "tiny":
        arch = work / "tiny_arch"
        arch.mkdir(exist_ok=True)
        tiny_bart_config(len(tok)).to_json_file(str(arch / "config.json"))
    else:
        arch = args.arch
    overrides = [f"model.arch={arch}", f"model.feat_dim={args.feat_dim}", f"train.batch_size={args.batch_size}",
                 f"train.precision={args.precision}", f"train.compile={str(args.compile).lower()}",
                 f"data.root={data_root}"]
    cfg = load_config(args.config, overrides)
    tasks = build_tasks(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.peft, pretrained=False).to(device)
    model.train()
    configure_backends(device, cfg.train.allow_tf32)
    optimizer = build_optimizer(model, cfg, device)
    spec = cfg.model.data_spec()
    datasets = {n: t.build_dataset(data_root, "train", tok, seed=cfg.train.seed, spec=spec) for n, t in tasks.items()}
    info = DistInfo(device=device)
    runner = SimpleNamespace(cfg=cfg, info=info, tasks=tasks, model=model, optimizer=optimizer, scaler=None,
                             scheduler=linear_schedule(optimizer, 10 ** 6, 0.0), step=0, run_dir=work,
                             forward=maybe_compile(model, cfg.train.compile, cfg.train.compile_backend,
                                                   cfg.train.compile_dynamic))
    runner.autocast = lambda: Trainer.autocast(runner)
    runner.train_step = lambda batch: Trainer.train_step(runner, batch)
    return cfg, tok, model, tasks, datasets, runner


def make_loader(cfg, tasks, datasets, workers: int, device: torch.device):
    from vlrouting.data.multitask import MultitaskLoader

    d = cfg.data
    return MultitaskLoader(datasets, tasks, cfg.train.batch_size, seed=cfg.train.seed, num_workers=workers,
                           pin_memory=d.pin_memory and device.type == "cuda", persistent_workers=d.persistent_workers,
                           prefetch_factor=d.prefetch_factor, buffers_per_worker=d.buffers_per_worker)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ measurements


def measure_loader(cfg, tasks, datasets, workers: int, device) -> dict:
    loader = make_loader(cfg, tasks, datasets, workers, device)
    for epoch in (0, 1):  # epoch 0 starts the workers; epoch 1 is timed
        loader.set_epoch(epoch)
        samples, t = 0, time.perf_counter()
        for batch in loader:
            samples += len(batch["ids"])
            del batch
    dt = time.perf_counter() - t
    loader.close()
    return {"workers": workers, "samples": samples, "seconds": dt, "samples_per_s": samples / dt}


def count_flops(runner, tasks, batches: dict) -> dict:
    """Counted FLOP per example of one forward + backward of each task's batch (gradients zeroed afterwards)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vlrouting.train.trainer import to_device

    out = {}
    for name, batch in batches.items():
        dev_batch = to_device(batch, runner.info.device)
        with FlopCounterMode(display=False) as counter:
            with runner.autocast():
                output = runner.model(dev_batch)
                term = tasks[name].loss_term(output, dev_batch)
            term.value.backward()
        runner.optimizer.zero_grad(set_to_none=True)
        out[name] = counter.get_total_flops() / len(batch["ids"])
    return out


def analytic_flops(model, batch: dict) -> float:
    """Per example, on the unpadded token counts (module docstring): 2 × forward, forward = 2 · Σ N_i · T_i plus the
    attention products (scores and weighted values: 4 · d · T_q · T_k per layer and attention)."""
    bart = model.bart
    d = bart.config.d_model
    enc_layers = sum(p.numel() for n, p in bart.model.encoder.layers.named_parameters() if p.dim() == 2)
    cross_kv = sum(p.numel() for n, p in bart.model.decoder.layers.named_parameters()
                   if p.dim() == 2 and ("encoder_attn.k_proj" in n or "encoder_attn.v_proj" in n))
    dec_layers = sum(p.numel() for n, p in bart.model.decoder.layers.named_parameters() if p.dim() == 2) - cross_kv
    lm_head = bart.lm_head.weight.numel()
    visual = model.visual_embedding.feat_embedding[0].weight.numel()
    b = len(batch["ids"])
    t_vis = batch["vis_feats"].shape[1]
    t_enc = batch["attention_mask"].sum().item() / b + t_vis
    t_dec = (batch["labels"] != -100).sum().item() / b if batch["labels"] is not None else 1.0
    forward = 2 * ((enc_layers + cross_kv) * t_enc + (dec_layers + lm_head) * t_dec + visual * t_vis)
    forward += 4 * d * (len(bart.model.encoder.layers) * t_enc ** 2
                        + len(bart.model.decoder.layers) * (t_dec ** 2 + t_dec * t_enc))
    return 2 * forward


def token_counts(batch: dict) -> tuple[float, float]:
    b = len(batch["ids"])
    enc = batch["attention_mask"].sum().item() / b + batch["vis_feats"].shape[1]
    dec = (batch["labels"] != -100).sum().item() / b if batch["labels"] is not None else 0.0
    return enc, dec


class StepClock:
    """Step times: CUDA events on CUDA (read after one synchronisation at the end), wall clock elsewhere."""

    def __init__(self, device: torch.device):
        self.device = device
        self.events: list = []
        self.times: list[float] = []

    def run(self, fn, *a):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*a)
            end.record()
            self.events.append((start, end))
            return out
        t = time.perf_counter()
        out = fn(*a)
        self.times.append(time.perf_counter() - t)
        return out

    def seconds(self) -> list[float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return [s.elapsed_time(e) / 1000.0 for s, e in self.events]
        return self.times


def measure_compute(runner, batches: list, warmup: int, steps: int, flops_per_example: dict) -> dict:
    device = runner.info.device
    plan = list(itertools.islice(itertools.cycle(batches), warmup + steps))
    for batch in plan[:warmup]:
        runner.train_step(batch)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = StepClock(device)
    for batch in plan[warmup:]:
        clock.run(runner.train_step, batch)
    seconds = sum(clock.seconds())
    samples = sum(len(b["ids"]) for b in plan[warmup:])
    flops = sum(flops_per_example[b["task"]] * len(b["ids"]) for b in plan[warmup:])
    return {"steps": steps, "samples": samples, "seconds": seconds, "samples_per_s": samples / seconds,
            "flops_per_step": flops / steps, "flops_per_s": flops / seconds, "peak_memory_mb": peak_memory_mb(device)}


def measure_training(runner, cfg, tasks, datasets, workers: int) -> dict:
    from vlrouting.train.accel import LoaderTimer

    device = runner.info.device
    loader = make_loader(cfg, tasks, datasets, workers, device)
    summary = None
    for epoch in (0, 1):  # epoch 0 starts the workers; epoch 1 is timed
        loader.set_epoch(epoch)
        timer = LoaderTimer(loader)
        for batch in timer:
            runner.train_step(batch)
        summary = timer.summary()
    sync(device)
    loader.close()
    return {"workers": workers, **summary}


def measure_eval(model, tok, tasks, datasets, base_batch: int, batch_size: int | None, n_batches: int) -> list[dict]:
    from vlrouting.data.multitask import make_eval_loader
    from vlrouting.train.trainer import to_device

    device = next(model.parameters()).device
    rows = []
    model.eval()
    with torch.no_grad():
        for name, task in tasks.items():
            ds = datasets[name]
            bs = batch_size or task.batch_size(base_batch)  # evaluation's default: the training batch
            loader = make_eval_loader(ds, task, bs, order=ds.length_order())
            batches = list(itertools.islice(iter(loader), n_batches))
            model.predict(task, to_device(batches[0], device), tok)  # warm-up (kernels, allocator)
            sync(device)
            t, n = time.perf_counter(), 0
            for batch in batches:
                n += len(model.predict(task, to_device(batch, device), tok))
            sync(device)
            dt = time.perf_counter() - t
            decoding = task.decode.strategy + (f" {task.decode.num_beams}" if task.decode.strategy == "beam" else "")
            rows.append({"task": name, "decoding": decoding, "batch": bs, "examples": n, "seconds": dt,
                         "examples_per_s": n / dt})
    model.train()
    return rows


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------------ report


def fmt(x, digits=0) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def table(columns, rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(res: dict) -> str:
    out = []
    m = res["machine"]
    out.append(f"{res['arch']} ({res['params_total'] / 1e6:.1f} M parameters, {res['params_trainable'] / 1e6:.2f} M "
               f"trainable, config {res['config']}), device {m['device_name']}, precision {res['precision']}, "
               f"compile {res['compile']}, base batch {res['batch_size']} (per task {res['batch_sizes']}), layout "
               f"{res['layout']}, features 36×{res['feat_dim']} fp16 → float32; {m['cores']} cores, load average "
               f"{m['load_before']:.2f} → {m['load_after']:.2f}; torch {m['torch']}")
    base = next((r["samples_per_s"] for r in res["loader"] if r["workers"] == 0), None)
    rows = []
    n_tasks = len(res["batch_sizes"])
    for r in res["loader"]:
        k = r["workers"]
        procs = min(k * n_tasks, m["cores"]) if k else 1  # each task's loader has k workers, all reading ahead
        ratio = f"{r['samples_per_s'] / (procs * base):.2f}" if k and base else ""
        rows.append((k, f"{procs} of {k * n_tasks}" if k else "1 (main)", fmt(r["samples_per_s"]), ratio,
                     "≥ 0.9" if k and base else ""))
    out += ["", f"Loader (MultitaskLoader over the {n_tasks} tasks, k workers per task, one epoch after a warm one; "
                "reading processes = k × tasks, at most the cores):", "", table(COLUMNS_LOADER, rows)]
    c = res["compute"]
    mfu = f"{100 * c['flops_per_s'] / (res['peak_tflops'] * 1e12):.1f} %" if res["peak_tflops"] else "n/a"
    mem = f"{c['peak_memory_mb'] / 1024:.2f} GB" + (" (GPU)" if m["device"] == "cuda" else " (RSS)")
    rows = [("— (batches read beforehand)", fmt(c["samples_per_s"], 1), "", "", mem,
             fmt(c["flops_per_step"] / 1e9, 1), mfu)]
    for r in res["training"]:
        rows.append((r["workers"], "", fmt(r["samples_per_s"], 1), f"{100 * r['data_wait_fraction']:.1f} %", "", "",
                     ""))
    out += ["", f"Step (trainer's train_step; compute alone over {c['steps']} steps after warm-up, then training fed "
                f"by the loader for one epoch after a warm one; MFU against {res['peak_source']}):", "",
            table(COLUMNS_STEP, rows)]
    rows = [(t["task"], t["batch"], fmt(t["enc_tokens"], 1), fmt(t["dec_tokens"], 1), fmt(t["counted"] / 1e9, 3),
             fmt(t["analytic"] / 1e9, 3), f"{t['counted'] / t['analytic']:.2f}") for t in res["flops"]]
    out += ["", "FLOPs per example (counted: FlopCounterMode, forward + backward, padded batch; analytic: "
                "4 · Σ N_i · T_i + attention, unpadded tokens):", "",
            table(COLUMNS_FLOPS, rows)]
    if res["eval"]:
        rows = [(e["task"], e["decoding"], e["batch"], fmt(e["examples_per_s"], 1)) for e in res["eval"]]
        out += ["", "Evaluation (model.predict in input-length order, after one warm-up batch):", "",
                table(COLUMNS_EVAL, rows)]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=("tiny", "bart-base"), default="bart-base")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--layout", choices=("contiguous", "per-image"), default="contiguous")
    p.add_argument("--steps", type=int, default=20, help="timed compute-alone steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, help="base batch (per-task sizes follow the paper's ratios); default "
                                                  "500 on CUDA, 8 on CPU")
    p.add_argument("--batches-per-task", type=int, default=6, help="training batches of each task per epoch")
    p.add_argument("--feat-dim", type=int, default=2048)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (train.compile)")
    p.add_argument("--config", default="multitask_adapter_single_mul")
    p.add_argument("--eval-batches", type=int, default=2, help="batches per task for evaluation speed (0: skip)")
    p.add_argument("--eval-batch-size", type=int, help="default: the task's training batch")
    p.add_argument("--peak-tflops", type=float, help="the device's dense peak, if not in the table")
    p.add_argument("--threads", type=int, help="torch intra-op threads of the main process")
    p.add_argument("--data", help="datasets root to write to / reuse (default: a temporary folder)")
    p.add_argument("--out", help="write everything measured as JSON")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    args.batch_size = args.batch_size or (500 if device.type == "cuda" else 8)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    from bench_data import sizes_for, write_dataset

    from vlrouting.data.tasks import build_tasks as registered_tasks

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        work = Path(tmp)
        data_root = Path(args.data) if args.data else work / "datasets"
        if not (data_root / "vqa" / "karpathy_train.json").is_file():
            sizes = sizes_for({n: t.batch_size(args.batch_size) for n, t in registered_tasks().items()},
                              args.batches_per_task)
            info = write_dataset(data_root, layout=args.layout, feat_dim=args.feat_dim, **sizes)
            progress(f"data: {json.dumps(info)}")
        cfg, tok, model, tasks, datasets, runner = build_everything(args, data_root, work)
        params = model.parameter_report()

        # one epoch of batches in the loader's order, read in this process, for FLOPs and the compute-alone steps
        loader0 = make_loader(cfg, tasks, datasets, 0, device)
        loader0.set_epoch(0)
        batches = list(itertools.islice(iter(loader0), args.warmup + args.steps))
        if device.type == "cuda" and cfg.data.pin_memory:  # as the loader hands them over: pinned
            batches = [{k: (v.pin_memory() if torch.is_tensor(v) else v) for k, v in b.items()} for b in batches]
        firsts = {}
        for b in batches:
            firsts.setdefault(b["task"], b)
        for name in tasks:  # a task the first batches missed
            if name not in firsts:
                firsts[name] = next(b for b in loader0 if b["task"] == name)
        counted = count_flops(runner, tasks, firsts)
        flops_rows = []
        for name in tasks:
            enc, dec = token_counts(firsts[name])
            flops_rows.append({"task": name, "batch": len(firsts[name]["ids"]), "enc_tokens": enc, "dec_tokens": dec,
                               "counted": counted[name], "analytic": analytic_flops(model, firsts[name])})
        progress("model built, FLOPs counted")

        loader_rows = []
        for k in args.workers:
            loader_rows.append(measure_loader(cfg, tasks, datasets, k, device))
            progress(f"loader, {k} workers per task: {loader_rows[-1]['samples_per_s']:,.0f} samples/s")
        compute = measure_compute(runner, batches, args.warmup, args.steps, counted)
        progress(f"compute alone: {compute['samples_per_s']:,.1f} samples/s")
        del batches
        training = []
        for k in args.workers:
            training.append(measure_training(runner, cfg, tasks, datasets, k))
            progress(f"training, {k} workers per task: {training[-1]['samples_per_s']} samples/s, data wait "
                     f"{training[-1]['data_wait_fraction']}")
        evals = measure_eval(model, tok, tasks, datasets, args.batch_size, args.eval_batch_size, args.eval_batches) \
            if args.eval_batches else []
        progress("done")

    peak, source = peak_tflops(device, args.precision, args.peak_tflops)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    res = {
        "arch": args.arch, "config": args.config, "precision": args.precision, "compile": args.compile,
        "batch_size": args.batch_size, "batch_sizes": {n: t.batch_size(args.batch_size) for n, t in tasks.items()},
        "layout": args.layout, "feat_dim": args.feat_dim, "params_total": params["total"],
        "params_trainable": params["trainable"], "peak_tflops": peak, "peak_source": source,
        "loader": loader_rows, "compute": compute, "training": training, "flops": flops_rows, "eval": evals,
        "machine": {"device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else platform.processor() or platform.machine(), "cores": cores, "load_before": load_before,
                    "load_after": os.getloadavg()[0], "torch": torch.__version__, "python": platform.python_version()},
    }
    print()
    print(report(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
