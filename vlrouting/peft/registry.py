"""One registration point per PEFT method (HF PEFT's ``tuners/<method>/`` idea).

A method is a wrapper class plus the VL-Adapter rule for which *backbone* parameters it also trains
(reference §3.9): adapters train every LayerNorm, LoRA trains every bias. Register with
``@register_peft_method("name", also_trainable=rule)`` in the method's own file.

A method may also own **model-level parameters** shared across layers (PETAL's mode factors, Compacter's shared
matrices, a Hyperformer hypernetwork): pass ``owner=OwnerClass``. :func:`vlrouting.peft.attach_peft` builds one
owner per model, ``OwnerClass(cfg, targets)`` with ``targets`` the ``(name, module, side)`` list of every module
about to be wrapped, registers it as the model's ``peft_owner`` submodule (saved and trained with the PEFT blocks)
and hands it to every wrapper as ``owner=``. An owner may define ``aux_losses() -> {name: scalar tensor}``: the
model returns them in its output and the trainer adds and logs each one (e.g. an information-bottleneck loss), and
``encoder_prefix(task, batch_size) -> (embeds (B, P, d), mask (B, P))``: embeddings a model family prepends to its
encoder input (prompt tuning; see ``vlrouting.models.vlbart``).

A method that wraps no module at all (prompt tuning) registers its owner class with ``wraps=False``; its placement
still names the modules the owner is sized from (they are matched, never wrapped), and a routing request is a
ConfigError (there is no bottleneck to route in). A registered class may define a classmethod
``check_config(cfg)`` raising :class:`ConfigError` for settings the method cannot honour; it runs when the
:class:`~vlrouting.peft.PeftConfig` is built, so a bad combination fails before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from vlrouting.errors import ConfigError

TrainableRule = Callable[[str, nn.Parameter, nn.Module], bool]


@dataclass(frozen=True)
class PeftMethod:
    name: str
    wrapper: type | None  # None: the method wraps no module (its owner is the whole method)
    also_trainable: TrainableRule
    owner: type | None = None
    placement: str = ""  # the target-table entry it wraps (vlrouting.peft.targets): "adapter", "lora", ...

    def check(self, cfg: Any) -> None:
        """Raise a ConfigError for settings this method cannot honour (see the module docstring)."""
        if self.wrapper is None and _routes(cfg.routing):
            raise ConfigError(f"peft.routing={cfg.routing!r} asks for a routing function, but the '{self.name}' "
                              "method wraps no module, so there is no bottleneck for it to act in; use "
                              "peft.routing=none.")
        for cls in (self.wrapper, self.owner):
            check = getattr(cls, "check_config", None)
            if check is not None:
                check(cfg)


def _routes(spec: Any) -> bool:
    """Whether a routing spec (name, mix or {task: name}) routes any task."""
    if isinstance(spec, dict):
        return any(v != "none" for v in spec.values())
    return spec != "none"


PEFT_METHODS: dict[str, PeftMethod] = {}


def register_peft_method(name: str, also_trainable: TrainableRule, owner: type | None = None,
                         placement: str | None = None, wraps: bool = True):
    """Register a wrapper class; ``placement`` names the per-architecture target list it wraps (default: ``name``;
    e.g. a Compacter wraps the adapter positions: ``placement="adapter"``). With ``wraps=False`` the decorated
    class is the method's owner and no module is wrapped."""

    def deco(cls):
        if name in PEFT_METHODS:
            raise ValueError(f"PEFT method '{name}' is already registered")
        if wraps:
            PEFT_METHODS[name] = PeftMethod(name, cls, also_trainable, owner, placement or name)
        else:
            PEFT_METHODS[name] = PeftMethod(name, None, also_trainable, owner or cls, placement or name)
        return cls

    return deco


def get_peft_method(name: str) -> PeftMethod:
    if name not in PEFT_METHODS:
        raise ConfigError(f"unknown PEFT method '{name}'; valid methods: {', '.join(PEFT_METHODS)}.")
    return PEFT_METHODS[name]


def layer_norm_params(name: str, param: nn.Parameter, owner: nn.Module) -> bool:
    """``--unfreeze_layer_norms``: every nn.LayerNorm weight and bias."""
    return isinstance(owner, nn.LayerNorm)


def no_backbone_params(name: str, param: nn.Parameter, owner: nn.Module) -> bool:
    """VL-Adapter's prompt-tuning rule: only the prompt modules (and the always-trained visual embedding) train."""
    return False


def bias_params(name: str, param: nn.Parameter, owner: nn.Module) -> bool:
    """VL-Adapter's LoRA rule: every parameter whose name contains 'bias' (Linear and LayerNorm biases)."""
    return "bias" in name.rsplit(".", 1)[-1]
