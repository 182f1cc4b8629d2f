"""LoRA with routing: ``W0 x + b + (α/r) · B · route(A x, A x_R)`` (paper §3, DESIGN §4).

VL-Adapter's LoRA (reference §3.7): A (r × in) kaiming-uniform(a=√5) i.e. U(±1/√in), B (out × r) zero,
dropout on the input, never merged. Routing *replaces* the plain ``B A x`` path (routing spec §1.5); with
routing ``none`` this is exactly a plain LoRA. Dropout is applied to x_R as well (a separate draw), as the
paper's released code does. Works on ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2 ``c_attn``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlrouting.peft.base import DeltaPair, RoutedWrapper, in_out_features
from vlrouting.peft.registry import bias_params, register_peft_method
from vlrouting.routing import route


class LoRABlock(nn.Module):
    def __init__(self, in_features: int, out_features: int, r: int):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.empty(out_features, r))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.lora_A.shape[1])  # kaiming_uniform(a=√5) on (r, in)
        self.lora_A.uniform_(-bound, bound)
        self.lora_B.zero_()


@register_peft_method("lora", also_trainable=bias_params)
class LoRAWrapper(RoutedWrapper):
    def __init__(self, base_layer: nn.Module, cfg, **kw):
        fin, fout = in_out_features(base_layer)
        super().__init__(base_layer, lambda: LoRABlock(fin, fout, cfg.r), tasks=cfg.tasks, shared=cfg.shared, **kw)
        self.scaling = cfg.lora_alpha / cfg.r
        self.dropout = nn.Dropout(cfg.lora_dropout) if cfg.lora_dropout > 0 else nn.Identity()

    def delta_pairs(self) -> list[DeltaPair]:
        """W_down = A (r × in), W_up = B (out × r)."""
        return [DeltaPair(label, f"{prefix}.lora_A", f"{prefix}.lora_B") for label, prefix in self.block_prefixes()]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        _, block, routing, x_r = self.routing_inputs(x.shape[0])
        a = block.lora_A.to(x.dtype)
        z = torch.matmul(self.dropout(x), a.t())
        if routing != "none":
            z = route(routing, z, torch.matmul(self.dropout(x_r.to(x.dtype)), a.t()))
        return y + self.scaling * torch.matmul(z, block.lora_B.to(x.dtype).t())
