"""Experiment configuration: typed dataclasses, YAML files, ``key=value`` overrides, resolved config saved per run.

A config file has the sections ``model``, ``peft`` (``null`` = full fine-tuning), ``data``, ``train`` and ``output``
plus ``name`` and ``paper_row``. ``model.family`` (default ``clip_bart``) selects a registered model family
(:mod:`vlrouting.models.registry`), whose typed config class defines the other ``model`` keys. It may ``inherit`` another config (packaged name or path); later values win.
Packaged configs live in ``vlrouting/configs/*.yaml`` and are addressed by file stem, e.g.
``multitask_adapter_comb3``. Overrides use dotted keys: ``train.lr=3e-4 peft.routing=comb1 data.root=/data``.
A key that does not exist is an error naming it and the valid keys of its section.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vlrouting.data.tasks.sets import default_tasks
from vlrouting.config_checks import check_config
from vlrouting.errors import ConfigError
from vlrouting.models.base import FamilyConfig
from vlrouting.models.registry import family_config_class
from vlrouting.peft import PeftConfig

DEFAULT_FAMILY = "clip_bart"


@dataclass
class DataConfig:
    root: str = "datasets"
    tasks: list[str] = field(default_factory=default_tasks)
    use_task_prompts: bool = True
    gqa_prompt_typo: bool = False  # VL-Adapter's GQA prompt was "gpa: "; true reproduces it exactly
    num_workers: int = 4  # DataLoader worker processes per task
    persistent_workers: bool = True  # workers live across epochs (the epoch travels with each batch's indices)
    prefetch_factor: int = 2  # batches each worker reads ahead
    buffers_per_worker: int | None = None  # recycled shared feature buffers per worker; None = prefetch_factor + 2,
    #                                        0 = a fresh shared buffer per batch (vlrouting.data.shm)
    pin_memory: bool = True  # on CUDA: batches are copied to page-locked memory in a background thread
    # per-task batch ratio overrides, e.g. {nlvr: 1.0}: per-task batch = int(train.batch_size · ratio); unset tasks
    # keep VL-Adapter's 1 / 100:60 / 20:60 / 50:60 (reference §5.2)
    batch_ratios: dict[str, float] = field(default_factory=dict)
    limit_train: int | None = None
    limit_eval: int | None = None

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be 0 or more, got {self.num_workers}.")
        if self.prefetch_factor < 1:
            raise ConfigError(f"data.prefetch_factor must be 1 or more, got {self.prefetch_factor}.")
        if self.buffers_per_worker is not None and self.buffers_per_worker < 0:
            raise ConfigError(f"data.buffers_per_worker must be 0 or more (or null for prefetch_factor + 2), got "
                              f"{self.buffers_per_worker}.")


@dataclass
class TrainConfig:
    lr: float = 1e-3
    batch_size: int = 500  # base size; per-task sizes are the VL-Adapter ratios 500/833/166/416
    eval_batch_size: int | None = None
    epochs: int = 20
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None  # linear warm-up over this many steps; overrides warmup_ratio when set
    clip_grad_norm: float = 5.0  # max gradient norm; 0 disables clipping
    weight_decay: float = 0.01
    adam_eps: float = 1e-6
    seed: int = 9595
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    eval_every: int = 1  # epochs; 0 disables per-epoch validation
    test_after: bool = True
    checkpoint_every: int = 0  # steps; 0 = at the end of each epoch only
    max_steps: int | None = None  # stop early (tests, smoke runs)
    num_beams: int = 5
    caption_max_length: int = 40
    vqa_eval_version: str = "2017"  # official vqaEval.py revision: 2017 (VL-Adapter, the paper) or 2021
    log_every: int = 10
    tensorboard: bool = False
    deterministic: bool = False
    allow_tf32: bool = True  # float32 matmuls may use TF32 tensor cores on NVIDIA GPUs (vlrouting.train.accel)
    compile: bool = False  # torch.compile the training forward
    compile_backend: str = "inductor"
    compile_dynamic: bool | None = None  # None: let torch.compile decide; true: dynamic shapes from the start

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision must be fp32, bf16 or fp16, got '{self.precision}'.")


@dataclass
class OutputConfig:
    snap_dir: str = "snap"
    experiment: str | None = None  # defaults to the config name
    run: str | None = None  # defaults to seed<seed>


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    paper_row: str | None = None
    model: FamilyConfig = field(default_factory=lambda: family_config_class(DEFAULT_FAMILY)())
    peft: PeftConfig | None = field(default_factory=PeftConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def run_dir(self) -> Path:
        exp = self.output.experiment or self.name
        run = self.output.run or f"seed{self.train.seed}"
        return Path(self.output.snap_dir) / exp / run


SECTIONS = {"model": FamilyConfig, "peft": PeftConfig, "data": DataConfig, "train": TrainConfig,
            "output": OutputConfig}


def section_class(section: str, tree: dict) -> type:
    """The dataclass of a config section; ``model``'s depends on the tree's ``model.family``."""
    if section == "model":
        family = (tree.get("model") or {}).get("family") or DEFAULT_FAMILY
        return family_config_class(str(family))
    return SECTIONS[section]
TOP_KEYS = {"name", "paper_row", "inherit", *SECTIONS}


def packaged_configs() -> list[str]:
    root = resources.files("vlrouting.configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(ref: str) -> tuple[dict, str]:
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {ref} does not exist; give a YAML path or a packaged config name "
                              f"({', '.join(packaged_configs()[:6])}, …).")
        text, where = path.read_text(), str(path)
    else:
        res = resources.files("vlrouting.configs").joinpath(f"{ref}.yaml")
        if not res.is_file():
            raise ConfigError(f"unknown config '{ref}'; give a YAML path or a packaged config name "
                              f"(python -m vlrouting params --list shows them).")
        text, where = res.read_text(), f"packaged:{ref}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping with sections model/peft/data/train/output.")
    return data, where


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "routing":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_tree(ref: str, depth: int = 0) -> dict:
    if depth > 8:
        raise ConfigError(f"config inheritance is too deep at '{ref}' (a cycle?).")
    data, where = _read_yaml(ref)
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {unknown}; valid keys: {sorted(TOP_KEYS)}.")
    parent = data.pop("inherit", None)
    if parent:
        return _merge(_load_tree(parent, depth + 1), data)
    return data


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    tree = copy.deepcopy(tree)
    # model.family decides which keys the model section has: apply it before the other overrides
    overrides = sorted(overrides, key=lambda item: not item.strip().startswith("model.family="))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. train.lr=3e-4).")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        value = _parse_value(raw)
        if parts[0] not in TOP_KEYS - {"inherit"}:
            raise ConfigError(f"unknown config key '{key}'; sections are {sorted(SECTIONS)} plus name, paper_row.")
        if len(parts) == 1:
            tree[parts[0]] = value
            continue
        section = parts[0]
        if section == "peft" and tree.get("peft") is None:
            tree["peft"] = {}
        node = tree.setdefault(section, {})
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
        valid = {f.name for f in fields(section_class(section, tree))}
        if parts[1] not in valid:
            raise ConfigError(f"unknown config key '{key}'; valid keys in '{section}': {', '.join(sorted(valid))}.")
        node[parts[-1]] = value
    return tree


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert YAML/override values to the field's type (YAML reads ``1e-3`` as a string, for instance)."""
    import types
    import typing

    if value is None:
        return None
    if is_dataclass(hint) and isinstance(value, dict):  # a typed sub-section, e.g. peft.dma
        return _section(hint, value, where)
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in [a for a in args if a is not type(None)]:
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where} must be true or false, got {value!r}.")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}.")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}.") from None
        if hint is int:
            if number != int(number):
                raise ConfigError(f"{where} must be a whole number, got {value!r}.")
            return int(number)
        return number
    if hint is str and not isinstance(value, str):
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a string, got {value!r}.")
        return str(value)
    return value


