"""Where the images of each dataset split live, and how one image becomes a network input.

Presets are the image collections of the dataset layout (:mod:`vlrouting.data.layout`), the real layouts
VL-Adapter's data uses (reference/vladapter_spec.md §1.1, §1.7) — which the synthetic benchmark
(``vlrouting.data.synthetic``) reproduces — relative to a datasets root:

| preset | split → image folder (first that exists; VG: all)           | output                            | ids |
|--------|--------------------------------------------------------------|-----------------------------------|-----|
| coco   | train2014 → COCO/images/train2014 (or COCO/train2014); val2014 likewise | COCO/clip_features/<split>.h5 | all images |
| vg     | train → VG/images, VG/VG_100K, VG/VG_100K_2                 | VG/clip_features/train.h5         | img_ids of GQA/train.json + valid.json when present |
| gqa    | testdev → GQA/images                                         | GQA/clip_features/testdev.h5      | img_ids of GQA/testdev.json when present |
| nlvr   | train/dev/test → nlvr/images/<split> (or nlvr/<split>; test also test1), nested folders allowed | nlvr/clip_features/<split>.h5 | all images |

``synthetic`` runs all four. An image's id is its file name up to the first dot (``COCO_train2014_000000458752``,
``2375429``, ``n161313``, ``train-10171-0-img0``), as the annotation files name images.

Preprocessing (VL-Adapter ``coco_CLIP.py``): RGB (16-bit grayscale scaled to 8 bits, see :func:`to_rgb`), resized to
exactly size×size with bicubic interpolation — the aspect ratio is *not* kept — then CLIP mean/std normalisation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vlrouting.data.layout import COLLECTIONS, feature_file, image_id
from vlrouting.errors import ConfigError, DataError
from vlrouting.fileio import is_plain_name

from .model import CLIP_MEAN, CLIP_STD

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class Job:
    """One output file: the images (id → path; None = referenced by annotations but not found) it must hold."""

    name: str
    output: Path
    images: dict[str, Path | None]
    source: str
    image_dirs: list[Path] = field(default_factory=list)


# The presets are the dataset layout's image collections (vlrouting.data.layout: folders, ids, restricting files).
PRESETS = {c.extract_name: c for c in COLLECTIONS.values()}
DATASETS = tuple(PRESETS) + ("synthetic",)


def list_images(dirs: list[Path]) -> dict[str, Path]:
    """id → path of every image under ``dirs`` (recursive, sorted); duplicate ids are an error."""
    out: dict[str, Path] = {}
    for d in dirs:
        for base, subdirs, files in os.walk(d):
            subdirs.sort()
            for name in sorted(files):
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                    path = Path(base) / name
                    key = image_id(path)
                    if key in out:
                        raise DataError(f"image id '{key}' occurs twice ({out[key]} and {path}); remove one copy so "
                                        f"that every id names one image.")
                    out[key] = path
    return dict(sorted(out.items()))


def referenced_ids(annotation: Path) -> list[str]:
    """Image ids an annotation file refers to: ``img_id`` (VQA/GQA), ``img0``/``img1`` (NLVR²), or the Karpathy
    ``images[].filename`` without extension (COCO captions)."""
    try:
        data = json.loads(Path(annotation).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read annotation file {annotation} ({exc}); check the path and that it is JSON.") \
            from exc
    ids: list[str] = []
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        ids = [str(im["filename"]).split(".")[0] for im in data["images"] if "filename" in im]
    elif isinstance(data, list):
        for rec in data:
            if not isinstance(rec, dict):
                continue
            if "img_id" in rec:
                ids.append(str(rec["img_id"]))
            for key in ("img0", "img1"):
                if key in rec:
                    ids.append(str(rec[key]))
    if not ids:
        raise DataError(f"annotation file {annotation} references no images (expected records with img_id, "
                        f"img0/img1, or a Karpathy 'images' list).")
    for i in ids:
        if not is_plain_name(i):
            raise DataError(f"annotation file {annotation} references image id {i!r}, which would point outside its "
                            f"image folder; image ids are file names without folders — fix the file.")
    return list(dict.fromkeys(ids))


def preset_jobs(root: Path, dataset: str, split: str | None = None, all_images: bool = False,
                kind: str = "clip") -> list[Job]:
    """The jobs of a dataset preset under a datasets root (``synthetic``: all four datasets); ``kind`` picks the
    feature folder the outputs go to (``clip``: ``<DS>/clip_features/<split>.h5``)."""
    root = Path(root)
    dataset = dataset.lower()
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset {dataset} is unknown; choose one of {', '.join(DATASETS)}.")
    if dataset == "synthetic":
        if split not in (None, "all"):
            raise ConfigError("--split cannot be combined with --dataset synthetic, which extracts every split.")
        return [job for ds in PRESETS for job in preset_jobs(root, ds, None, all_images, kind)]
    coll = PRESETS[dataset]
    folder, splits, annotations, union = coll.folder, coll.splits, coll.restrict_to, coll.union
    if split not in (None, "all") and split not in splits:
        raise ConfigError(f"--split {split} is not a split of {dataset}; choose one of {', '.join(splits)} or all.")
    jobs = []
    for name, candidates in splits.items():
        if split not in (None, "all") and name != split:
            continue
        dirs = [root / c for c in candidates if (root / c).is_dir()]
        if not union:
            dirs = dirs[:1]
        if not dirs:
            raise DataError(f"no image folder for {dataset} {name}: looked for {', '.join(str(root / c) for c in candidates)}; "
                            f"put the images there or pass --images DIR --output FILE.")
        images: dict[str, Path | None] = dict(list_images(dirs))
        source = ", ".join(str(d) for d in dirs)
        if not images:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {source} for {dataset} {name}; put the "
                            f"images there or pass --root DIR.")
        ann = [root / a for a in annotations if (root / a).is_file()]
        if ann and not all_images:
            wanted = [i for a in ann for i in referenced_ids(a)]
            images = {i: images.get(i) for i in sorted(dict.fromkeys(wanted))}
            source += f" (ids referenced by {', '.join(a.name for a in ann)})"
        jobs.append(Job(f"{folder}/{name}", feature_file(root, folder, name, kind), images, source, dirs))
    return jobs


def folder_job(images_dir: Path, output: Path, annotations: list[Path] | None = None) -> Job:
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"--images {images_dir} is not a folder; pass the folder that holds the images.")
    images: dict[str, Path | None] = dict(list_images([images_dir]))
    source = str(images_dir)
    if not images and not annotations:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in --images {images_dir}; pass the folder that "
                        f"holds them.")
    if annotations:
        wanted = [i for a in annotations for i in referenced_ids(a)]
        images = {i: images.get(i) for i in sorted(dict.fromkeys(wanted))}
        source += f" (ids referenced by {', '.join(Path(a).name for a in annotations)})"
    return Job(Path(output).stem, Path(output), images, source, [images_dir])


#: PIL modes of 16-bit (and 32-bit integer) grayscale images, e.g. 16-bit PNGs.
_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(im):
    """An 8-bit RGB copy of a PIL image of any mode (VL-Adapter: ``convert('RGB')``, which drops alpha).

    16-bit grayscale is *scaled* to 8 bits (``round(v / 257)``, so 65535 → 255) instead of being clipped at 255 as
    ``convert`` does; ``I`` images are read as 16-bit values. A palette image with a transparent colour goes through
    RGBA, as PIL recommends; every other mode (L, LA, 1, P, CMYK, RGBA, YCbCr, …) is PIL's own conversion.
    """
    from PIL import Image

    if im.mode in _WIDE_GRAY:
        wide = np.clip(np.asarray(im, dtype=np.float64), 0, 65535)
        im = Image.fromarray(np.rint(wide / 257.0).astype(np.uint8), mode="L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def load_image(path: Path, size: int = 224) -> torch.Tensor:
    """(3, size, size) float32: RGB (:func:`to_rgb`), bicubic resize to size×size (aspect ratio not kept), CLIP
    normalisation."""
    from PIL import Image

    with Image.open(path) as im:
        im = to_rgb(im)
        if im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32)
    arr = (arr / 255.0 - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class ChunkDataset(torch.utils.data.Dataset):
    """Item i = the decoded images of chunk i: (i, ids, (n, 3, s, s) tensor or None, [(id, path, reason)]).

    ``load(path)`` decodes one image (a module-level function, so that DataLoader workers can receive it); default:
    CLIP's :func:`load_image` at ``size``."""

    def __init__(self, chunks: list[list[tuple[str, Path | None]]], size: int = 224, load=None):
        self.chunks = chunks
        self.size = size
        self.load = load

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int):
        ids, tensors, bad = [], [], []
        for img_id, path in self.chunks[i]:
            if path is None:
                bad.append((img_id, "", "missing: referenced by the annotations but not found in the image folder"))
                continue
            try:
                tensors.append(load_image(path, self.size) if self.load is None else self.load(path))
                ids.append(img_id)
            except Exception as exc:  # noqa: BLE001 - any decoding failure is reported, not fatal here
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())
                bad.append((img_id, str(path), f"unreadable: {reason}"))
        return i, ids, (torch.stack(tensors) if tensors else None), bad


def worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is numpy/PIL work; leave the cores to the model forward
