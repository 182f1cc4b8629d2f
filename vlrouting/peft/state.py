"""Per-forward side inputs (task, x_R) shared by every PEFT module of one model.

The backbone's forward signature stays untouched: the model wrapper writes the current task and x_R into one
:class:`RoutingState` object that every wrapped module holds a reference to (a plain attribute, not a submodule,
so it is neither saved nor replicated as a parameter). It is set *inside* the wrapper's forward, so it holds on
every DDP rank, and it is left in place after the forward so that activation checkpointing, which recomputes
layers during backward, sees exactly the values of the first pass.

**Replacing x_R (paper Table B2; reference/routing_official_spec.md §1.7).** ``peft.x_r_replace`` = ``noise``
or ``ones`` (set on the state by :func:`vlrouting.peft.attach_peft`) swaps every x_R for N(0, 1) noise or for
all-ones *where it enters this state*: each write to :attr:`RoutingState.x_r` — through :meth:`RoutingState.set` or
by item assignment, as a family's hook does — stores the replacement instead, so every x_R consumer reads it and
no family needs code for it, while the tensors the family built x_R from (visual tokens, a visual prefix) stay
real. A replacement has the shape, dtype and device of x_R with one row per *example*: it is drawn once per
forward (a :meth:`RoutingState.set` call starts a forward) and reused by every later write of the same side in that
forward — the per-step writes of a decoder hook during ``generate`` — and by a side written with the same tensor;
beams then get their example's row through :func:`expand_to_batch`, like a real x_R. The number of examples is
``set(..., batch_size=B)`` where a family writes x_R only after expanding it per beam, else the rows of the first
x_R written in the forward. Noise comes from torch's global generator (fresh per forward, reproducible from the
run's seed and restored with its checkpoint).
"""

from __future__ import annotations

import torch

#: Values of ``peft.x_r_replace``: keep x_R, fresh N(0, 1) noise per forward, all ones (Table B2).
X_R_REPLACEMENTS = ("none", "noise", "ones")


class XRSlots(dict):
    """x_R per side (``encoder``/``decoder``); a write stores the owning state's replacement of the value."""

    _state: "RoutingState | None" = None  # class default: a copy being rebuilt has no state yet

    def __init__(self, state: "RoutingState | None" = None, values: dict | None = None):
        super().__init__(encoder=None, decoder=None)
        self._state = state
        if values:
            self.update(values)

    def __setitem__(self, side, value) -> None:
        if self._state is not None:
            value = self._state._replacement(side, value)
        super().__setitem__(side, value)

    def __reduce_ex__(self, protocol):
        # A copy (deepcopy of a model, pickling) holds the stored values as they are: they were replaced when written,
        # and the state they belong to may be only half rebuilt while its slots are.
        return (_rebuilt_slots, (self._state, dict(self)))

    def update(self, *args, **kwargs) -> None:
        for side, value in dict(*args, **kwargs).items():
            self[side] = value

    def setdefault(self, side, value=None):
        if side not in self:
            self[side] = value
        return self[side]


def _rebuilt_slots(state: "RoutingState | None", values: dict) -> XRSlots:
    slots = XRSlots.__new__(XRSlots)
    dict.update(slots, values)
    slots._state = state
    return slots


class RoutingState:
    """The task of the current forward and x_R per side, as every PEFT wrapper of one model reads them."""

    def __init__(self, task: str | None = None, x_r: dict | None = None, x_r_replace: str = "none"):
        if x_r_replace not in X_R_REPLACEMENTS:
            raise ValueError(f"x_r_replace must be one of {', '.join(X_R_REPLACEMENTS)}, got {x_r_replace!r}")
        self.x_r_replace = x_r_replace
        self.task = task
        self.batch_size: int | None = None
        self._drawn: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # side -> (source, replacement), this forward
        self.x_r = x_r or {}

    def __setattr__(self, name, value) -> None:
        if name == "x_r" and not (isinstance(value, XRSlots) and value._state is self):
            value = XRSlots(self, value)  # a whole dict assigned at once is replaced per side as well
        super().__setattr__(name, value)

    def set(self, task: str | None, batch_size: int | None = None, **x_r: torch.Tensor | None) -> None:
        """Start a forward: its task and x_R per side (unset sides are None). ``batch_size``: see the module doc."""
        self.task = task
        self.batch_size = batch_size
        self._drawn = {}
        self.x_r = x_r

    def _replacement(self, side: str, value: torch.Tensor | None) -> torch.Tensor | None:
        """What the state stores for ``value`` written as ``side``'s x_R (the value itself unless replacing)."""
        if self.x_r_replace == "none" or value is None:
            return value
        drawn = self._drawn.get(side)
        if drawn is None:  # another side already written with this tensor (or its replacement) in this forward
            drawn = next(((src, rep) for src, rep in self._drawn.values() if value is src or value is rep), None)
        if drawn is not None and (drawn[1].shape[1:], drawn[1].dtype, drawn[1].device) == (
                value.shape[1:], value.dtype, value.device):
            self._drawn[side] = drawn
            return drawn[1]
        shape = value.shape[1:]
        rows = self.batch_size or value.shape[0]
        if self.x_r_replace == "noise":
            rep = torch.randn((rows, *shape), dtype=value.dtype, device=value.device)
        else:
            rep = torch.ones((rows, *shape), dtype=value.dtype, device=value.device)
        self._drawn[side] = (value, rep)
        return rep


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
