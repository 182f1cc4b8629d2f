"""Attach PEFT modules with routing to an existing Hugging Face model, and decide what trains.

``attach_peft(model, cfg)`` replaces every target module (from :mod:`vlrouting.peft.targets`) by the method's
wrapper and (re-)initialises the new blocks explicitly — call it *after* ``from_pretrained`` so the backbone's
weights are loaded and the PEFT weights are not left to init hooks that newer transformers skip (DESIGN §9).
"""

from __future__ import annotations

from torch import nn

from vlrouting.errors import ConfigError
from vlrouting.peft.base import RoutedWrapper
from vlrouting.peft.config import PeftConfig
from vlrouting.peft.registry import get_peft_method
from vlrouting.peft.state import RoutingState
from vlrouting.peft.targets import match_side, targets_for
from vlrouting.routing import resolve_routing


def attach_peft(model: nn.Module, cfg: PeftConfig, state: RoutingState | None = None,
                model_type: str | None = None, owner_parent: nn.Module | None = None) -> RoutingState:
    """Wrap the target modules of ``model`` in place; returns the shared :class:`RoutingState`.

    A method with model-level parameters gets one owner, registered as ``peft_owner`` on ``owner_parent`` (the
    family's model; ``model`` itself when not given) and passed to every wrapper; a method registered with
    ``wraps=False`` (prompt tuning) gets its owner only, sized from the matched modules, which stay unwrapped.
    Routing that is configured but reaches no wrapped module (every target on a side outside ``cfg.route_sides``)
    is an error, not a silent no-op.
    """
    method = get_peft_method(cfg.method)
    method.check(cfg)  # also run when the config was built; repeated for configs changed after that
    state = state if state is not None else RoutingState()
    state.x_r_replace = cfg.x_r_replace  # Table B2: applied where x_R enters the state (vlrouting.peft.state)
    model_type = model_type or getattr(getattr(model, "config", None), "model_type", None)
    targets = targets_for(model_type, method.placement, cfg.targets)
    routing_map = resolve_routing(cfg.routing, tuple(cfg.tasks))
    found = [(name, mod, match_side(name, targets)) for name, mod in model.named_modules()]
    found = [(n, m, s) for n, m, s in found if s is not None]
    if not found:
        raise ConfigError(f"no module of this {model_type} model matches the '{cfg.method}' targets.")
    routed = [t for t, r in routing_map.items() if r != "none"]
    if routed and not any(side in cfg.route_sides for _, _, side in found):
        sides = sorted({side for _, _, side in found})
        raise ConfigError(f"peft.routing routes task(s) {', '.join(routed)}, but the {cfg.method} modules of this "
                          f"{model_type} model sit on the {', '.join(sides)} side(s) and peft.route_sides is "
                          f"{list(cfg.route_sides)}; set peft.route_sides to include {sides[0]} (or use routing none).")
    owner = None
    if method.owner is not None:
        owner = method.owner(cfg, found)
        (owner_parent if owner_parent is not None else model).peft_owner = owner
    for name, module, side in found if method.wrapper is not None else ():  # owner-only methods wrap nothing
        wrapper = method.wrapper(module, cfg, side=side, routing_map=routing_map,
                                 route_enabled=side in cfg.route_sides, state=state, owner=owner)
        model.set_submodule(name, wrapper)
    return state


def peft_wrappers(model: nn.Module) -> list[RoutedWrapper]:
    return [m for m in model.modules() if isinstance(m, RoutedWrapper)]


def peft_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The PEFT blocks' own parameters (not the wrapped base layers)."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, RoutedWrapper):
            for pname, p in mod.named_parameters():
                if not pname.startswith("base_layer."):
                    out.append((f"{name}.{pname}", p))
    return out


def mark_trainable(model: nn.Module, method: str | None, always: tuple[str, ...] = ()) -> None:
    """VL-Adapter's trainable sets (reference §3.9).

    ``method=None`` means full fine-tuning (everything trains). Otherwise everything is frozen, then the PEFT
    blocks, the method's extra rule (adapter: every LayerNorm; LoRA: every bias) and any parameter whose name
    contains one of ``always`` (e.g. ``visual_embedding``) are unfrozen.
    """
    if method is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return
    rule = get_peft_method(method).also_trainable
    for p in model.parameters():
        p.requires_grad_(False)
    for _, p in peft_parameters(model):
        p.requires_grad_(True)
    for module in model.modules():  # model-level parameters of the method (see vlrouting.peft.registry)
        owner = getattr(module, "peft_owner", None)
        if isinstance(owner, nn.Module):
            owner.requires_grad_(True)
    owners = dict(model.named_modules())
    for name, p in model.named_parameters():
        owner = owners[name.rsplit(".", 1)[0]] if "." in name else model
        if rule(name, p, owner) or any(key in name for key in always):
            p.requires_grad_(True)


def count_parameters(model: nn.Module) -> dict:
    """Trainable and total parameters, shared tensors counted once; percent = trainable / total (VL-Adapter)."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}


def format_parameter_report(counts: dict) -> str:
    return f"trainable: {counts['trainable']:,} | total: {counts['total']:,} | trainable%: {counts['percent']:.2f}"
