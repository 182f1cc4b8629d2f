"""The frozen ViT of the paper's §4 families (ViT+RoBERTa VQAv2, ViT+GPT-2 COCO; reference/routing_official_spec.md
§3.1, §5.2).

- Backbone: Hugging Face ``ViTModel`` — ``google/vit-base-patch16-224-in21k`` on users' machines (its pre-logits
  layer is HF's pooler, so the pooler is pretrained), ``google/vit-large-patch16-224-in21k`` for Table B4/B5, a tiny
  config in tests and the CPU demo. Frozen (no gradient), in eval mode.
- Input: images resized to 224×224 with bilinear interpolation (no crop), ×1/255, normalised with mean = std = 0.5
  (``ViTImageProcessor``'s settings for these checkpoints).
- x_R: the pooler output tanh(dense(LN(h_CLS))), shape (B, 1, d), un-normalised — the same vector is the one-token
  visual prefix of the language model (paper §4.1, Fig. 3). No average pooling of ViT tokens anywhere.
- Table 5 (cross-attention ablations) uses all 197 last-hidden-state tokens instead (:func:`vit_tokens`).

Offline extraction (``python -m feature_extraction extract-vit``) stores the pooled vector per image as ``(1, d)``
float16 under ``<DS>/vit_features/<split>.h5`` (feature kind ``vit``) and, optionally, the tokens under
``<DS>/vit_tokens/`` (kind ``vit_tokens``); see :mod:`vlrouting.data.layout`. The online mode reads the images
themselves (feature kind ``images``, :mod:`vlrouting.data.images`) through :func:`load_image`, the same
preprocessing the extractor uses, and runs the frozen ViT inside the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vlrouting.errors import DataError

#: ViTImageProcessor settings of the in21k checkpoints (resize 224 bilinear, rescale 1/255, mean = std = 0.5).
IMAGE_SIZE = 224
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def tiny_vit_config(hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2, image_size: int = IMAGE_SIZE,
                    patch_size: int = 16, **overrides):
    """A small ``ViTConfig`` (random init) with the same token layout as ViT-B/16: 1 + (224/16)² = 197 tokens."""
    from transformers import ViTConfig

    cfg = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
               intermediate_size=4 * hidden_size, image_size=image_size, patch_size=patch_size,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg.update(overrides)
    return ViTConfig(**cfg)


def vit_config(name: str):
    """The ``ViTConfig`` of ``name`` without weights: a local folder's config.json or a packaged architecture
    (``google/vit-base-patch16-224-in21k``, ``google/vit-large-patch16-224-in21k``; :mod:`vlrouting.models.arch`)."""
    from transformers import ViTConfig

    from vlrouting.models.arch import hf_config

    return hf_config(name, ViTConfig)


def vit_width(name: str) -> int:
    """The hidden width d of the ViT ``name`` (x_R and the prefix are (B, 1, d))."""
    from vlrouting.models.arch import arch_dict

    return int(arch_dict(name)["hidden_size"])


def load_vit(name: str, *, pretrained: bool = True, config=None, device: str | torch.device | None = None) -> nn.Module:
    """A frozen ``ViTModel`` with its pooler: ``from_pretrained(name)`` or, with ``pretrained=False``, ``config``
    (default: :func:`vit_config` of ``name``; random init, e.g. on ``meta`` for parameter counts)."""
    from transformers import ViTModel

    if pretrained:
        try:
            vit = ViTModel.from_pretrained(name, add_pooling_layer=True)
        except OSError as exc:
            raise DataError(f"cannot load the ViT '{name}' ({exc.__class__.__name__}); give a local folder saved "
                            "with save_pretrained or a hub name reachable from this machine.") from None
    else:
        if config is None:
            config = vit_config(name)
        with torch.device(device or "cpu"):
            vit = ViTModel(config, add_pooling_layer=True)
    vit.requires_grad_(False)
    return vit.eval()


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float images (B, 3, H, W) → the ViT's input: 224×224 bilinear, normalised (mean = std = 0.5)."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGE_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def load_image(path: str | Path) -> torch.Tensor:
    """One image file → the ViT's input (3, 224, 224) float32: RGB, resized to exactly 224×224 with PIL's bilinear
    filter (``ViTImageProcessor``'s resize, aspect ratio not kept), ×1/255, normalised with mean = std = 0.5.

    Offline extraction and the online mode both read images through this function, so their inputs are identical.
    """
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (IMAGE_SIZE, IMAGE_SIZE):
            im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(IMAGE_MEAN, np.float32)) / np.asarray(IMAGE_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


@torch.no_grad()
def vit_pooled(vit: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """x_R and the visual prefix: the pooler output tanh(dense(LN(h_CLS))), (B, 1, d)."""
    return vit(pixel_values=pixel_values).pooler_output.unsqueeze(1)


@torch.no_grad()
def vit_tokens(vit: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """All last-hidden-state tokens (B, 1 + patches, d) — Table 5's x_R and cross-attention keys/values."""
    return vit(pixel_values=pixel_values).last_hidden_state
