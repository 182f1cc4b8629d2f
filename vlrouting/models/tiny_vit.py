"""A tiny ViT pre-trained on images only, for the ViT families' CPU demo and tests.

The routing paper's premise (§4.1) is that the vision and the language backbones were pre-trained *apart*: the
ViT on images (ImageNet-21k), the language model on text, and vision-language alignment is learned only in the PEFT
stage. At laptop scale this module plays ImageNet's part: a ``ViTModel`` (random init, :func:`tiny_vit_config`) is
trained to recognise what is in rendered synthetic scenes — multi-label classification of which (colour, shape),
(size, shape) and (size, colour) combinations occur and how many shapes of each kind there are — from its pooler
output (the pre-logits layer that becomes x_R, as in the in21k checkpoints). The scenes come from
:func:`vlrouting.data.synthetic.labelled_scenes` (their own seed namespace: never a benchmark image), rendered on
the fly, read with the framework's ViT preprocessing. No text is involved. The ViT is then saved with
``save_pretrained`` (classification head dropped) and loaded through the real ``from_pretrained`` path.

``python -m vlrouting.models.tiny_vit --out DIR [--steps N --hidden 64 --patch 16]``
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vlrouting.fileio import atomic_write_text

def label_names() -> list[str]:
    """What the warm-up predicts about a scene (multi-label, 47 outputs)."""
    from vlrouting.data.synthetic import COLOURS, SHAPES, SIZES

    names = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    names += [f"{z} {s}" for z in SIZES for s in SHAPES]
    names += [f"{z} {c}" for z in SIZES for c in COLOURS]
    names += [f"{s} >= {k}" for s in SHAPES for k in (1, 2, 3)]
    names += ["shapes >= 2", "shapes >= 3"]
    return names


def scene_labels(scene) -> np.ndarray:
    """The multi-hot target of one scene, in :func:`label_names` order."""
    from vlrouting.data.synthetic import SHAPES

    present = {f"{o.colour} {o.shape}" for o in scene} | {f"{o.size} {o.shape}" for o in scene}
    present |= {f"{o.size} {o.colour}" for o in scene}
    for s in SHAPES:
        count = sum(o.shape == s for o in scene)
        present |= {f"{s} >= {k}" for k in (1, 2, 3) if count >= k}
    present |= {f"shapes >= {k}" for k in (2, 3) if len(scene) >= k}
    return np.asarray([name in present for name in label_names()], dtype=np.float32)


def render_pool(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` labelled scenes rendered once: pixels (n, 3, 224, 224) through the ViT preprocessing, labels (n, 47).
    Rendering costs about as much as a training step of the tiny ViT, so the warm-up draws its batches from a
    fixed pool (epochs over it) instead of rendering every batch."""
    from vlrouting.data.synthetic import labelled_scenes
    from vlrouting.models.vit import load_image

    pixels, labels = [], []
    for jpeg, scene in labelled_scenes(n, seed):
        pixels.append(load_image(io.BytesIO(jpeg)))
        labels.append(torch.from_numpy(scene_labels(scene)))
    return torch.stack(pixels), torch.stack(labels)


def warmup_tiny_vit(out_dir: str | Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, patch: int = 16,
                    steps: int = 300, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, eval_images: int = 256,
                    pool: int = 1024, log=print) -> dict:
    """Train a tiny ViT on labelled scenes and ``save_pretrained`` it to ``out_dir``; returns its held-out scores
    (per-label accuracy and the share of scenes whose 18 colour-shape labels are all right)."""
    from transformers import ViTModel

    from vlrouting.models.vit import tiny_vit_config

    torch.manual_seed(seed)
    vit = ViTModel(tiny_vit_config(hidden_size=hidden, num_layers=layers, num_heads=heads, patch_size=patch),
                   add_pooling_layer=True)
    head = nn.Linear(hidden, len(label_names()))
    params = list(vit.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up over 10 %, then linear decay to 0
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    t0 = time.perf_counter()
    train_x, train_y = render_pool(pool, seed)
    log(f"tiny ViT warm-up: {pool} scenes rendered ({time.perf_counter() - t0:.0f}s)")
    order = torch.Generator().manual_seed(seed)
    vit.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, pool, (batch_size,), generator=order)
        x, y = train_x[idx], train_y[idx]
        loss = nn.functional.binary_cross_entropy_with_logits(head(vit(pixel_values=x).pooler_output), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 5) == 0 or step == steps:
            log(f"tiny ViT warm-up step {step}/{steps}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)")
    vit.eval()
    correct = pairs = n = 0
    held_x, held_y = render_pool(eval_images, seed + 10_000)  # scenes never trained on
    with torch.no_grad():
        for i in range(0, eval_images, batch_size):
            x, y = held_x[i:i + batch_size], held_y[i:i + batch_size]
            pred = (head(vit(pixel_values=x).pooler_output) > 0).float()
            correct += (pred == y).float().sum().item()
            pairs += (pred[:, :18] == y[:, :18]).all(dim=1).float().sum().item()
            n += y.shape[0]
    metrics = {"label_accuracy": round(correct / (n * y.shape[1]), 4), "colour_shape_exact": round(pairs / n, 4),
               "eval_images": n, "pool": pool, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
               "hidden": hidden, "layers": layers, "heads": heads, "patch": patch,
               "seconds": round(time.perf_counter() - t0, 1)}
    out = Path(out_dir)
    vit.save_pretrained(str(out))
    atomic_write_text(out / "warmup.json", json.dumps({"task": "multi-label scene classification (images only)",
                                                        "labels": label_names(), **metrics}, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vlrouting.models.tiny_vit",
                                 description="Pre-train a tiny ViT on rendered scenes (images only) and save it.")
    ap.add_argument("--out", required=True, help="folder for the ViT (save_pretrained)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--patch", type=int, default=16, help="patch size (16: 197 tokens like ViT-B/16)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", type=int, default=1024, help="scenes rendered once and trained on (epochs over them)")
    args = ap.parse_args(argv)
    m = warmup_tiny_vit(args.out, hidden=args.hidden, layers=args.layers, heads=args.heads, patch=args.patch,
                        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                        pool=args.pool)
    print(f"tiny ViT (d {args.hidden}, {args.layers} layers, patch {args.patch}) saved to {args.out}: held-out label "
          f"accuracy {m['label_accuracy']:.3f}, all 18 colour-shape labels right on {m['colour_shape_exact']:.3f} of "
          f"{m['eval_images']} scenes ({m['seconds']}s)")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
