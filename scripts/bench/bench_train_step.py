#!/usr/bin/env python
"""Training-step benchmark: routing overhead of Adapter/LoRA on VL-BART, our LoRA vs the ``peft`` library's.

Run by hand (not a test)::

    .venv/bin/python scripts/bench/bench_train_step.py                 # full run (~5 min on 2 idle cores)
    .venv/bin/python scripts/bench/bench_train_step.py --quick         # a smoke run (~2 min)
    .venv/bin/python scripts/bench/bench_train_step.py --threads 1     # steadier when other processes run
    .venv/bin/python scripts/bench/bench_train_step.py --x-r-source visual --out bench.json
    .venv/bin/python scripts/bench/bench_train_step.py --profile lora-proj   # op table of one config

Three measurements, printed as Markdown tables (and written as JSON with ``--out``):

1. **Routing overhead.** One training step (forward, token cross-entropy, backward, grad-norm clip 5, AdamW step,
   zero_grad) of the bart-base-shaped VL-BART (random weights, d=768, 6+6 layers, 36 CLIP grid features of dim
   2048) for Adapter (single, r=96) and LoRA (single, r=128) with every routing function. All configurations
   live in one process (frozen weight matrices shared) and are timed *interleaved*: every round times one
   step of each configuration (the order rotates per round), so drifts in machine load hit all of them
   alike; rounds hit by a burst of load are dropped (see :func:`clean_rounds`). Reported: the median step
   time and, per configuration, the median of the per-round ratios to the same method's ``none`` with a 90 %
   bootstrap interval, its IQR and min/max. Target: every routing within 3 % of ``none``.
2. **Our LoRA vs peft's LoRA.** The same plain text-only BartForConditionalGeneration (same weights, same inputs,
   encoder length = text + visual tokens so the shapes match part 1), LoRA r=128/α=32/dropout 0.1 on q_proj and
   v_proj of encoder self-, decoder self- and decoder cross-attention (36 linears), attached once with
   ``vlrouting.peft.attach_peft`` (routing none) and once with ``peft.get_peft_model``; the same trainable set
   on both sides — LoRA only, and LoRA + every bias (VL-Adapter's LoRA rule; peft's ``bias="all"``). Interleaved
   the same way. Target: ours ≤ 1.05 × peft.
3. **Peak memory.** Each configuration again in a fresh subprocess (``--single NAME``, before the parent builds
   anything): RSS after building, peak RSS (``VmHWM``) while building and — reset in between — while taking a
   few training steps, and ``ru_maxrss`` (Linux carries it across ``exec``, hence the sweep runs first).

Nothing is downloaded: the backbone is built from the packaged ``bart-base`` architecture with random weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vlrouting.models.vlbart import ModelConfig, build_vlbart, packaged_arch_config  # noqa: E402
from vlrouting.machine import machine_info, provenance_line, source_commit  # noqa: E402
from vlrouting.peft import PeftConfig, attach_peft, peft_parameters  # noqa: E402

ROUTINGS = ("none", "mul", "add", "proj", "expand")
METHODS = ("adapter", "lora")
BART_VARIANTS = ("ours-lora", "peft-lora", "ours-lora+bias", "peft-lora+bias")
ROUTING_TOL = 0.03
PEFT_TOL = 1.05
# q_proj/v_proj of encoder self-attn, decoder self-attn and decoder cross-attn (vlrouting.peft.targets "bart/lora").
PEFT_TARGET_REGEX = r".*(?:encoder\.layers\.\d+\.self_attn|decoder\.layers\.\d+\.(?:self_attn|encoder_attn))\.(?:q_proj|v_proj)"


# ---------------------------------------------------------------------------------------------- inputs
def make_vl_batch(args, vocab: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, lt, lo = args.batch, args.text_len, args.target_len
    input_ids = torch.randint(4, vocab - 300, (b, lt), generator=g)
    mask = torch.ones(b, lt, dtype=torch.long)
    labels = torch.randint(4, vocab - 300, (b, lo), generator=g)
    for i in range(b):  # a little padding, as real batches have
        pad_in, pad_out = i % 3, i % 2 * 2
        if pad_in:
            input_ids[i, lt - pad_in:] = 1
            mask[i, lt - pad_in:] = 0
        if pad_out:
            labels[i, lo - pad_out:] = -100
    return {
        "task": "vqa",
        "input_ids": input_ids,
        "attention_mask": mask,
        "vis_feats": torch.randn(b, args.n_boxes, 2048, generator=g),
        "img_order_ids": torch.zeros(b, args.n_boxes, dtype=torch.long),
        "obj_order_ids": torch.arange(args.n_boxes).expand(b, args.n_boxes).clone(),
        "labels": labels,
    }


def make_text_batch(args, vocab: int, seed: int) -> dict:
    """Plain BART inputs for part 2: encoder length = text + visual tokens (same token count as part 1)."""
    g = torch.Generator().manual_seed(seed)
    b, ls, lo = args.batch, args.text_len + args.n_boxes, args.target_len
    input_ids = torch.randint(4, vocab - 300, (b, ls), generator=g)
    mask = torch.ones(b, ls, dtype=torch.long)
    labels = torch.randint(4, vocab - 300, (b, lo), generator=g)
    for i in range(b):
        pad_in, pad_out = i % 3, i % 2 * 2
        if pad_in:
            input_ids[i, args.text_len - pad_in:args.text_len] = 1
            mask[i, args.text_len - pad_in:args.text_len] = 0
        if pad_out:
            labels[i, lo - pad_out:] = -100
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


# ---------------------------------------------------------------------------------------------- runners
def build_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """vlrouting.train.trainer's AdamW grouping (decay 0.01 except biases, eps 1e-6)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if "bias" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-4, eps=1e-6, betas=(0.9, 0.999))


