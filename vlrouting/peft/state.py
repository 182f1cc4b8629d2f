"""Per-forward side inputs (task, x_R) shared by every PEFT module of one model.

The backbone's forward signature stays untouched: the model wrapper writes the current task and x_R into one
:class:`RoutingState` object that every wrapped module holds a reference to (a plain attribute, not a submodule,
so it is neither saved nor replicated as a parameter). It is set *inside* the wrapper's forward, so it holds on
every DDP rank, and it is left in place after the forward so that activation checkpointing, which recomputes
layers during backward, sees exactly the values of the first pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RoutingState:
    task: str | None = None
    x_r: dict[str, torch.Tensor | None] = field(default_factory=lambda: {"encoder": None, "decoder": None})

    def set(self, task: str | None, **x_r: torch.Tensor | None) -> None:
        self.task = task
        self.x_r = {"encoder": None, "decoder": None}
        self.x_r.update(x_r)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``hidden`` (B, L, d) over its valid positions (mask 1), as (B, 1, d) — the pooled x_R (§5.1)."""
    if mask is None:
        return hidden.mean(dim=1, keepdim=True)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1.0)


def expand_to_batch(x_r: torch.Tensor, batch: int) -> torch.Tensor:
    """Follow generate()'s beam/sample expansion: B rows of x_R become B·k rows (``repeat_interleave``).

    ``generate`` expands the encoder outputs of B examples to B × num_beams with ``repeat_interleave`` (each
    example's beams contiguous); per-example side inputs must follow the same expansion (DESIGN §9).
    """
    n = x_r.shape[0]
    if n == batch:
        return x_r
    if n == 0 or batch % n:
        raise RuntimeError(f"x_R has {n} rows but the module sees a batch of {batch}; cannot align them")
    return x_r.repeat_interleave(batch // n, dim=0)
