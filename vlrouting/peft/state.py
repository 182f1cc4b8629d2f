"""Per-forward side inputs (task, x_R, per-token inputs) shared by every PEFT module of one model.

The backbone's forward signature stays untouched: the model wrapper writes the current task and x_R into one
:class:`RoutingState` object that every wrapped module holds a reference to (a plain attribute, not a submodule,
so it is neither saved nor replicated as a parameter). It is set *inside* the wrapper's forward, so it holds on
every DDP rank, and it is left in place after the forward so that activation checkpointing, which recomputes
layers during backward, sees exactly the values of the first pass.

Besides x_R the state carries two generic channels a model family fills and PEFT methods read:

- **per-token inputs by stream** (:meth:`RoutingState.set_tokens`): a stream is the token sequence a wrapped
  module reads (``encoder``, ``decoder``; a decoder's cross-attention keys/values read the ``encoder`` stream,
  see :mod:`vlrouting.peft.targets`). Each input is a (B, L) tensor, one value per token, or an int that holds
  for every token of the stream (e.g. ``modality_ids=0`` on a text-only decoder, whose length changes at every
  generation step). :meth:`RoutingState.token_input` follows generate()'s beam expansion like x_R does.
- **observed tensors** (:meth:`RoutingState.observe`): values of the current forward a model-level PEFT owner
  may need after it (the encoder's input and last hidden states, the labels), e.g. for an auxiliary loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RoutingState:
    task: str | None = None
    x_r: dict[str, torch.Tensor | None] = field(default_factory=lambda: {"encoder": None, "decoder": None})
    tokens: dict[str, dict[str, torch.Tensor | int]] = field(default_factory=dict)
    observed: dict[str, torch.Tensor] = field(default_factory=dict)

    def set(self, task: str | None, **x_r: torch.Tensor | None) -> None:
        """Start a forward: the task and x_R by side; per-token inputs and observations of the last one go."""
        self.task = task
        self.x_r = {"encoder": None, "decoder": None}
        self.x_r.update(x_r)
        self.tokens = {}
        self.observed = {}

    def set_tokens(self, stream: str, **inputs: torch.Tensor | int) -> None:
        """Per-token inputs of ``stream``: (B, L) tensors or one int for every token (module docstring)."""
        self.tokens.setdefault(stream, {}).update(inputs)

    def token_input(self, stream: str, name: str, batch: int, length: int) -> torch.Tensor | int:
        """Input ``name`` of ``stream`` for a module that sees ``batch`` × ``length`` tokens (an int as given).

        Rows follow generate()'s beam expansion (:func:`expand_to_batch`); a length that differs from the
        stream's is an error — a per-token input is never re-aligned by position.
        """
        value = self.tokens.get(stream, {}).get(name)
        if value is None:
            raise RuntimeError(f"no per-token '{name}' is set for the {stream} stream in this forward; the model "
                               f"family must provide it (RoutingState.set_tokens) for this PEFT method")
        if isinstance(value, int):
            return value
        if value.shape[1] != length:
            raise RuntimeError(f"per-token '{name}' of the {stream} stream covers {value.shape[1]} tokens but the "
                               f"module sees {length}; the family set it for another sequence")
        return expand_to_batch(value, batch)

    def observe(self, **tensors: torch.Tensor) -> None:
        """Record tensors of the current forward for model-level PEFT owners (module docstring)."""
        self.observed.update(tensors)


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
