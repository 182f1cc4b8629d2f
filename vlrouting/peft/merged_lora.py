"""Merged q|v LoRA with routing for GPT-2's fused ``c_attn`` (reference/routing_official_spec.md §1.2, §1.3, §2.1;
paper §3, Eqs. 3–7).

GPT-2 computes q, k and v with one ``Conv1D`` ``c_attn`` (d → 3d, output q|k|v). The routing paper's released code
(loralib ``MergedLinear`` with ``enable_lora=[True, False, True]``, class ``MergedLinearOnlyVLBeforeB``) adapts the q
and v parts only, through **one merged bottleneck of width 2r**:

- ``A`` (2r × d): rows 0..r−1 are q's down-projection, rows r..2r−1 v's; Kaiming-uniform(a=√5), i.e. U(±1/√d).
- ``x_t = A x`` and ``x_v = A x_R`` (the *same* A; separate dropout draws), both 2r wide.
- The routing function runs on the **concatenated 2r vector**: for ``proj`` (x_t (x_v)ᵀ x_v) the scalar
  ⟨x_t, x_v⟩ = ⟨x_t^q, x_v^q⟩ + ⟨x_t^v, x_v^v⟩ scales both halves; for ``expand`` (x_t x''_v) the row sum runs over
  all 2r entries. So q and v mix, unlike separate per-projection LoRAs (``mul``/``add`` act per entry and do not).
- ``B`` is block-diagonal: ``lora_B`` (2d × r) holds the q-block (rows 0..d−1, applied to the first r entries) and
  the v-block (rows d..2d−1, applied to the last r); zero at init.
- The q and v updates are zero-padded into the q|k|v output: the k slice is exactly the frozen ``c_attn``'s.

Output: ``c_attn(x) + (α/r)·[B_q z_q, 0, B_v z_v]`` with ``z = route(A x, A x_R)`` — routing *replaces* the plain
``B A x`` path (§1.5); routing ``none`` is a plain merged q|v LoRA. Parameters per wrapped ``c_attn``: 4·r·d
(393,216 for r = 128 on GPT-2 base). The method also trains the wrapped layer's own bias (loralib freezes only the
weight; Table 5's 4,746,240 counts it); the model family may freeze it again.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlrouting.errors import ConfigError
from vlrouting.peft.base import DeltaPair, RoutedWrapper, in_out_features
from vlrouting.peft.registry import register_peft_method
from vlrouting.routing import route


class MergedQVLoRABlock(nn.Module):
    """``lora_A`` (2r × d) and the block-diagonal ``lora_B`` stored as its two blocks stacked, (2d × r)."""

    def __init__(self, d: int, r: int):
        super().__init__()
        self.d, self.r = d, r
        self.lora_A = nn.Parameter(torch.empty(2 * r, d))
        self.lora_B = nn.Parameter(torch.empty(2 * d, r))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.lora_A.shape[1])  # kaiming_uniform(a=√5) on (2r, d): fan_in = d
        self.lora_A.uniform_(-bound, bound)  # Tensor methods: not skipped by transformers' init guards
        self.lora_B.zero_()

    def extra_repr(self) -> str:
        return f"d={self.d}, r={self.r} (q|v bottleneck 2r={2 * self.r}, block-diagonal B)"


def wrapped_layer_bias(name: str, param: nn.Parameter, owner: nn.Module) -> bool:
    """The bias of each wrapped base layer (loralib's layers freeze only ``weight``): GPT-2's ``c_attn`` bias."""
    return name.endswith(".base_layer.bias")


@register_peft_method("merged_qv_lora", also_trainable=wrapped_layer_bias)
class MergedQVLoRAWrapper(RoutedWrapper):
    """Wraps a fused q|k|v projection (d → 3d, ``nn.Linear`` or ``Conv1D``); see the module docstring."""

    def __init__(self, base_layer: nn.Module, cfg, **kw):
        fin, fout = in_out_features(base_layer)
        if fout != 3 * fin:
            raise ConfigError(f"merged_qv_lora wraps a fused q|k|v projection (d → 3d), but this layer maps {fin} → "
                              f"{fout}; use peft.method=lora for separate q/v projections.")
        super().__init__(base_layer, lambda: MergedQVLoRABlock(fin, cfg.r), tasks=cfg.tasks, shared=cfg.shared, **kw)
        self.d, self.r = fin, cfg.r
        self.scaling = cfg.lora_alpha / cfg.r
        self.dropout = nn.Dropout(cfg.lora_dropout) if cfg.lora_dropout > 0 else nn.Identity()

    def delta_pairs(self) -> list[DeltaPair]:
        """W_down = A (2r × d), W_up = the stacked B blocks (2d × r); both split into their q and v halves."""
        return [DeltaPair(label, f"{prefix}.lora_A", f"{prefix}.lora_B", ("q", "v"))
                for label, prefix in self.block_prefixes()]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        _, block, routing, x_r = self.routing_inputs(x.shape[0])
        a = block.lora_A.to(x.dtype)
        z = torch.matmul(self.dropout(x), a.t())  # (B, L, 2r): [x_t^q | x_t^v]
        if routing != "none":
            z = route(routing, z, torch.matmul(self.dropout(x_r.to(x.dtype)), a.t()))  # routed over all 2r dims
        d, r = self.d, self.r
        b = block.lora_B.to(x.dtype)
        dq = torch.matmul(z[..., :r], b[:d].t())
        dv = torch.matmul(z[..., r:], b[d:].t())
        s = self.scaling
        return torch.cat([y[..., :d] + s * dq, y[..., d:2 * d], y[..., 2 * d:] + s * dv], dim=-1)
