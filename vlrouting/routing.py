"""Routing functions: parameter-free mixes of text and visual states inside a PEFT bottleneck.

Qu, Tuytelaars, Moens, "Introducing Routing Functions to Vision-Language Parameter-Efficient Fine-Tuning with
Low-Rank Bottlenecks", ECCV 2024, §3 (Eqs. 3–7), Table 6 (ReLU variant) and Table 8 (task mixes).

Shapes: ``x_t = W_down x_H`` is (B, L_t, r) and ``x_v = W_down x_R`` is (B, L_v, r), mapped by the *same* W_down.
``Σ_v`` sums over the L_v visual rows (the paper's ``x'_v = 1ᵀ x_v``, footnote 7); with the default pooled
x_R, L_v = 1 and ``Σ_v x_v = x_v``.

==========  ==========================  ===============================================================
name        paper                       computed here
==========  ==========================  ===============================================================
none        –                           x_t
mul         x_t ∘ x'_v      (Eq. 4)     x_t ⊙ Σ_v x_v, broadcast over the L_t rows
add         x_t + x'_v      (Eq. 3)     x_t + Σ_v x_v, broadcast over the L_t rows
proj        x_t (x_v)ᵀ x_v  (Eq. 6)     x_t @ x_vᵀ @ x_v  (a true transpose; L_v = 1 gives ⟨x_t, x_v⟩ x_v)
expand      x_t x''_v       (Eq. 5)     x_t @ x''_v, x''_v the r×r matrix whose every row is Σ_v x_v,
                                        i.e. rowsum(x_t) ⊗ Σ_v x_v
proj_relu   ReLU(x_t)ReLU(x_v)ᵀx_v      relu(x_t) @ relu(x_v)ᵀ @ x_v  (Table 6)
==========  ==========================  ===============================================================

Adding a routing function touches this file only: decorate a function ``f(x_t, x_v) -> Tensor`` with
:func:`register_routing`.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

from vlrouting.data.tasks.sets import TASK_SETS
from vlrouting.errors import ConfigError

RoutingFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_REGISTRY: dict[str, RoutingFn] = {}
#: Names of the registered routing functions, in registration order.
ROUTING_FUNCTIONS: list[str] = []

#: The tasks Table 8's mixes choose a routing for: VL-Adapter's four-task benchmark (the ``vl4`` task set).
TASKS = TASK_SETS["vl4"].tasks

#: Table 8: the routing function chosen per task (i.e. by the task prompt) for each mix.
ROUTING_MIXES: dict[str, dict[str, str]] = {
    "comb1": {"vqa": "mul", "gqa": "mul", "nlvr": "proj", "caption": "expand"},
    "comb2": {"vqa": "add", "gqa": "add", "nlvr": "proj", "caption": "expand"},
    "comb3": {"vqa": "mul", "gqa": "mul", "nlvr": "mul", "caption": "expand"},
    "comb4": {"vqa": "add", "gqa": "add", "nlvr": "mul", "caption": "expand"},
}


def register_routing(name: str) -> Callable[[RoutingFn], RoutingFn]:
    """Register ``fn(x_t, x_v) -> (B, L_t, r)`` under ``name`` (the single registration point)."""

    def deco(fn: RoutingFn) -> RoutingFn:
        if name in _REGISTRY:
            raise ValueError(f"routing function '{name}' is already registered")
        _REGISTRY[name] = fn
        ROUTING_FUNCTIONS.append(name)
        return fn

    return deco


def _pooled(x_v: torch.Tensor) -> torch.Tensor:
    """x'_v = 1ᵀ x_v: the sum over the L_v visual rows, kept as (B, 1, r) for broadcasting (footnote 7)."""
    return x_v.sum(dim=1, keepdim=True)


@register_routing("none")
def _none(x_t: torch.Tensor, x_v: torch.Tensor) -> torch.Tensor:
    """No routing: the plain bottleneck path."""
    return x_t


@register_routing("mul")
def _mul(x_t: torch.Tensor, x_v: torch.Tensor) -> torch.Tensor:
    """Eq. 4: x_t ∘ x'_v, element-wise product with the visual vector broadcast over the text rows."""
    return x_t * _pooled(x_v)