class Runner:
    """One configuration: a model in train mode, its optimizer and a fixed batch; ``step()`` is one update."""

    def __init__(self, name: str, model: nn.Module, batch: dict, forward, clip: float | None):
        self.name, self.model, self.batch, self.forward, self.clip = name, model, batch, forward, clip
        self.model.train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.n_trainable = sum(p.numel() for p in {id(p): p for p in self.params}.values())
        self.optimizer = build_optimizer(model)
        self.last_loss = float("nan")

    def step(self) -> None:
        logits = self.forward(self.model, self.batch)
        labels = self.batch["labels"]
        loss = nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=-100)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = float(loss.detach())


def _vl_forward(model, batch):
    return model(batch)


def _bart_forward(model, batch):
    from transformers.models.bart.modeling_bart import shift_tokens_right

    cfg = model.config
    dec_in = shift_tokens_right(batch["labels"], cfg.pad_token_id, cfg.decoder_start_token_id)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=dec_in,
                 use_cache=False).logits


def vl_config_names(args) -> list[str]:
    return [f"{m}-{r}" for m in args.methods for r in args.routings]


def shared_weights_memo(module: nn.Module) -> dict:
    """``copy.deepcopy`` memo that shares every >=2-D parameter (the frozen weight matrices and embeddings).

    Many configurations live in one process; without sharing, 10 VL-BART copies take ~10 GB and the
    machine starts evicting file-backed pages (torch's own code), which shows up as multi-second steps.
    1-D parameters (biases, LayerNorms — trained by LoRA/Adapter) are copied per configuration.
    """
    return {id(p): p for p in module.parameters() if p.dim() >= 2}


def base_vl_bart(args):
    """The resized bart-base backbone of ``build_vlbart(pretrained=False)``, without a VLBart around it."""
    from transformers import BartForConditionalGeneration

    from vlrouting.models.vlbart import _resize_vocab

    torch.manual_seed(args.seed)
    config = packaged_arch_config("bart-base")
    bart = BartForConditionalGeneration(config)
    _resize_vocab(bart, config.vocab_size + ModelConfig().extra_vocab)
    return bart


def vl_peft_config(method: str, routing: str, args) -> PeftConfig:
    route_sides = ["decoder"] if args.x_r_source == "encoder" else ["encoder", "decoder"]
    if method == "adapter":
        return PeftConfig(method="adapter", shared=True, routing=routing, route_sides=route_sides,
                          reduction_factor=args.adapter_reduction)
    return PeftConfig(method="lora", shared=True, routing=routing, route_sides=route_sides, r=args.lora_r,
                      lora_alpha=32.0, lora_dropout=0.1)


