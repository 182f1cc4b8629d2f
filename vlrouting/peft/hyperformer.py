"""Hyperformer with routing: a hypernetwork generates every adapter from task and layer embeddings (reference §3.8).

Karimi Mahabadi et al.'s Hyperformer as VL-Adapter runs it (``--use_hyperformer --unique_hyper_net
--projected_task_embedding_dim 8 --reduction_factor 8``). Model-level parameters, owned once by
:class:`HyperformerOwner` (the model's ``peft_owner``):

- one task embedding per task (``hyper_task_dim`` = 512, N(0, 1)), shared by encoder and decoder;
- per side (one controller for the encoder, one for the decoder): a layer embedding table (layers × 512), a task
  hypernetwork Linear(1024 → ``hyper_hidden_dim`` = 128) → ReLU → Linear(→ ``hyper_code_dim`` = 8) followed by
  LayerNorm(8, eps 1e-6), turning [task embedding ; layer embedding] into the layer's code c;
- per side and block type (encoder: self-attention, FFN; decoder: self-, cross-attention, FFN): four generators,
  Linear(8 → r·d) and Linear(8 → r) for Down's weight (r × d) and bias, Linear(8 → d·r) and Linear(8 → d) for Up's.

The adapter at layer l, block type k is ``h + Up_{t,l,k}(gelu_new(route(Down_{t,l,k} h, Down_{t,l,k} x_R)))`` at
the adapter positions (reference §3.5), so it routes where the adapter does. On bart-base (r = 96) the owner holds
6,947,088 parameters (reference §3.9). Initialisation follows what VL-Adapter's models ended up with: the
controllers live inside its BART encoder/decoder, whose ``init_weights`` re-draws every nn.Linear as N(0, 0.02)
with zero bias and every nn.Embedding as N(0, 0.02) (``init_std``), replacing Hyperformer's own N(0, 0.01); the task
embeddings are raw parameters and keep their N(0, 1); LayerNorms (1, 0).

A wrapper finds its (side, layer, block type) from the qualified name of the module it wraps: the layer is the
last integer in the name and the block type the rest after it (``self_attn.out_proj``, ``fc2``, ...), so the
owner works for any architecture's adapter table.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import get_activation

from vlrouting.errors import ConfigError
from vlrouting.peft.base import RoutedWrapper, in_out_features
from vlrouting.peft.registry import layer_norm_params, register_peft_method
from vlrouting.routing import route

_LAYER = re.compile(r"^(.*)\.(\d+)\.(.+)$")  # greedy prefix: the last integer component is the layer


def _position(name: str) -> tuple[int, str]:
    m = _LAYER.match(name)
    if m is None:
        raise ConfigError(f"hyperformer cannot tell the layer of PEFT target '{name}' (no layer index in its name); "
                          "give peft.targets whose names contain the layer number.")
    return int(m.group(2)), m.group(3)


class AdapterGenerator(nn.Module):
    """Down/Up weights and biases of one block type from a layer code (Hyperformer's AdapterLayersHyperNet ×2)."""

    def __init__(self, code_dim: int, d: int, r: int):
        super().__init__()
        self.d, self.r = d, r
        self.down_weight = nn.Linear(code_dim, r * d)
        self.down_bias = nn.Linear(code_dim, r)
        self.up_weight = nn.Linear(code_dim, d * r)
        self.up_bias = nn.Linear(code_dim, d)

    def forward(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.down_weight(code).view(self.r, self.d), self.down_bias(code),
                self.up_weight(code).view(self.d, self.r), self.up_bias(code))


class SideController(nn.Module):
    """Layer embeddings, the task hypernetwork and the generators of one side (encoder or decoder)."""

    def __init__(self, n_layers: int, blocks: list[str], d: int, r: int, cfg):
        super().__init__()
        self.layer_embeddings = nn.Embedding(n_layers, cfg.hyper_task_dim)
        self.task_hypernet = nn.Sequential(nn.Linear(2 * cfg.hyper_task_dim, cfg.hyper_hidden_dim), nn.ReLU(),
                                           nn.Linear(cfg.hyper_hidden_dim, cfg.hyper_code_dim))
        self.code_norm = nn.LayerNorm(cfg.hyper_code_dim, eps=1e-6)
        self.generators = nn.ModuleDict({_key(b): AdapterGenerator(cfg.hyper_code_dim, d, r) for b in blocks})

    def code(self, task_embedding: torch.Tensor, layer: int) -> torch.Tensor:
        joint = torch.cat([task_embedding, self.layer_embeddings.weight[layer]])
        return self.code_norm(self.task_hypernet(joint))


def _key(block: str) -> str:
    return block.replace(".", "_")  # ModuleDict keys cannot hold dots


class HyperformerOwner(nn.Module):
    """Task embeddings and one :class:`SideController` per side; ``adapter_weights`` generates one adapter."""

    def __init__(self, cfg, targets: list[tuple[str, nn.Module, str]]):
        super().__init__()
        self.init_std = cfg.init_std
        self._where: dict[int, tuple[str, int, str]] = {}  # id(wrapped module) → (side, layer row, block type)
        sides: dict[str, dict] = {}
        for name, module, side in targets:
            layer, block = _position(name)
            info = sides.setdefault(side, {"layers": set(), "blocks": [], "d": set(), "seen": set()})
            if (layer, block) in info["seen"]:
                raise ConfigError(f"hyperformer: two {side} targets share layer {layer} and block '{block}' "
                                  f"('{name}'); give peft.targets that name each adapter position once.")
            info["seen"].add((layer, block))
            info["layers"].add(layer)
            if block not in info["blocks"]:
                info["blocks"].append(block)
            info["d"].add(in_out_features(module)[1])
        controllers = {}
        for side, info in sides.items():
            if len(info["d"]) != 1:
                raise ConfigError(f"hyperformer: the {side} adapter positions have different widths "
                                  f"{sorted(info['d'])}; one generator per block type needs one width per side.")
            d = info["d"].pop()
            rows = {layer: i for i, layer in enumerate(sorted(info["layers"]))}
            controllers[side] = SideController(len(rows), info["blocks"], d, d // cfg.reduction_factor, cfg)
            for name, module, s in targets:
                if s == side:
                    layer, block = _position(name)
                    self._where[id(module)] = (side, rows[layer], block)
        self.task_embeddings = nn.ParameterDict({t: nn.Parameter(torch.empty(cfg.hyper_task_dim))
                                                 for t in cfg.tasks})
        self.controllers = nn.ModuleDict(controllers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for emb in self.task_embeddings.values():
            emb.normal_(0.0, 1.0)
        for module in self.controllers.modules():  # Tensor methods, not nn.init: unaffected by init skipping
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, self.init_std)
                module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, self.init_std)
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    def position_of(self, module: nn.Module) -> tuple[str, int, str]:
        """(side, layer row, block type) of a wrapped module."""
        return self._where[id(module)]

    def adapter_weights(self, task: str, side: str, layer: int, block: str):
        """(Down weight (r, d), Down bias (r), Up weight (d, r), Up bias (d)) for ``task`` at that position."""
        if task not in self.task_embeddings:
            raise KeyError(f"task '{task}' has no hyperformer task embedding; configured tasks: "
                           f"{', '.join(self.task_embeddings)}")
        ctrl = self.controllers[side]
        return ctrl.generators[_key(block)](ctrl.code(self.task_embeddings[task], layer))


@register_peft_method("hyperformer", also_trainable=layer_norm_params, owner=HyperformerOwner, placement="adapter")
class HyperformerWrapper(RoutedWrapper):
    """An adapter position whose weights the owner generates for the batch's task; it holds no parameters."""

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.shared:
            raise ConfigError("peft.shared=true has no meaning for hyperformer: its task embeddings make every "
                              "task's adapters different by design; set peft.shared=false.")

    def __init__(self, base_layer: nn.Module, cfg, *, owner: HyperformerOwner, **kw):
        self.check_config(cfg)
        # per-task placeholders without parameters: they make the base class require a task for every forward
        super().__init__(base_layer, nn.Identity, tasks=cfg.tasks, shared=False, owner=owner, **kw)
        _, self.layer_row, self.block = owner.position_of(base_layer)  # its side is the wrapper's own side
        self.act = get_activation(cfg.adapter_act)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(x, *args, **kwargs)
        task, _, routing, x_r = self.routing_inputs(h.shape[0])
        w_down, b_down, w_up, b_up = (t.to(h.dtype) for t in
                                      self.owner.adapter_weights(task, self.side, self.layer_row, self.block))
        z = F.linear(h, w_down, b_down)
        if routing != "none":
            z = route(routing, z, F.linear(x_r.to(h.dtype), w_down, b_down))
        return h + F.linear(self.act(z), w_up, b_up)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, generated: {self.side} layer {self.layer_row} {self.block}"
