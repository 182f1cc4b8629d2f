#!/usr/bin/env python
"""A four-task training set in VL-Adapter's annotation formats with random float16 features in our layouts.

For benchmarks and smoke runs that must not extract features (no images, no CLIP): only the ``train`` split of each
task is written, sized by the number of examples, with image ids drawn so that questions hit images at random (VQA's
access pattern)::

    datasets/vqa/karpathy_train.json            n_vqa questions over n_coco COCO train2014 images
    datasets/GQA/train.json, GQA/valid.json     n_gqa questions (split 80/20) over n_vg VG images
    datasets/nlvr/train.json                    n_nlvr statements over pairs of nlvr train images
    datasets/COCO/dataset_coco.json             n_caption images × 5 captions (Karpathy split "train")
    datasets/{COCO,VG,nlvr}/clip_features/*.h5  (tokens × feat_dim) float16 per image, per-image or contiguous

The texts follow the lengths of the real ones (VQA/GQA questions of 5-10 words, NLVR² statements of 10-16 words,
captions of 9-12 words). Features are written with the extractor's writer (``feature_extraction.h5writer``), so the
files are exactly what extraction leaves.

    python scripts/bench/bench_data.py --root /tmp/bench_datasets --scale 1 --layout contiguous
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WORDS = ("red green blue yellow purple orange circle square triangle small large left right above below next "
         "to the a of is are there how many what color shape on in image picture two three one").split()
ANSWERS = ("yes no one two three red green blue yellow circle square triangle left right").split()


def _sentence(rng: random.Random, lo: int, hi: int, end: str) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + end


def sizes_for(batch_sizes: dict[str, int], batches: int, images: int | None = None) -> dict[str, int]:
    """Example counts giving every task ``batches`` batches of its batch size, and image counts (default: one image
    per 1.5 questions, at least 64)."""
    n = {
        "n_vqa": batch_sizes["vqa"] * batches,
        "n_gqa": batch_sizes["gqa"] * batches,
        "n_nlvr": batch_sizes["nlvr"] * batches,
        "n_caption": -(-batch_sizes["caption"] * batches // 5),
    }
    n["n_coco"] = images or max(64, int(n["n_vqa"] / 1.5), n["n_caption"])
    n["n_vg"] = images or max(64, int(n["n_gqa"] / 1.5))
    return n


def write_annotations(root: Path, *, n_vqa: int, n_gqa: int, n_nlvr: int, n_caption: int, n_coco: int,
                      n_vg: int, seed: int = 0) -> dict[str, list[str]]:
    """Writes the train annotation files; returns the image ids each feature collection must hold."""
    rng = random.Random(seed)
    if n_caption > n_coco:
        raise ValueError(f"n_caption={n_caption} exceeds n_coco={n_coco}: captioned images are COCO images")
    coco = [f"COCO_train2014_{i:012d}" for i in range(1, n_coco + 1)]
    vg = [str(1000 + i) for i in range(n_vg)]
    n_pairs = max(1, n_nlvr // 4)  # four statements per pair, as NLVR²'s sets repeat sentences over pairs
    nlvr_ids = [(f"train-{p // 3}-{p % 3}-img0", f"train-{p // 3}-{p % 3}-img1") for p in range(n_pairs)]

    def dump(rel: str, obj) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    dump("vqa/karpathy_train.json", [
        {"img_id": rng.choice(coco), "sent": _sentence(rng, 5, 10, "?"), "question_id": 10_000_000 + i,
         "answer_type": "other", "question_type": "what",
         "label": {rng.choice(ANSWERS): 1.0, rng.choice(ANSWERS): 0.3}} for i in range(n_vqa)])
    gqa = [{"img_id": rng.choice(vg), "sent": _sentence(rng, 5, 10, "?"), "question_id": f"{i:08d}",
            "label": {rng.choice(ANSWERS): 1.0}} for i in range(n_gqa)]
    cut = int(0.8 * len(gqa))
    dump("GQA/train.json", gqa[:cut])
    dump("GQA/valid.json", gqa[cut:])
    records = []
    for i in range(n_nlvr):
        img0, img1 = nlvr_ids[i % n_pairs]
        records.append({"identifier": f"{img0[:-5]}-{i // n_pairs}", "img0": img0, "img1": img1,
                        "label": rng.randint(0, 1), "sent": _sentence(rng, 10, 16, "."), "uid": f"nlvr2_train_{i}"})
    dump("nlvr/train.json", records)
    images = [{"filepath": "train2014", "filename": f"{img}.jpg", "imgid": k, "split": "train", "cocoid": k + 1,
               "sentences": [{"raw": _sentence(rng, 9, 12, "."), "imgid": k, "sentid": 5 * k + j} for j in range(5)]}
              for k, img in enumerate(coco[:n_caption])]
    dump("COCO/dataset_coco.json", {"images": images, "dataset": "coco"})
    return {"COCO": coco, "VG": vg, "nlvr": [i for pair in nlvr_ids for i in pair]}


def write_features(root: Path, ids: dict[str, list[str]], *, tokens: int = 36, feat_dim: int = 2048,
                   layout: str = "contiguous", seed: int = 0) -> float:
    """Random (tokens, feat_dim) float16 blocks for every id, one file per collection split; returns MB written."""
    from feature_extraction.h5writer import H5Writer
    from vlrouting.data.layout import feature_file

    split_of = {"COCO": "train2014", "VG": "train", "nlvr": "train"}
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((64, tokens, feat_dim), dtype=np.float32).astype(np.float16)
    total = 0
    for collection, names in ids.items():
        out = feature_file(root, collection, split_of[collection])
        attrs = {"model": "random", "pretrained": "none", "n_tokens": tokens, "dtype": "float16"}
        writer = H5Writer(out, None, attrs, layout=layout)
        try:
            for start in range(0, len(names), 256):
                chunk = names[start:start + 256]
                writer.put([(img_id, pool[(start + k) % 64] + np.float16((start + k) % 7))
                            for k, img_id in enumerate(chunk)])
            writer.finish(attrs)
        except BaseException:
            writer.abort()
            raise
        total += out.stat().st_size
    return total / 2 ** 20


def write_dataset(root, *, layout: str = "contiguous", tokens: int = 36, feat_dim: int = 2048, seed: int = 0,
                  **sizes) -> dict:
    """Annotations and features under ``root`` (see the module docstring); returns the sizes and the MB written."""
    root = Path(root)
    t = time.perf_counter()
    ids = write_annotations(root, seed=seed, **sizes)
    mb = write_features(root, ids, tokens=tokens, feat_dim=feat_dim, layout=layout, seed=seed)
    return {**sizes, "images": sum(len(v) for v in ids.values()), "feature_mb": round(mb, 1), "layout": layout,
            "seconds": round(time.perf_counter() - t, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="datasets root to write (a new or empty folder)")
    p.add_argument("--base-batch-size", type=int, default=500, help="batch sizes follow the tasks' ratios of it")
    p.add_argument("--batches", type=int, default=4, help="batches per task")
    p.add_argument("--images", type=int, help="images per collection (default: from the question counts)")
    p.add_argument("--layout", choices=("contiguous", "per-image"), default="contiguous")
    p.add_argument("--feat-dim", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from vlrouting.data.tasks import build_tasks

    root = Path(args.root)
    if root.exists() and any(root.iterdir()):
        print(f"error: {root} is not empty; pass a new folder.", file=sys.stderr)
        return 2
    sizes = sizes_for({n: t.batch_size(args.base_batch_size) for n, t in build_tasks().items()}, args.batches,
                      args.images)
    print(json.dumps(write_dataset(root, layout=args.layout, feat_dim=args.feat_dim, seed=args.seed, **sizes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
