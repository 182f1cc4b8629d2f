#!/usr/bin/env python
"""Training-step time of PETAL's DMA against plain LoRA at (about) the same trainable budget, on VL-BART.

Run by hand (not a test)::

    .venv/bin/python scripts/bench/bench_petal.py                   # ~5 min on 2 idle cores
    .venv/bin/python scripts/bench/bench_petal.py --quick           # smoke run
    .venv/bin/python scripts/bench/bench_petal.py --device cuda --batch 64 --out bench_petal.json

One training step (forward, token cross-entropy plus any auxiliary loss, backward, grad-norm clip 5, AdamW,
zero_grad) of the bart-base-shaped VL-BART (``build_vlbart(..., pretrained=False)``: random weights, d=768, 6+6
layers, 36 CLIP grid features of dim 2048), for these configurations, all in one process (frozen weight matrices
shared) and timed interleaved like ``bench_train_step.py`` (rounds hit by a burst of load dropped):

- ``lora-r2``: plain LoRA (r = 2, α = 32, dropout 0.1) on the 36 q/v linears: 110,592 PEFT parameters; only the
  LoRA matrices (and, as in every configuration, the visual embedding) train — no biases.
- ``dma-cp``: DMA, CP core, R = 64, Γ, on the 54 q/k/v linears: 101,942 parameters (the headline pair).
- ``dma-tucker``: DMA with the code's R³ cores (626,102), for the cost of the core contraction.
- ``lora-r6`` vs ``petal-full``: LoRA r = 6 (331,776) against DMA + AIM + SIB (353,335, plus 23,040 for the
  stand-in instructions: 376,375). Without a tokenizer the view instructions are stood in for by ``task+random``
  with 30 vectors — the length of the three view instructions in bart-base's tokenizer — so the encoder sees as
  many tokens as with the real views.

Reported: median step time per configuration and the median of the per-round ratios to the reference with a 90 %
bootstrap interval. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from bench_train_step import (  # noqa: E402
    base_vl_bart, build_optimizer, clean_rounds, make_vl_batch, ratio_table, shared_weights_memo, summarize,
)
from vlrouting.fileio import atomic_write_text  # noqa: E402
from vlrouting.machine import machine_info, provenance_line, source_commit  # noqa: E402
from vlrouting.models.vlbart import ModelConfig, VLBart  # noqa: E402
from vlrouting.peft import PeftConfig, peft_parameters  # noqa: E402

CONFIGS = {
    "lora-r2": dict(method="lora", r=2, lora_alpha=32.0, lora_dropout=0.1),
    "dma-cp": dict(method="dma", dma={"rank": 64, "core": "cp"}),
    "dma-tucker": dict(method="dma", dma={"rank": 64, "core": "tucker"}),
    "lora-r6": dict(method="lora", r=6, lora_alpha=32.0, lora_dropout=0.1),
    "petal-full": dict(method="dma", dma={"rank": 64}, aim={"enabled": True, "instructions": "task+random",
                                                            "random_length": 30}, sib={"enabled": True}),
}
PAIRS = [("dma-cp", "lora-r2"), ("dma-tucker", "lora-r2"), ("petal-full", "lora-r6")]


class Runner:
    """One configuration: model, optimizer, a fixed batch; ``step()`` is one update (task + auxiliary losses)."""

    def __init__(self, name: str, model: nn.Module, batch: dict, clip: float | None, device: torch.device):
        self.name, self.model, self.clip, self.device = name, model.to(device), clip, device
        self.batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        self.model.train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.n_trainable = sum(p.numel() for p in {id(p): p for p in self.params}.values())
        self.n_peft = self.n_trainable - sum(p.numel() for n, p in model.named_parameters()
                                             if p.requires_grad and n.startswith("visual_embedding."))
        self.optimizer = build_optimizer(model)
        self.last_loss = float("nan")

    def step(self) -> None:
        out = self.model(self.batch)
        labels = self.batch["labels"]
        loss = nn.functional.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=-100)
        loss = loss + sum(out.aux_losses.values()) if out.aux_losses else loss
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.last_loss = float(loss.detach())


def build_runner(name: str, backbone, args, device) -> Runner:
    bart = copy.deepcopy(backbone, memo=shared_weights_memo(backbone))
    torch.manual_seed(args.seed + 2)
    model = VLBart(bart, ModelConfig(), PeftConfig(shared=True, routing="none", tasks=["vqa"], **CONFIGS[name]))
    if CONFIGS[name]["method"] == "lora":  # plain LoRA: VL-Adapter's rule would also train every bias
        keep = {id(p) for _, p in peft_parameters(model)}
        for n, p in model.named_parameters():
            p.requires_grad_(id(p) in keep or n.startswith("visual_embedding."))
    vocab = model.bart.get_input_embeddings().weight.shape[0]
    return Runner(name, model, make_vl_batch(args, vocab, args.seed + 1), args.clip, device)


def interleaved(runners: list[Runner], args) -> dict:
    for _ in range(args.warmup):
        for r in runners:
            r.step()
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    t_all, k = time.perf_counter(), 0
    while True:
        for j in range(len(runners)):
            r = runners[(k + j) % len(runners)]
            t0 = time.perf_counter()
            r.step()
            times[r.name].append(time.perf_counter() - t0)
        k += 1
        kept = clean_rounds(times, args.slack)
        elapsed = time.perf_counter() - t_all
        print(f"  round {k}: {len(kept)} clean ({elapsed:.0f} s, load {os.getloadavg()[0]:.2f})", file=sys.stderr,
              flush=True)
        if len(kept) >= args.rounds or k >= 3 * args.rounds or (k >= 3 and elapsed > args.budget_s):
            break
    kept = clean_rounds(times, args.slack)
    n_clean = len(kept)
    if n_clean < 3:
        print(f"WARNING: only {n_clean} clean rounds of {k}; using all rounds", file=sys.stderr)
        kept = list(range(k))
    return {"all": times, "kept_rounds": kept, "n_clean": n_clean, "n_rounds": k,
            "kept": {n: [t[i] for i in kept] for n, t in times.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text-len", type=int, default=20)
    p.add_argument("--target-len", type=int, default=10)
    p.add_argument("--n-boxes", type=int, default=36, help=argparse.SUPPRESS)
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=15, help="clean interleaved rounds wanted")
    p.add_argument("--slack", type=float, default=1.3, help="a round is clean if no step exceeds slack × its fastest")
    p.add_argument("--budget-s", type=float, default=300.0)
    p.add_argument("--no-clip", dest="clip", action="store_const", const=None, default=5.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="5 rounds, 1 warm-up step, 90 s budget")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.budget_s = 5, 1, 90.0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_start = os.getloadavg()
    backbone = base_vl_bart(args)
    for q in backbone.parameters():
        q.requires_grad_(False)
    runners = [build_runner(name, backbone, args, device) for name in args.configs]
    res = interleaved(runners, args)
    pairs = [(a, b) for a, b in PAIRS if a in args.configs and b in args.configs]
    ratios = ratio_table(res["kept"], pairs, tol=0.0, all_times=res["all"])
    rows = {r.name: {"peft_params": r.n_peft, "trainable": r.n_trainable, "step_s": summarize(res["kept"][r.name])}
            for r in runners}
    info = machine_info()
    print(provenance_line(info) + "\n")
    print("# PETAL DMA vs LoRA: training-step time (vlrouting)\n")
    print(f"device {device} ({platform.processor() or platform.machine()}), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, B={args.batch}, text {args.text_len} + 36 visual tokens, target "
          f"{args.target_len}; load average {load_start[0]:.2f} → {os.getloadavg()[0]:.2f}; "
          f"{res['n_clean']} clean rounds of {res['n_rounds']}"
          f"{'' if res['n_clean'] >= 3 else ' (too few: every round used)'}.\n")
    print("| configuration | PEFT params | median step (ms) | ratio to | median ratio [90 % CI] |")
    print("|---|---:|---:|---|---|")
    for r in runners:
        cell = ratios.get(r.name)
        ratio = (f"{cell['reference']} | {cell['median']:.3f} [{cell['ci90'][0]:.3f}, {cell['ci90'][1]:.3f}]"
                 if cell else "— | —")
        print(f"| {r.name} | {r.n_peft:,} | {1000 * statistics.median(res['kept'][r.name]):.1f} | {ratio} |")
    if args.out:
        atomic_write_text(args.out, json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                                "ratios": ratios, "times": res["all"],
                                                "kept_rounds": res["kept_rounds"], "n_clean": res["n_clean"],
                                                "commit": source_commit(), "machine_info": info},
                                               indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