def build_vl_runner(name: str, args, backbone=None) -> Runner:
    """``backbone`` given: deep-copy it sharing its weight matrices; otherwise ``build_vlbart`` from scratch."""
    from vlrouting.models.vlbart import VLBart

    method, routing = name.split("-", 1)
    pcfg = vl_peft_config(method, routing, args)
    mcfg = ModelConfig(x_r_source=args.x_r_source)
    if backbone is None:
        torch.manual_seed(args.seed)  # the same backbone weights for every configuration
        model = build_vlbart(mcfg, pcfg, pretrained=False, device="cpu")
    else:
        bart = copy.deepcopy(backbone, memo=shared_weights_memo(backbone))
        torch.manual_seed(args.seed + 2)  # the same visual-embedding / PEFT init for every configuration
        model = VLBart(bart, mcfg, pcfg)
    vocab = model.bart.get_input_embeddings().weight.shape[0]
    return Runner(name, model, make_vl_batch(args, vocab, args.seed + 1), _vl_forward, args.clip)


def _plain_bart(args):
    from transformers import BartForConditionalGeneration

    torch.manual_seed(args.seed)
    return BartForConditionalGeneration(packaged_arch_config("bart-base"))


def build_bart_runner(name: str, args, backbone=None) -> Runner:
    side, trainable = name.split("-", 1)  # "ours"/"peft", "lora"/"lora+bias"
    with_bias = trainable == "lora+bias"
    bart = copy.deepcopy(backbone, memo=shared_weights_memo(backbone)) if backbone is not None else _plain_bart(args)
    torch.manual_seed(args.seed + 2)
    if side == "ours":
        attach_peft(bart, PeftConfig(method="lora", shared=True, routing="none", r=args.lora_r, lora_alpha=32.0,
                                     lora_dropout=0.1), model_type="bart")
        for p in bart.parameters():
            p.requires_grad_(False)
        for _, p in peft_parameters(bart):
            p.requires_grad_(True)
        model = bart
    else:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=args.lora_r, lora_alpha=32, lora_dropout=0.1, target_modules=PEFT_TARGET_REGEX,
                         bias="all" if with_bias else "none")
        model = get_peft_model(bart, cfg)
        n_lora = sum(1 for n, _ in model.named_modules() if n.endswith("lora_A"))
        assert n_lora == 36, f"peft targets matched {n_lora} linears, expected 36"
    if with_bias:  # VL-Adapter's LoRA rule (vlrouting.peft.registry.bias_params): every parameter named *bias
        for n, p in model.named_parameters():
            if "bias" in n.rsplit(".", 1)[-1]:
                p.requires_grad_(True)
    vocab = model.get_input_embeddings().weight.shape[0]
    return Runner(name, model, make_text_batch(args, vocab, args.seed + 1), _bart_forward, args.clip)


def build_runner(name: str, args, backbone=None) -> Runner:
    if name.split("-", 1)[0] in ("ours", "peft"):
        return build_bart_runner(name, args, backbone)
    return build_vl_runner(name, args, backbone)


def check_shared_frozen(runners: list[Runner]) -> None:
    """Weights shared between configurations must be frozen in all of them."""
    seen: dict[int, int] = {}
    for r in runners:
        for p in {id(p): p for p in r.model.parameters()}.values():
            seen[id(p)] = seen.get(id(p), 0) + 1
            if seen[id(p)] > 1:
                assert not p.requires_grad, f"{r.name}: a parameter shared between configurations is trainable"


# ---------------------------------------------------------------------------------------------- statistics
def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "q25": quantile(xs, 0.25), "q75": quantile(xs, 0.75),
            "min": min(xs), "max": max(xs)}


def bootstrap_median_ci(xs: list[float], level: float = 0.90, n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median (resampling rounds)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(n))
    a = (1 - level) / 2
    return quantile(meds, a), quantile(meds, 1 - a)


def clean_rounds(times: dict[str, list[float]], slack: float) -> list[int]:
    """Rounds in which no step took more than ``slack`` × its configuration's fastest step.

    Load from other processes only ever slows a step down, so the fastest step is the best estimate of the
    undisturbed time (a median is not: under sustained load most steps are slow).

    Other processes on a 2-core machine make OpenMP steps 2–20× slower for tens of seconds at a time; a
    round hit by such a burst says nothing about the configurations' relative cost, so ratios use clean
    rounds only (the JSON keeps every round).
    """
    best = {n: min(t) for n, t in times.items()}
    n_rounds = len(next(iter(times.values())))
    return [k for k in range(n_rounds) if all(t[k] <= slack * best[n] for n, t in times.items())]


