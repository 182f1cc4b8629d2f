"""Adapter with routing: ``h + W_up · act(route(W_down h, W_down x_R)))`` (paper §3, DESIGN §4).

VL-Adapter's bottleneck adapter (reference §3.5): Down = Linear(d → d // reduction_factor) with bias,
Up = Linear(→ d) with bias, ``gelu_new``, inner residual ``+h``, no extra LayerNorms. The routing function sits
between the down-projection and the activation, and the same W_down (bias included) maps x_H and x_R.
Weights N(0, init_std), biases 0 — set by :meth:`AdapterBlock.reset_parameters` *after* the backbone's weights
are loaded (newer transformers skip ``torch.nn.init`` inside ``from_pretrained``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import get_activation

from vlrouting.peft.base import DeltaPair, RoutedWrapper, in_out_features
from vlrouting.peft.registry import layer_norm_params, register_peft_method
from vlrouting.routing import route


class AdapterBlock(nn.Module):
    def __init__(self, d: int, r: int, act: str = "gelu_new", init_std: float = 0.02):
        super().__init__()
        self.down = nn.Linear(d, r)
        self.up = nn.Linear(r, d)
        self.act = get_activation(act)
        self.init_std = init_std
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for lin in (self.down, self.up):
            lin.weight.normal_(0.0, self.init_std)  # Tensor methods, not nn.init: unaffected by init skipping
            lin.bias.zero_()

    def forward(self, h: torch.Tensor, routing: str = "none", x_r: torch.Tensor | None = None) -> torch.Tensor:
        z = self.down(h)
        if routing != "none":
            z = route(routing, z, self.down(x_r.to(h.dtype)))
        return h + self.up(self.act(z))


@register_peft_method("adapter", also_trainable=layer_norm_params)
class AdapterWrapper(RoutedWrapper):
    """``adapter(base_layer(x))``: wrapping ``out_proj``/``fc2`` puts the adapter before dropout and residual."""

    def __init__(self, base_layer: nn.Module, cfg, **kw):
        _, d = in_out_features(base_layer)
        r = d // cfg.reduction_factor
        super().__init__(base_layer, lambda: AdapterBlock(d, r, cfg.adapter_act, cfg.init_std),
                         tasks=cfg.tasks, shared=cfg.shared, **kw)

    def delta_pairs(self) -> list[DeltaPair]:
        """W_down = ``down.weight`` (r × d), W_up = ``up.weight`` (d × r); biases are not part of W."""
        return [DeltaPair(label, f"{prefix}.down.weight", f"{prefix}.up.weight") for label, prefix in self.block_prefixes()]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(x, *args, **kwargs)
        _, block, routing, x_r = self.routing_inputs(h.shape[0])
        return block(h, routing, x_r)
