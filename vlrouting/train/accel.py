"""The training step on an accelerator: TF32 matmuls, fused AdamW, optional ``torch.compile`` (issue: throughput).

- ``train.allow_tf32`` (default true): float32 matmuls and convolutions on NVIDIA GPUs may use TF32 tensor cores
  (10-bit mantissa inputs, float32 accumulation). bf16/fp16 autocast (``train.precision``) is separate.
- AdamW is the fused CUDA kernel when the parameters live on a CUDA device (one kernel for every tensor instead of
  a loop over them; the same update up to float rounding); the plain implementation elsewhere.
- ``train.compile=true`` wraps the training forward with ``torch.compile`` (``train.compile_backend``, default
  ``inductor``); evaluation and generation stay eager. Shapes vary with the text length and the task changes the
  routing branch, so expect a few recompilations in the first steps of each task; ``train.compile_dynamic`` marks
  shapes dynamic from the start.
"""

from __future__ import annotations

import torch


def configure_backends(device: torch.device, allow_tf32: bool) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32


def adamw(groups: list[dict], *, lr: float, eps: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (β = 0.9, 0.999), fused on CUDA."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, eps=eps, betas=(0.9, 0.999), **({"fused": True} if fused else {}))


def maybe_compile(module: torch.nn.Module, enabled: bool, backend: str = "inductor", dynamic: bool | None = None):
    """``torch.compile(module)`` when ``enabled``; the module itself otherwise."""
    if not enabled:
        return module
    return torch.compile(module, backend=backend, dynamic=dynamic)


class LoaderTimer:
    """Iterates ``loader`` and measures where the time goes: ``wait`` = seconds spent waiting for the next batch,
    ``compute`` = seconds between handing a batch out and asking for the next one (the training step)."""

    def __init__(self, loader):
        self.loader = loader
        self.wait = self.compute = 0.0
        self.batches = self.samples = 0

    def __iter__(self):
        import time

        it = iter(self.loader)
        handed_out = None
        while True:
            t0 = time.perf_counter()
            if handed_out is not None:
                self.compute += t0 - handed_out
            try:
                batch = next(it)
            except StopIteration:
                return
            handed_out = time.perf_counter()
            self.wait += handed_out - t0
            self.batches += 1
            self.samples += len(batch.get("ids", ())) if isinstance(batch, dict) else 0
            yield batch

    def summary(self) -> dict:
        total = self.wait + self.compute
        return {"batches": self.batches, "samples": self.samples,
                "samples_per_s": round(self.samples / total, 2) if total else None,
                "data_wait_fraction": round(self.wait / total, 4) if total else None}