def interleaved(runners: list[Runner], args, rounds: int, budget_s: float, label: str) -> dict:
    """Warm every runner up, then rounds of one timed step per runner (start rotating by one each round).

    Stops once ``rounds`` clean rounds are in (see :func:`clean_rounds`), or when the time budget is spent
    (after at least 3 rounds), or at ``args.max_round_factor`` × ``rounds`` rounds.
    """
    for _ in range(args.warmup):
        for r in runners:
            r.step()
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    n = len(runners)
    t_all = time.perf_counter()
    k = 0
    while True:
        for j in range(n):
            r = runners[(k + j) % n]
            t0 = time.perf_counter()
            r.step()
            times[r.name].append(time.perf_counter() - t0)
        k += 1
        kept = clean_rounds(times, args.slack)
        elapsed = time.perf_counter() - t_all
        print(f"  [{label}] round {k}: {len(kept)} clean ({elapsed:.0f} s, load {os.getloadavg()[0]:.2f})",
              file=sys.stderr, flush=True)
        if len(kept) >= rounds or k >= args.max_round_factor * rounds or (k >= 3 and elapsed > budget_s):
            break
    if len(clean_rounds(times, args.slack)) < rounds:
        print(f"WARNING: [{label}] {len(clean_rounds(times, args.slack))} clean rounds of {k} within the budget "
              f"({rounds} wanted): the machine is busy; figures are noisier than usual (try --threads 1)",
              file=sys.stderr)
    for r in runners:
        if not torch.isfinite(torch.tensor(r.last_loss)):
            print(f"WARNING: {r.name} produced a non-finite loss ({r.last_loss})", file=sys.stderr)
    kept = clean_rounds(times, args.slack)
    if len(kept) < 3:
        print(f"WARNING: [{label}] only {len(kept)} clean rounds of {k}; using all rounds", file=sys.stderr)
        kept = list(range(k))
    return {"all": times, "kept_rounds": kept, "n_rounds": k, "elapsed_s": time.perf_counter() - t_all,
            "kept": {name: [t[i] for i in kept] for name, t in times.items()}}


def ratio_table(times: dict[str, list[float]], pairs: list[tuple[str, str]], tol: float,
                all_times: dict[str, list[float]] | None = None) -> dict[str, dict]:
    """For (config, reference) pairs: the per-round ratios config/reference, summarised, and a verdict.

    Verdict: ``yes`` when the median ratio is within ``tol`` (≤ 1 + tol); ``no`` when even the lower end of the
    90 % bootstrap interval of the median is above it; ``unclear`` in between (the noise cannot decide).
    """
    out = {}
    for cfg, ref in pairs:
        ratios = [a / b for a, b in zip(times[cfg], times[ref])]
        lo, hi = bootstrap_median_ci(ratios)
        med = statistics.median(ratios)
        verdict = "yes" if med <= 1 + tol else ("no" if lo > 1 + tol else "unclear")
        out[cfg] = summarize(ratios) | {"reference": ref, "ci90": [lo, hi], "verdict": verdict,
                                        "per_round": ratios}
        if all_times is not None:
            out[cfg]["median_all_rounds"] = statistics.median(
                [a / b for a, b in zip(all_times[cfg], all_times[ref])])
    return out


# ---------------------------------------------------------------------------------------------- memory
def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover
        return float("nan")


def hwm_mb() -> float:
    """Peak RSS of this process image (``VmHWM``; unlike ``ru_maxrss`` it is not inherited across exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def reset_hwm() -> bool:
    """Reset VmHWM (Linux ≥ 4.0: write 5 to /proc/self/clear_refs); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def run_single(name: str, args) -> dict:
    """Fresh-process mode: build one configuration, take ``--mem-steps`` steps, report RSS figures (JSON)."""
    rss0 = rss_mb()
    runner = build_runner(name, args)
    rss_built, peak_built = rss_mb(), hwm_mb()
    was_reset = reset_hwm()
    for _ in range(args.mem_steps):
        runner.step()
    return {"config": name, "rss_start_mb": rss0, "rss_built_mb": rss_built, "peak_build_mb": peak_built,
            "peak_train_mb": hwm_mb() if was_reset else float("nan"), "rss_after_mb": rss_mb(),
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "trainable": runner.n_trainable, "loss": runner.last_loss}


