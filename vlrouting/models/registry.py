"""Model families: one registration point per backbone setting (DESIGN §10).

``vlrouting/models/<family>.py`` defines a :class:`~vlrouting.models.base.FamilyConfig` subclass, a
:class:`~vlrouting.models.base.FamilyModel` and a builder, and registers them with :func:`register_family`;
``model.family`` in a config selects it. The registered families are imported by :func:`load_families`, the only
place that lists their modules.

A builder is ``build(model_cfg, peft_cfg, *, pretrained=True, tokenizer=None, device=None) -> FamilyModel``:
``pretrained=True`` loads the backbones with ``from_pretrained`` (hub names or local folders), ``pretrained=False``
builds the packaged architecture without weights (``device="meta"`` counts parameters in milliseconds).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from vlrouting.errors import ConfigError

#: The modules that register a family (imported lazily: each pulls in its backbone's transformers classes).
FAMILY_MODULES: dict[str, str] = {
    "clip_bart": "vlrouting.models.vlbart",
    "vit_roberta": "vlrouting.models.vit_roberta",
    "vit_gpt2": "vlrouting.models.vit_gpt2",
}


@dataclass(frozen=True)
class ModelFamily:
    """A registered family: its config section, builder, tokenizer loader and the task objectives it serves."""

    name: str
    config_cls: type
    build: Callable
    load_tokenizer: Callable
    objectives: tuple[str, ...]
    description: str = ""


FAMILIES: dict[str, ModelFamily] = {}


def register_family(name: str, *, config: type, load_tokenizer: Callable, objectives: tuple[str, ...],
                    description: str = "") -> Callable:
    """Decorator on the family's builder function."""

    def deco(build: Callable) -> Callable:
        if name in FAMILIES:
            raise ValueError(f"model family '{name}' is already registered")
        FAMILIES[name] = ModelFamily(name, config, build, load_tokenizer, tuple(objectives), description)
        return build

    return deco


def get_family(name: str) -> ModelFamily:
    """The registered family ``name`` (its module is imported on first use)."""
    if name not in FAMILIES and name in FAMILY_MODULES:
        importlib.import_module(FAMILY_MODULES[name])
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family '{name}'; valid families: {', '.join(FAMILY_MODULES)}.")
    return FAMILIES[name]


def list_families() -> list[str]:
    return list(FAMILY_MODULES)


def family_config_class(name: str) -> type:
    return get_family(name).config_cls


def build_model(model_cfg, peft_cfg, **kwargs):
    """Build the model of ``model_cfg.family`` (see the module docstring for the keyword arguments)."""
    family = get_family(model_cfg.family)
    model = family.build(model_cfg, peft_cfg, **kwargs)
    model.family = family.name
    return model


def load_tokenizer(model_cfg):
    """The tokenizer of ``model_cfg.family`` (with any tokens the family adds)."""
    return get_family(model_cfg.family).load_tokenizer(model_cfg)
