"""The CLIP ResNet visual tower used for grid features (reference/vladapter_spec.md §2.1, DESIGN.md §3).

VL-Adapter's ``coco_CLIP.py`` keeps the output of ResNet ``layer4`` of CLIP RN101 — the (2048, 7, 7) map *before*
CLIP's attention pooling — for 224×224 inputs. We build the same tower through ``open_clip.create_model(name,
pretrained=tag)`` (default ``RN101`` / ``openai``), run ``stem`` + ``layer1..4`` of ``model.visual`` and drop the
attention pool. Any open_clip ResNet config works by name; two tiny configs ship in ``model_configs/`` for tests and
the CPU demo (``layers [1, 1, 1, 1]``): ``RN-tiny`` (width 64 → 2048 channels, like RN101) and ``RN-tiny-w16``
(width 16 → 512 channels).

Random-init towers have BatchNorm running statistics of an untrained net, which makes raw features tiny
(std ~1e-3) and useless for training (reference/demo_learnability.md). :func:`recalibrate_bn` re-estimates them in
one pass over images in train mode with ``momentum=None`` (a cumulative average), which makes them usable.
Even then the pooled tokens of a random tower share a large per-channel offset and channel scales that differ by
10×, and a tiny CLIP-BART spends its first few hundred steps before it reads them at all (measured in the issue-7
note: grounding of colour questions from step ~300-400 raw vs ~100 standardised). :func:`calibrate_standardizer`
therefore measures each channel's mean and std over the pooled tokens of the same images and attaches a
:class:`TokenStandardizer` that :func:`tokens` applies — part of the tiny tower, so the fingerprint covers it.
Pretrained towers (RN101/openai) get neither unless asked, so real features stay exactly VL-Adapter's.
:func:`fingerprint` hashes the final weights and buffers so that files written by different runs can be checked to
come from the same network.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlrouting.errors import ConfigError, DataError

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RANDOM_INIT = ("none", "random", "")

_registered = False


def register_tiny_configs() -> None:
    """Adds ``model_configs/*.json`` (RN-tiny, RN-tiny-w16) to open_clip's model registry (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

        if CONFIG_DIR.is_dir():
            open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def resnet_models() -> list[str]:
    """Names of the open_clip configs whose vision tower is a ModifiedResNet."""
    import open_clip

    register_tiny_configs()
    out = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        if isinstance(cfg.get("vision_cfg", {}).get("layers"), (list, tuple)):
            out.append(name)
    return out


def is_random_init(pretrained: str | None) -> bool:
    return pretrained is None or str(pretrained).lower() in RANDOM_INIT


@contextmanager
def _quiet_open_clip():
    """open_clip logs a root-logger warning for every random-init model (recorded in provenance instead), and a
    failed download logs every retry; the failure reaches the user as one DataError sentence."""
    loggers = [logging.getLogger(), logging.getLogger("huggingface_hub")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def check_model(model: str) -> dict:
    """The open_clip config of ``model``; a ConfigError unless it names a ResNet (ModifiedResNet) tower."""
    import open_clip

    register_tiny_configs()
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise ConfigError(f"--model {model} is not an open_clip model config; ResNet configs: "
                          f"{', '.join(resnet_models())}.")
    if not isinstance(cfg.get("vision_cfg", {}).get("layers"), (list, tuple)):
        raise ConfigError(f"--model {model} has no ResNet vision tower (grid features need layer4); ResNet configs: "
                          f"{', '.join(resnet_models())}.")
    return cfg


def build_visual(model: str = "RN101", pretrained: str | None = "openai", seed: int = 0) -> nn.Module:
    """The ``model.visual`` ModifiedResNet of an open_clip model, in eval mode on CPU.

    ``pretrained``: an open_clip tag (``openai``) or a checkpoint path; ``none`` for random init, seeded by
    ``seed`` without touching the caller's global RNG state.
    """
    import open_clip

    check_model(model)
    try:
        with torch.random.fork_rng(devices=[]), _quiet_open_clip():
            torch.manual_seed(seed)
            clip = open_clip.create_model(model, pretrained=None if is_random_init(pretrained) else pretrained)
    except (RuntimeError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise DataError(f"could not load open_clip weights '{pretrained}' for {model} ({reason}); check the network, "
                        f"the Hugging Face cache or the checkpoint path, or pass --pretrained none for a random-init "
                        f"tower.") from exc
    visual = clip.visual
    del clip
    for attr in ("stem", "layer1", "layer2", "layer3", "layer4"):
        if not hasattr(visual, attr):
            raise ConfigError(f"--model {model}: its visual tower has no '{attr}'; pass an open_clip ResNet config.")
    visual.attnpool = nn.Identity()  # never used: the grid is taken before attention pooling
    return visual.eval().requires_grad_(False)


def grid_features(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Layer4 output (B, C, H/32, W/32) — stem + layer1..4, before attention pooling (VL-Adapter §2.1)."""
    x = visual.stem(x)
    x = visual.layer1(x)
    x = visual.layer2(x)
    x = visual.layer3(x)
    return visual.layer4(x)


def pool_tokens(grid: torch.Tensor, side: int | None) -> torch.Tensor:
    """(B, C, h, w) → (B, side², C) after adaptive max pooling to side×side (None keeps the grid), row-major."""
    if side is not None and tuple(grid.shape[-2:]) != (side, side):
        grid = F.adaptive_max_pool2d(grid, (side, side))
    return grid.flatten(2).transpose(1, 2)


class TokenStandardizer(nn.Module):
    """Per-channel ``(x - mean) / std`` of pooled tokens, with statistics from :func:`calibrate_standardizer`."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens - self.mean.to(tokens.dtype)) / self.std.to(tokens.dtype)


def tokens(visual: nn.Module, x: torch.Tensor, side: int | None) -> torch.Tensor:
    """Images → (B, side², C) float32 tokens: layer4 grid, adaptive max pooling, then the tower's
    :class:`TokenStandardizer` when it has one."""
    out = pool_tokens(grid_features(visual, x).float(), side)
    std = getattr(visual, "token_standardizer", None)
    return std(out) if std is not None else out


@torch.no_grad()
def calibrate_standardizer(visual: nn.Module, batches, side: int | None, device: torch.device | str = "cpu",
                           eps: float = 1e-3) -> int:
    """Measures each channel's mean and std over every pooled token of ``batches`` (eval mode, float64 sums) and
    attaches them as ``visual.token_standardizer``. Returns the number of images seen."""
    visual.token_standardizer = None  # measure the raw tokens
    visual.eval()
    total = sq = None
    count, seen = 0, 0
    for x in batches:
        t = tokens(visual, x.to(device), side).double()
        t = t.reshape(-1, t.shape[-1])
        total = t.sum(0) if total is None else total + t.sum(0)
        sq = (t * t).sum(0) if sq is None else sq + (t * t).sum(0)
        count += t.shape[0]
        seen += x.shape[0]
    if seen == 0:
        del visual.token_standardizer
        return 0
    mean = total / count
    var = (sq / count - mean * mean).clamp_min(0.0)
    module = TokenStandardizer(mean.numel()).to(device)
    module.mean.copy_(mean.float())
    module.std.copy_(var.sqrt().clamp_min(eps).float())
    visual.token_standardizer = module
    return seen


def feature_dim(visual: nn.Module) -> int:
    """Channels of the layer4 grid (2048 for RN50/RN101 and RN-tiny, 512 for RN-tiny-w16)."""
    return int(visual.layer4[-1].bn3.num_features)


@torch.no_grad()
def recalibrate_bn(visual: nn.Module, batches, device: torch.device | str = "cpu") -> int:
    """Re-estimates every BatchNorm's running statistics in one pass (train mode, ``momentum=None``).

    ``batches`` yields normalised image tensors (B, 3, H, W). Returns the number of images seen.
    """
    bns = [m for m in visual.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the pass
    visual.train()
    seen = 0
    try:
        for x in batches:
            grid_features(visual, x.to(device))
            seen += x.shape[0]
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        visual.eval()
    return seen


def fingerprint(visual: nn.Module) -> str:
    """sha256 over the names and bytes of every parameter and buffer (BatchNorm statistics included)."""
    h = hashlib.sha256()
    for name, t in sorted(visual.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
