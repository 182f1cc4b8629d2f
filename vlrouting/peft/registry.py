"""One registration point per PEFT method (HF PEFT's ``tuners/<method>/`` idea).

A method is a wrapper class plus the VL-Adapter rule for which *backbone* parameters it also trains
(reference §3.9): adapters train every LayerNorm, LoRA trains every bias. Register with
``@register_peft_method("name", also_trainable=rule)`` in the method's own file.

A method may also own **model-level parameters** shared across layers (PETAL's mode factors, Compacter's shared
matrices, a Hyperformer hypernetwork): pass ``owner=OwnerClass``. :func:`vlrouting.peft.attach_peft` builds one
owner per model, ``OwnerClass(cfg, targets)`` with ``targets`` the ``(name, module, side)`` list of every module
about to be wrapped, registers it as the model's ``peft_owner`` submodule (saved and trained with the PEFT blocks)
and hands it to every wrapper as ``owner=``. An owner may define ``aux_losses() -> {name: scalar tensor}``: the
model returns them in its output and the trainer adds and logs each one (e.g. an information-bottleneck loss).

Further optional owner hooks a model family honours (CLIP-BART does; :class:`vlrouting.models.FamilyModel` lists the
host services they may use):

- ``bind_host(host)``: called once by the family after attaching and before it decides what trains; the owner may
  build host-dependent parts there (sized by ``host.hidden_size``) and keep a plain reference to the host
  (``host.tokenizer``, ``host.embed_text``, ``host.output_embeddings``, ``host.special_token_ids``,
  ``host.routing_state``).
- ``encoder_text(text, mask, task) -> (text, mask)``: rewrites the embedded text segment of the encoder input
  (B, L, d) and its mask before the other modalities join it (PETAL's instruction experts).
- ``parameter_groups(model) -> {component: [parameters]}``: the breakdown ``python -m vlrouting params`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from vlrouting.errors import ConfigError

TrainableRule = Callable[[str, nn.Parameter, nn.Module], bool]


@dataclass(frozen=True)
class PeftMethod:
    name: str
    wrapper: type
    also_trainable: TrainableRule
    owner: type | None = None
    placement: str = ""  # the target-table entry it wraps (vlrouting.peft.targets): "adapter", "lora", ...


PEFT_METHODS: dict[str, PeftMethod] = {}


def register_peft_method(name: str, also_trainable: TrainableRule, owner: type | None = None,
                         placement: str | None = None):
    """Register a wrapper class; ``placement`` names the per-architecture target list it wraps (default: ``name``;
    e.g. a Compacter wraps the adapter positions: ``placement="adapter"``)."""

    def deco(cls):
        if name in PEFT_METHODS:
            raise ValueError(f"PEFT method '{name}' is already registered")
        PEFT_METHODS[name] = PeftMethod(name, cls, also_trainable, owner, placement or name)
        return cls

    return deco


def get_peft_method(name: str) -> PeftMethod:
    if name not in PEFT_METHODS:
        raise ConfigError(f"unknown PEFT method '{name}'; valid methods: {', '.join(PEFT_METHODS)}.")
    return PEFT_METHODS[name]


def layer_norm_params(name: str, param: nn.Parameter, owner: nn.Module) -> bool:
    """``--unfreeze_layer_norms``: every nn.LayerNorm weight and bias."""
    return isinstance(owner, nn.LayerNorm)


def bias_params(name: str, param: nn.Parameter, owner: nn.Module) -> bool:
    """VL-Adapter's LoRA rule: every parameter whose name contains 'bias' (Linear and LayerNorm biases)."""
    return "bias" in name.rsplit(".", 1)[-1]
