"""Half-shared adapters with routing: one projection shared by all tasks, the other per task (VL-Adapter §3.6).

VL-Adapter's ``--share_up_sampler`` (or ``--share_down_sampler``) on multiple adapters: at every adapter position
the tasks' adapters are ``h + Up(gelu_new(route(Down_t h, Down_t x_R)))`` where Up is one Linear(r → d) shared by
all tasks and Down_t a Linear(d → r) per task (``peft.half_shared: up``, the paper's 8.36 % row; ``down`` shares
Down and keeps Up per task). Both with bias, weights N(0, init_std), biases 0 as the adapter's
(:mod:`vlrouting.peft.adapter`); routing sits between the down-projection and the activation.

The shared projection belongs to its position (each of the 30 positions has its own), so it lives in the wrapper
as ``peft_shared`` next to the per-task halves in ``peft_block`` — not in a model-level owner, which is for
parameters shared across layers.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import get_activation

from vlrouting.errors import ConfigError
from vlrouting.peft.base import DeltaPair, RoutedWrapper, in_out_features
from vlrouting.peft.registry import layer_norm_params, register_peft_method
from vlrouting.routing import route


def _linear(fin: int, fout: int, std: float) -> nn.Linear:
    lin = nn.Linear(fin, fout)
    with torch.no_grad():  # Tensor methods, not nn.init: unaffected by transformers' init skipping
        lin.weight.normal_(0.0, std)
        lin.bias.zero_()
    return lin


@register_peft_method("half_shared_adapter", also_trainable=layer_norm_params, placement="adapter")
class HalfSharedAdapterWrapper(RoutedWrapper):
    """Per-task Down (or Up) in ``peft_block[task]``, the other projection in ``peft_shared``."""

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.shared:
            raise ConfigError("peft.shared=true makes every projection shared; half-shared adapters share one "
                              "projection and keep the other per task, so set peft.shared=false.")

    def __init__(self, base_layer: nn.Module, cfg, **kw):
        self.check_config(cfg)
        _, d = in_out_features(base_layer)
        r = d // cfg.reduction_factor
        share_up = cfg.half_shared == "up"
        own = (lambda: _linear(d, r, cfg.init_std)) if share_up else (lambda: _linear(r, d, cfg.init_std))
        super().__init__(base_layer, own, tasks=cfg.tasks, shared=False, **kw)
        self.shares = cfg.half_shared
        self.peft_shared = _linear(r, d, cfg.init_std) if share_up else _linear(d, r, cfg.init_std)
        self.act = get_activation(cfg.adapter_act)

    def projections(self, task: str) -> tuple[nn.Linear, nn.Linear]:
        """(Down, Up) of ``task``."""
        own = self.block_for(task)
        return (own, self.peft_shared) if self.shares == "up" else (self.peft_shared, own)

    def delta_pairs(self) -> list[DeltaPair]:
        """Per task: its own projection's weight and the shared one's (the shared matrix appears in every pair)."""
        own = [(label, f"{prefix}.weight") for label, prefix in self.block_prefixes()]
        if self.shares == "up":
            return [DeltaPair(label, name, "peft_shared.weight") for label, name in own]
        return [DeltaPair(label, "peft_shared.weight", name) for label, name in own]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(x, *args, **kwargs)
        task, _, routing, x_r = self.routing_inputs(h.shape[0])
        down, up = self.projections(task)
        z = down(h)
        if routing != "none":
            z = route(routing, z, down(x_r.to(h.dtype)))
        return h + up(self.act(z))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, shared projection: {self.shares}"