def memory_sweep(names: list[str], args) -> dict[str, dict]:
    out = {}
    passthrough = ["--batch", str(args.batch), "--text-len", str(args.text_len), "--target-len",
                   str(args.target_len), "--x-r-source", args.x_r_source, "--seed", str(args.seed),
                   "--mem-steps", str(args.mem_steps), "--lora-r", str(args.lora_r),
                   "--adapter-reduction", str(args.adapter_reduction)]
    if not args.clip:
        passthrough.append("--no-clip")
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    for name in names:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--single", name, *passthrough]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"WARNING: --single {name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  [memory] {name}: peak while training {out[name]['peak_train_mb']:.0f} MB", file=sys.stderr,
              flush=True)
    return out


# ---------------------------------------------------------------------------------------------- profile
def profile(name: str, args) -> None:
    from torch.profiler import ProfilerActivity, profile as tprofile

    runner = build_runner(name, args)
    for _ in range(3):
        runner.step()
    steps = 5
    with tprofile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(steps):
            runner.step()
    events = prof.key_averages()
    total_ops = sum(e.count for e in events if e.key.startswith("aten::")) / steps
    print(f"{name}: {total_ops:.0f} aten op calls per step (incl. nested)\n")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


# ---------------------------------------------------------------------------------------------- output
def pct(x: float) -> str:
    return f"{(x - 1) * 100:+.1f} %"


def _step_cells(ts: list[float]) -> str:
    s = summarize(ts)
    return f"{s['median'] * 1e3:.0f} | {s['q25'] * 1e3:.0f}–{s['q75'] * 1e3:.0f}"


def _ratio_cells(r: dict) -> str:
    return (f"{r['median']:.3f} ({pct(r['median'])}) | {r['ci90'][0]:.3f}–{r['ci90'][1]:.3f} | "
            f"{r['q25']:.3f}–{r['q75']:.3f} | {r['min']:.2f} / {r['max']:.2f} | "
            + ("**no**" if r["verdict"] == "no" else r["verdict"]) + " |")


def ratio_header(what: str, target: str) -> list[str]:
    return [f"| config | trainable | median step (ms) | step IQR (ms) | {what} (median) | 90 % CI of median | "
            f"ratio IQR | ratio min / max | {target} |",
            "|---|---:|---:|---:|---:|---:|---:|---:|:-:|"]


def routing_markdown(times, ratios, trainable) -> str:
    lines = ratio_header("ratio to none", f"within {ROUTING_TOL:.0%}")
    for name, ts in times.items():
        row = f"| {name} | {trainable[name]:,} | {_step_cells(ts)} | "
        row += _ratio_cells(ratios[name]) if name in ratios else "1 (reference) | – | – | – | – |"
        lines.append(row)
    return "\n".join(lines)


def peft_markdown(times, ratios, trainable) -> str:
    lines = ratio_header("ours / peft", f"≤ {PEFT_TOL:.2f}×")
    for name, ts in times.items():
        row = f"| {name} | {trainable[name]:,} | {_step_cells(ts)} | "
        row += _ratio_cells(ratios[name]) if name in ratios else "(reference) | – | – | – | – |"
        lines.append(row)
    return "\n".join(lines)


