"""Compacter with routing: the adapter of :mod:`vlrouting.peft.adapter` with PHM projections (reference §3.8).

Mahabadi et al.'s Compacter as VL-Adapter runs it (``--use_compacter --shared_phm_rule False --factorized_phm False
--hypercomplex_division 2``): at the adapter's 30 positions, ``h + Up(gelu_new(route(Down h, Down x_R)))`` where
Down (d → r) and Up (r → d) are parameterised hypercomplex multiplication (PHM) layers

    y = x H + b,   H = Σ_{i=1..n} A_i ⊗ B_i   (Kronecker product; A: n × n × n "rule", B: n × in/n × out/n)

with n = ``peft.phm_dim``, one rule per layer (not shared) and a full B (not factorised into rank-1 pieces); a PHM
layer holds n³ + in·out/n + out parameters. VL-Adapter's initialisation: each B_i Glorot-uniform with gain √2
(bound √2 · √(6 / (in/n + out/n))), the rule N(0, ``phm_init_range`` = 0.01), biases 0. Raw parameters, so
transformers' ``_init_weights`` never touched them there and :meth:`PHMLinear.reset_parameters` sets them here.
The routing function sits where the adapter's does (DESIGN §4): between the down-projection and the activation,
with the same Down (bias included) mapping x_H and x_R.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.activations import get_activation

from vlrouting.errors import ConfigError
from vlrouting.peft.base import RoutedWrapper, in_out_features
from vlrouting.peft.registry import layer_norm_params, register_peft_method
from vlrouting.routing import route


class PHMLinear(nn.Module):
    """``x H + b`` with ``H = Σ_i phm_rule[i] ⊗ phm_weight[i]`` of shape (in, out)."""

    def __init__(self, in_features: int, out_features: int, n: int, init_range: float = 0.01):
        super().__init__()
        if in_features % n or out_features % n:
            raise ConfigError(f"peft.phm_dim={n} must divide the PHM layer's sizes ({in_features} → {out_features}); "
                              "choose a divisor of both d_model and the bottleneck d_model // reduction_factor.")
        self.in_features, self.out_features, self.n = in_features, out_features, n
        self.init_range = init_range
        self.phm_rule = nn.Parameter(torch.empty(n, n, n))
        self.phm_weight = nn.Parameter(torch.empty(n, in_features // n, out_features // n))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        n = self.n
        bound = math.sqrt(2.0) * math.sqrt(6.0 / (self.in_features // n + self.out_features // n))
        self.phm_weight.uniform_(-bound, bound)  # Tensor methods, not nn.init: unaffected by init skipping
        self.phm_rule.normal_(0.0, self.init_range)
        self.bias.zero_()

    def weight(self) -> torch.Tensor:
        """H (in, out): entry [a·in/n + k, c·out/n + p] = Σ_i rule[i, a, c] · W[i, k, p]."""
        n, k, p = self.phm_weight.shape
        return torch.einsum("iac,ikp->akcp", self.phm_rule, self.phm_weight).reshape(n * k, n * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.weight().to(x.dtype)
        return torch.matmul(x, h) + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features} → {self.out_features}, n={self.n}"


class CompacterBlock(nn.Module):
    def __init__(self, d: int, r: int, n: int, init_range: float, act: str = "gelu_new"):
        super().__init__()
        self.down = PHMLinear(d, r, n, init_range)
        self.up = PHMLinear(r, d, n, init_range)
        self.act = get_activation(act)

    def forward(self, h: torch.Tensor, routing: str = "none", x_r: torch.Tensor | None = None) -> torch.Tensor:
        z = self.down(h)
        if routing != "none":
            z = route(routing, z, self.down(x_r.to(h.dtype)))
        return h + self.up(self.act(z))


@register_peft_method("compacter", also_trainable=layer_norm_params, placement="adapter")
class CompacterWrapper(RoutedWrapper):
    """``compacter(base_layer(x))`` at the adapter positions (before dropout and the residual add)."""

    def __init__(self, base_layer: nn.Module, cfg, **kw):
        _, d = in_out_features(base_layer)
        r = d // cfg.reduction_factor
        super().__init__(base_layer, lambda: CompacterBlock(d, r, cfg.phm_dim, cfg.phm_init_range, cfg.adapter_act),
                         tasks=cfg.tasks, shared=cfg.shared, **kw)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(x, *args, **kwargs)
        _, block, routing, x_r = self.routing_inputs(h.shape[0])
        return block(h, routing, x_r)