@register_routing("add")
def _add(x_t: torch.Tensor, x_v: torch.Tensor) -> torch.Tensor:
    """Eq. 3: x_t + x'_v, the visual vector added to every text row."""
    return x_t + _pooled(x_v)


@register_routing("proj")
def _proj(x_t: torch.Tensor, x_v: torch.Tensor) -> torch.Tensor:
    """Eq. 6: x_t (x_v)ᵀ x_v with a true transpose (the released code's reshape is only right for L_v = 1)."""
    return torch.matmul(torch.matmul(x_t, x_v.transpose(1, 2)), x_v)


@register_routing("expand")
def _expand(x_t: torch.Tensor, x_v: torch.Tensor) -> torch.Tensor:
    """Eq. 5: x_t x''_v with x''_v = every row Σ_v x_v, which equals rowsum(x_t) ⊗ Σ_v x_v."""
    return x_t.sum(dim=-1, keepdim=True) * _pooled(x_v)


@register_routing("proj_relu")
def _proj_relu(x_t: torch.Tensor, x_v: torch.Tensor) -> torch.Tensor:
    """Table 6: ReLU(x_t) ReLU(x_v)ᵀ x_v (the last factor is not rectified, as in the paper)."""
    return torch.matmul(torch.matmul(torch.relu(x_t), torch.relu(x_v).transpose(1, 2)), x_v)


def get_routing(name: str) -> RoutingFn:
    """The routing function registered as ``name``; a ValueError listing the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown routing function '{name}'; valid routing functions: {', '.join(ROUTING_FUNCTIONS)}."
        ) from None


def route(name: str, x_t: torch.Tensor, x_v: torch.Tensor) -> torch.Tensor:
    """Apply routing function ``name`` to x_t (B, L_t, r) and x_v (B, L_v, r); returns (B, L_t, r)."""
    fn = get_routing(name)
    if x_t.dim() != 3 or x_v.dim() != 3:
        raise ValueError(f"route expects x_t (B, L_t, r) and x_v (B, L_v, r); got {tuple(x_t.shape)}, {tuple(x_v.shape)}")
    if x_t.shape[0] != x_v.shape[0] or x_t.shape[2] != x_v.shape[2]:
        raise ValueError(
            f"route: batch and rank of x_t {tuple(x_t.shape)} and x_v {tuple(x_v.shape)} must agree"
        )
    return fn(x_t, x_v)


def list_routings() -> list[str]:
    """Discovery helper: the registered routing function names."""
    return list(ROUTING_FUNCTIONS)


def resolve_routing(spec: str | dict[str, str], tasks: tuple[str, ...] | list[str] = TASKS) -> dict[str, str]:
    """Turn a routing spec into a per-task map.

    ``spec`` is a routing function name (the same one for every task), a mix name (``comb1``–``comb4``,
    Table 8), or an explicit ``{task: routing}`` dict. Unknown names raise a ConfigError naming the valid ones.
    """
    if isinstance(spec, dict):
        mapping = dict(spec)
    elif spec in ROUTING_MIXES:
        mapping = dict(ROUTING_MIXES[spec])
    elif spec in _REGISTRY:
        mapping = {t: spec for t in tasks}
    else:
        raise ConfigError(
            f"unknown routing '{spec}'; use a routing function ({', '.join(ROUTING_FUNCTIONS)}) "
            f"or a mix ({', '.join(ROUTING_MIXES)})."
        )
    missing = [t for t in tasks if t not in mapping]
    if missing:
        raise ConfigError(f"routing map has no entry for task(s) {', '.join(missing)}.")
    for name in mapping.values():
        get_routing(name)
    return {t: mapping[t] for t in tasks} if not isinstance(spec, dict) else mapping


def main(argv: list[str] | None = None) -> int:
    """``python -m vlrouting routings``: print the registered functions and the Table 8 mixes."""
    print("routing functions: " + ", ".join(ROUTING_FUNCTIONS))
    print("mixes (Table 8):   " + "  ".join(f"{m}[{', '.join(f'{t}={r}' for t, r in v.items())}]"
                                         for m, v in ROUTING_MIXES.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