def memory_markdown(mem: dict[str, dict]) -> str:
    lines = ["| config | trainable | RSS after build (MB) | peak RSS while building (MB) | "
             "peak RSS while training (MB) | RSS after steps (MB) | `ru_maxrss` (MB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in mem.items():
        lines.append(f"| {name} | {m['trainable']:,} | {m['rss_built_mb']:.0f} | {m['peak_build_mb']:.0f} | "
                     f"{m['peak_train_mb']:.0f} | {m['rss_after_mb']:.0f} | {m['ru_maxrss_mb']:.0f} |")
    return "\n".join(lines)


def noise_line(run: dict, ratios: dict[str, dict], args) -> str:
    kept, alls = run["kept"], run["all"]
    rel = {n: (summarize(t)["q75"] - summarize(t)["q25"]) / summarize(t)["median"] for n, t in kept.items()}
    rat = [(r["q75"] - r["q25"]) for r in ratios.values()]
    slow = sum(1 for t in alls.values() for x in t if x > args.slack * min(t))
    n = sum(len(t) for t in alls.values())
    shift = max(abs(r["median_all_rounds"] - r["median"]) for r in ratios.values())
    return (f"Rounds: {len(run['kept_rounds'])} clean of {run['n_rounds']} run ({run['elapsed_s']:.0f} s); "
            f"{slow}/{n} timed steps took > {args.slack:g}× their config's fastest step (load from other "
            f"processes) and their rounds were dropped; using every round instead would move a median ratio by "
            f"at most {shift:.3f}. In clean rounds: step-time IQR {min(rel.values()):.1%}–{max(rel.values()):.1%} "
            f"of the median per config, per-round ratio IQR width {min(rat):.3f}–{max(rat):.3f}.")


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text-len", type=int, default=20)
    p.add_argument("--target-len", type=int, default=10)
    p.add_argument("--n-boxes", type=int, default=36, help=argparse.SUPPRESS)
    p.add_argument("--x-r-source", choices=("encoder", "visual"), default="encoder",
                   help="encoder: routing on decoder modules (default); visual: routing on both sides")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--routings", nargs="+", default=list(ROUTINGS),
                   choices=("none", "mul", "add", "proj", "expand", "proj_relu"))
    p.add_argument("--lora-r", type=int, default=128)
    p.add_argument("--adapter-reduction", type=int, default=8, help="bottleneck d/8 = 96 on bart-base")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per configuration before timing")
    p.add_argument("--rounds", type=int, default=15, help="clean interleaved rounds wanted (routing part)")
    p.add_argument("--peft-rounds", type=int, default=15, help="clean interleaved rounds wanted (peft part)")
    p.add_argument("--slack", type=float, default=1.3,
                   help="a round is dropped when one of its steps took > SLACK × that config's fastest step")
    p.add_argument("--max-round-factor", type=float, default=3.0,
                   help="never run more than this × the wanted rounds")
    p.add_argument("--budget-s", type=float, default=240.0,
                   help="stop adding rounds after this many seconds even if fewer clean rounds than wanted "
                        "are in (routing part; the peft part gets half)")
    p.add_argument("--mem-steps", type=int, default=3, help="training steps before reading peak RSS")
    p.add_argument("--mem-configs", nargs="*", default=None,
                   help="configurations for the memory table (default: all that are timed)")
    p.add_argument("--no-clip", dest="clip", action="store_const", const=None, default=5.0,
                   help="skip grad-norm clipping (on by default: the trainer clips at 5)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", nargs="*", default=[], choices=("routing", "peft", "memory"))
    p.add_argument("--quick", action="store_true",
                   help="warm-up 2, 5 rounds each, memory for the none/proj configs and our/peft LoRA only")
    p.add_argument("--out", type=Path, default=None, help="write the raw times and summaries as JSON")
    p.add_argument("--single", metavar="CONFIG", help="internal: build CONFIG in this process, print RSS as JSON")
    p.add_argument("--profile", metavar="CONFIG", help="print a torch.profiler op table for CONFIG and exit")
    p.add_argument("--profile-rows", type=int, default=25)
    args = p.parse_args(argv)
    if "none" not in args.routings:
        args.routings = ["none", *args.routings]
    if args.quick:
        args.warmup, args.rounds, args.peft_rounds, args.mem_steps, args.budget_s = 2, 5, 5, 2, 60.0
        if args.mem_configs is None:
            args.mem_configs = [f"{m}-{r}" for m in args.methods for r in ("none", "proj") if r in args.routings]
            args.mem_configs += ["ours-lora", "peft-lora"]
    return args