def _section(cls, data: dict | None, name: str):
    import typing

    data = dict(data or {})
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in section '{name}'; valid keys: {', '.join(sorted(valid))}.")
    hints = typing.get_type_hints(cls)
    for key in list(data):
        data[key] = _coerce(data[key], hints.get(key), f"{name}.{key}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"section '{name}': {exc}.") from None


def build_config(tree: dict) -> ExperimentConfig:
    peft_tree = tree.get("peft", {})
    cfg = ExperimentConfig(
        name=tree.get("name", "experiment"),
        paper_row=tree.get("paper_row"),
        model=_section(section_class("model", tree), tree.get("model"), "model"),
        peft=None if peft_tree is None else _section(PeftConfig, peft_tree, "peft"),
        data=_section(DataConfig, tree.get("data"), "data"),
        train=_section(TrainConfig, tree.get("train"), "train"),
        output=_section(OutputConfig, tree.get("output"), "output"),
    )
    check_config(cfg)
    if cfg.peft is not None:
        cfg.peft.tasks = list(cfg.data.tasks)
        from vlrouting.routing import resolve_routing

        resolve_routing(cfg.peft.routing, tuple(cfg.peft.tasks))
        if "route_sides" not in (peft_tree or {}):
            cfg.peft.route_sides = cfg.model.route_sides()
    from vlrouting.data.tasks import get_task
    from vlrouting.models.registry import get_family

    family = get_family(cfg.model.family)
    for task in cfg.data.tasks:
        objective = get_task(task).objective
        if objective not in family.objectives:
            raise ConfigError(f"task '{task}' needs the {objective} objective, which model family "
                              f"'{family.name}' does not serve ({', '.join(family.objectives)}); choose tasks of "
                              f"that family or another model.family.")
    return cfg


def load_config(ref: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a packaged or file config, apply ``key=value`` overrides, validate, return the typed config."""
    return build_config(apply_overrides(_load_tree(ref), overrides or []))


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def is_config(obj) -> bool:
    return is_dataclass(obj)
