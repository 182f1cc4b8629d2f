"""Save and load the trained tensors as ``adapter_model.safetensors`` + ``adapter_config.json`` (DESIGN §7).

Only parameters with ``requires_grad`` are stored (PEFT blocks plus whatever the method also trains); a single
shared module is one set of tensors and is stored once. Loading is strict: the file's keys must equal the
model's trainable parameter names, and an error names the missing and unexpected keys. Writes are atomic.

``peft_init.safetensors`` (:func:`save_peft_init`) holds the same tensors at step 0 of a fresh run, plus, in its
metadata, the (down, up) matrix pairs every PEFT wrapper names (:meth:`~vlrouting.peft.base.RoutedWrapper.delta_pairs`)
under their full parameter names, so ``python -m vlrouting analyze deltas`` reads ΔW = W_t − W_0 per position from
the two files alone (paper Fig. B2).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vlrouting.errors import DataError
from vlrouting.fileio import atomic_path, atomic_write_bytes

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
INIT_NAME = "peft_init.safetensors"
DELTA_PAIRS_KEY = "delta_pairs"  # metadata key of INIT_NAME: JSON list of the model's (down, up) pairs


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` as safetensors atomically (:func:`vlrouting.fileio.atomic_path`: temporary file in the same
    folder, fsync, rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "library": "vlrouting", **(metadata or {})})
    return path


def save_peft(model: nn.Module, out_dir: str | Path, config: dict) -> Path:
    out_dir = Path(out_dir)
    path = save_tensors(out_dir / WEIGHTS_NAME, trainable_state_dict(model))
    atomic_write_bytes(out_dir / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True).encode())
    return path


def delta_pairs(model: nn.Module) -> list[dict]:
    """Every wrapper's (down, up) pairs with full parameter names: ``{position, block, down, up, groups}``."""
    from vlrouting.peft.base import RoutedWrapper

    out = []
    for name, module in model.named_modules():
        if isinstance(module, RoutedWrapper):
            for pair in module.delta_pairs():
                out.append({"position": name, "block": pair.block, "down": f"{name}.{pair.down}",
                            "up": f"{name}.{pair.up}", "groups": list(pair.groups)})
    return out


def save_peft_init(model: nn.Module, out_dir: str | Path) -> Path | None:
    """Write ``peft_init.safetensors``: the trainable tensors now (call it before the first step of a fresh run)
    and the wrappers' (down, up) pairs in the metadata. A model without PEFT modules (full fine-tuning) gets none."""
    from vlrouting.peft.attach import peft_wrappers

    if not peft_wrappers(model) and not any(getattr(m, "peft_owner", None) is not None for m in model.modules()):
        return None
    tensors = trainable_state_dict(model)
    pairs = [p for p in delta_pairs(model) if p["down"] in tensors and p["up"] in tensors]
    return save_tensors(Path(out_dir) / INIT_NAME, tensors, {DELTA_PAIRS_KEY: json.dumps(pairs)})


def load_peft(model: nn.Module, in_dir: str | Path, strict: bool = True) -> dict:
    """Load saved trainable tensors into ``model`` (in place); returns the saved adapter_config."""
    in_dir = Path(in_dir)
    path = in_dir / WEIGHTS_NAME
    if not path.is_file():
        raise DataError(f"no PEFT weights at {path}; point to a run directory that contains {WEIGHTS_NAME}.")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:  # a truncated or foreign file
        raise DataError(f"{path} is not a readable safetensors file ({' '.join(str(exc).split())}); it may be "
                        f"truncated — save it again from its run or point to another run directory.") from None
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - set(params)) if not strict else sorted(set(tensors) - expected)
    if strict and (missing or unexpected):
        raise DataError(
            f"{path} does not match this model: missing keys {missing[:8]}{' …' if len(missing) > 8 else ''} "
            f"({len(missing)}), unexpected keys {unexpected[:8]}{' …' if len(unexpected) > 8 else ''} "
            f"({len(unexpected)}); was it saved from a model with the same PEFT config?"
        )
    for name, t in tensors.items():  # check every shape before copying anything: no half-loaded model
        if name in params and params[name].shape != t.shape:
            raise DataError(f"{path}: tensor '{name}' has shape {tuple(t.shape)}, the model expects "
                            f"{tuple(params[name].shape)}.")
    with torch.no_grad():
        for name, t in tensors.items():
            if name in params:
                params[name].copy_(t)
    cfg_path = in_dir / CONFIG_NAME
    return json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