def main(argv=None) -> int:
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.single:
        print(json.dumps(run_single(args.single, args)))
        return 0
    if args.profile:
        profile(args.profile, args)
        return 0

    import peft
    import transformers

    env = {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "load_avg_start": os.getloadavg(),
           "commit": source_commit(), "machine_info": machine_info()}
    result: dict = {"env": env, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    trainable: dict[str, int] = {}
    sections: list[str] = []
    t_start = time.perf_counter()

    # Memory first: the children's figures are their own, and the parent is still small while they run.
    mem = None
    if "memory" not in args.skip:
        names = args.mem_configs
        if names is None:
            names = (vl_config_names(args) if "routing" not in args.skip else []) + \
                    (list(BART_VARIANTS) if "peft" not in args.skip else [])
        mem = memory_sweep(names, args)
        result["memory"] = mem

    if "routing" not in args.skip:
        names = vl_config_names(args)
        print(f"building {len(names)} VL-BART configurations (shared frozen weights) ...", file=sys.stderr,
              flush=True)
        backbone = base_vl_bart(args)
        runners = [build_vl_runner(n, args, backbone) for n in names]
        del backbone
        check_shared_frozen(runners)
        trainable.update({r.name: r.n_trainable for r in runners})
        run = interleaved(runners, args, args.rounds, args.budget_s, "routing")
        del runners
        pairs = [(n, f"{n.split('-', 1)[0]}-none") for n in names if not n.endswith("-none")]
        ratios = ratio_table(run["kept"], pairs, ROUTING_TOL, run["all"])
        side = ("x_R source `encoder`: routing on the decoder's modules" if args.x_r_source == "encoder"
                else "x_R source `visual`: routing on encoder and decoder modules")
        verdicts = {r["verdict"] for r in ratios.values()}
        verdict = ("every routing within the target" if verdicts <= {"yes"} else
                   "some routing exceeds the target" if "no" in verdicts else
                   "some median above the target, but within the noise (90 % CI reaches the target)")
        sections.append(
            f"## 1. Routing overhead — VL-BART (bart-base shape, random weights), {side}\n\n"
            f"Interleaved rounds after {args.warmup} warm-up steps per config; ratio = per-round step time / the "
            f"same method's `none` in that round; statistics over clean rounds. Target: every routing within "
            f"{ROUTING_TOL:.0%} of `none`.\n\n" + routing_markdown(run["kept"], ratios, trainable) + "\n\n"
            + noise_line(run, ratios, args) + f"\nVerdict: {verdict}.\n")
        result["routing"] = {"times_s": run["all"], "kept_rounds": run["kept_rounds"], "ratios": ratios}

    if "peft" not in args.skip:
        print("building the plain-BART LoRA configurations (ours vs peft) ...", file=sys.stderr, flush=True)
        backbone = _plain_bart(args)
        runners = [build_bart_runner(n, args, backbone) for n in BART_VARIANTS]
        del backbone
        check_shared_frozen(runners)
        trainable.update({r.name: r.n_trainable for r in runners})
        for kind in ("lora", "lora+bias"):
            a, b = trainable[f"ours-{kind}"], trainable[f"peft-{kind}"]
            assert a == b, f"trainable sets differ for {kind}: ours {a:,} vs peft {b:,}"
        run = interleaved(runners, args, args.peft_rounds, args.budget_s / 2, "peft")
        del runners
        ratios = ratio_table(run["kept"], [("ours-lora", "peft-lora"), ("ours-lora+bias", "peft-lora+bias")],
                             PEFT_TOL - 1, run["all"])
        sections.append(
            "## 2. Our LoRA (routing none) vs the peft library's LoRA — plain text-only BART\n\n"
            f"Same random bart-base weights and inputs (encoder length {args.text_len + args.n_boxes}, target "
            f"{args.target_len}, B={args.batch}); r={args.lora_r}, α=32, dropout 0.1 on the 36 q/v linears; "
            f"trainable = LoRA only, or LoRA + every bias (peft `bias=\"all\"`); interleaved rounds, statistics "
            f"over clean rounds. Target: ours ≤ {PEFT_TOL:.2f}× peft.\n\n"
            + peft_markdown(run["kept"], ratios, trainable) + "\n\n" + noise_line(run, ratios, args) + "\n")
        result["peft"] = {"times_s": run["all"], "kept_rounds": run["kept_rounds"], "ratios": ratios}

    if mem is not None:
        sections.append(
            "## 3. Memory — each configuration in a fresh process\n\n"
            f"RSS via psutil; peaks from `VmHWM` (/proc/self/status), reset after building so that the training "
            f"peak covers {args.mem_steps} training steps only; `ru_maxrss` = `getrusage(RUSAGE_SELF)` at the end "
            "(whole process, build included).\n\n" + memory_markdown(mem) + "\n")

    env["load_avg_end"] = os.getloadavg()
    env["wall_s"] = time.perf_counter() - t_start
    print("# Training-step benchmark (vlrouting)\n")
    print(provenance_line(env["machine_info"]) + "\n")
    print(f"`{env['command']}` — torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}; "
          f"torch threads {env['threads']} (interop {env['interop_threads']}), {env['cpu_count']} CPUs; "
          f"load average {env['load_avg_start'][0]:.2f} at start, {env['load_avg_end'][0]:.2f} at end; "
          f"wall time {env['wall_s']:.0f} s.\n")
    print(f"Batch B={args.batch}, text length {args.text_len} (+{args.n_boxes} visual tokens), target length "
          f"{args.target_len}; one step = forward + token cross-entropy + backward + "
          f"{'grad-norm clip 5 + ' if args.clip else ''}AdamW + zero_grad.\n")
    print("\n".join(sections))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"(JSON written to {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
