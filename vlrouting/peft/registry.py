"""One registration point per PEFT method (HF PEFT's ``tuners/<method>/`` idea).

A method is a wrapper class plus the VL-Adapter rule for which *backbone* parameters it also trains
(reference §3.9): adapters train every LayerNorm, LoRA trains every bias. Register with
``@register_peft_method("name", also_trainable=rule)`` in the method's own file.
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


PEFT_METHODS: dict[str, PeftMethod] = {}


def register_peft_method(name: str, also_trainable: TrainableRule):
    def deco(cls):
        PEFT_METHODS[name] = PeftMethod(name, cls, also_trainable)
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
