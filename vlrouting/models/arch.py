"""Architecture hyperparameters without weights: the packaged ``configs/arch/*.json`` or a local ``config.json``.

``python -m vlrouting params`` and the families' ``data_spec()`` need a backbone's sizes (hidden width, layers,
positions) on machines that have neither the weights nor network access. A name resolves, in this order, to

1. a folder saved with ``save_pretrained`` (its ``config.json``),
2. a path to a ``.json`` file,
3. the packaged ``vlrouting/configs/arch/<last path component>.json`` — ``roberta-base``, ``roberta-large``,
   ``google/vit-base-patch16-224-in21k``, ``google/vit-large-patch16-224-in21k``, ``bart-base``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from vlrouting.errors import ConfigError


def packaged_arch_names() -> list[str]:
    root = resources.files("vlrouting.configs").joinpath("arch")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


@lru_cache(maxsize=64)
def _read(name: str) -> tuple[tuple[str, object], ...]:
    path = Path(name).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path} is not a valid config.json ({exc}); re-save the model with save_pretrained.") \
                from None
    else:
        res = resources.files("vlrouting.configs").joinpath(f"arch/{name.rstrip('/').split('/')[-1]}.json")
        if not res.is_file():
            raise ConfigError(f"no architecture config for '{name}': it is neither a local folder with config.json "
                              f"nor a packaged one ({', '.join(packaged_arch_names())}); pass a local folder or set "
                              "the model's arch option.")
        data = json.loads(res.read_text())
    data.pop("_comment", None)
    return tuple(sorted(data.items()))


def arch_dict(name: str) -> dict:
    """The hyperparameters of ``name`` (see the module docstring) as a plain dict, ``model_type`` included."""
    return dict(_read(str(name)))


def hf_config(name: str, config_cls):
    """A transformers config object of class ``config_cls`` built from :func:`arch_dict`."""
    data = arch_dict(name)
    data.pop("model_type", None)
    for key in ("architectures", "transformers_version", "torch_dtype", "dtype"):
        data.pop(key, None)
    return config_cls(**data)
