"""The dataset layout under one ``datasets/`` root: every folder and file name the framework reads or writes, once.

VL-Adapter's layout (reference/vladapter_spec.md §1.1-§1.7, DESIGN §6) plus our feature folders. Everything that
needs a path asks this module: the tasks (annotation files per split and the image collection each split reads),
the feature reader (``<root>/<collection>/<feature kind>/``), feature extraction and
``scripts/extract_features.sh`` (image folders per split, the annotation files that restrict which ids to extract,
the output file per split) and the synthetic generator (where it writes images and annotations).

Image collections (an image id is the file name up to the first dot, as the annotation files name images):

==========  ============  =====================================================================================
collection  extract name  image folders per feature split (first existing candidate; ``VG``: all of them)
==========  ============  =====================================================================================
COCO        coco          train2014 → COCO/images/train2014 | COCO/train2014; val2014 → COCO/images/val2014 | COCO/val2014
VG          vg            train → VG/images + VG/VG_100K + VG/VG_100K_2 (ids of GQA/{train,valid}.json)
GQA         gqa           testdev → GQA/images (ids of GQA/testdev.json)
nlvr        nlvr          train/dev/test → nlvr/images/<split> | nlvr/<split> (test also test1), nested folders allowed
==========  ============  =====================================================================================

Feature kinds (one folder per kind inside a collection, one HDF5 file per feature split):

- ``clip``: ``clip_features`` — CLIP RN101 grid tokens pooled 7×7 → 6×6 (36 × 2048), CLIP-BART (DESIGN §3);
- ``vit``: ``vit_features`` — the frozen ViT's pooler output, (1, 768), the paper's §4 families (x_R and prefix);
- ``vit_tokens``: ``vit_tokens`` — all 197 ViT last-hidden-state tokens (Table 5's cross-attention ablations).

A model with its vision encoder inside (the ViT families' online mode) reads feature kind ``images`` instead:
the collection's image files, looked up by image id in its image folders (:mod:`vlrouting.data.images`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlrouting.errors import ConfigError


@dataclass(frozen=True)
class ImageCollection:
    """One image collection: where its images are per feature split and which annotations restrict its ids."""

    folder: str  # the collection's folder under the datasets root (also the feature-store name)
    extract_name: str  # the name scripts/extract_features.sh and ``--dataset`` use
    splits: dict[str, tuple[str, ...]]  # feature split → candidate image folders (relative to the root)
    restrict_to: tuple[str, ...] = ()  # annotation files whose image ids are the ones to extract
    union: bool = False  # read every existing candidate folder (VG's images come in several folders)


@dataclass(frozen=True)
class AnnotationSource:
    """One annotation file of a task split and the image collection its ``img_id``s name."""

    annotation: str
    collection: str

    @property
    def features(self) -> str:
        """The feature store this source's image ids are looked up in (the collection's folder name)."""
        return self.collection


COLLECTIONS: dict[str, ImageCollection] = {c.folder: c for c in (
    ImageCollection("COCO", "coco", {"train2014": ("COCO/images/train2014", "COCO/train2014"),
                                     "val2014": ("COCO/images/val2014", "COCO/val2014")}),
    ImageCollection("VG", "vg", {"train": ("VG/images", "VG/VG_100K", "VG/VG_100K_2")},
                    restrict_to=("GQA/train.json", "GQA/valid.json"), union=True),
    ImageCollection("GQA", "gqa", {"testdev": ("GQA/images",)}, restrict_to=("GQA/testdev.json",)),
    ImageCollection("nlvr", "nlvr", {"train": ("nlvr/images/train", "nlvr/train"),
                                     "dev": ("nlvr/images/dev", "nlvr/dev"),
                                     "test": ("nlvr/images/test", "nlvr/images/test1", "nlvr/test", "nlvr/test1")}),
)}

#: feature kind → folder inside a collection.
FEATURE_FOLDERS: dict[str, str] = {"clip": "clip_features", "vit": "vit_features", "vit_tokens": "vit_tokens"}
#: The "feature kind" of a model that reads the images themselves (its frozen vision encoder runs online): the
#: reader then looks in the collection's image folders (:attr:`ImageCollection.splits`), not in a feature folder.
IMAGE_KIND = "images"

#: The VL-Adapter annotation files, per benchmark and split (DESIGN §6; reference §1.2). Several tasks may read the
#: same benchmark (``vqa`` with CLIP-BART's generation objective, ``vqa_cls`` with the ViT+RoBERTa classifier).
#: GQA: VL-Adapter trains on train + valid and reports testdev only, so val = test = testdev (reference §1.2).
ANNOTATIONS: dict[str, dict[str, tuple[AnnotationSource, ...]]] = {
    "vqa": {s: (AnnotationSource(f"vqa/karpathy_{s}.json", "COCO"),) for s in ("train", "val", "test")},
    "gqa": {
        "train": (AnnotationSource("GQA/train.json", "VG"), AnnotationSource("GQA/valid.json", "VG")),
        "val": (AnnotationSource("GQA/testdev.json", "GQA"),),
        "test": (AnnotationSource("GQA/testdev.json", "GQA"),),
    },
    "nlvr": {"train": (AnnotationSource("nlvr/train.json", "nlvr"),),
             "val": (AnnotationSource("nlvr/valid.json", "nlvr"),),
             "test": (AnnotationSource("nlvr/test.json", "nlvr"),)},
    # Karpathy's one file for every split; the task selects images by their "split" field.
    "coco_captions": {s: (AnnotationSource("COCO/dataset_coco.json", "COCO"),) for s in ("train", "val", "test")},
}

#: Other files of the layout, by role.
FILES: dict[str, str] = {
    "vqa_official_train": "vqa/v2_mscoco_train2014_annotations.json",
    "vqa_official_val": "vqa/v2_mscoco_val2014_annotations.json",
    "vqa_ans2label": "vqa/trainval_ans2label.json",
    "vqa_label2ans": "vqa/trainval_label2ans.json",
    "gqa_ans2label": "GQA/trainval_ans2label.json",
    "gqa_label2ans": "GQA/trainval_label2ans.json",
}


def image_id(path: str | Path) -> str:
    """The id annotation files use for an image file: its name up to the first dot."""
    return Path(path).name.split(".")[0]


def collection(name: str) -> ImageCollection:
    """The collection by folder name (``COCO``) or extract name (``coco``); a ConfigError naming the valid ones."""
    for c in COLLECTIONS.values():
        if name in (c.folder, c.extract_name) or str(name).lower() == c.extract_name:
            return c
    raise ConfigError(f"unknown feature dataset '{name}'; choose one of {', '.join(COLLECTIONS)}.")


def feature_folder(root: str | Path, collection_name: str, kind: str = "clip") -> Path:
    """``<root>/<collection>/<feature folder of kind>``."""
    if kind not in FEATURE_FOLDERS:
        raise ConfigError(f"unknown feature kind '{kind}'; choose one of {', '.join(FEATURE_FOLDERS)}.")
    return Path(root) / collection(collection_name).folder / FEATURE_FOLDERS[kind]


def feature_file(root: str | Path, collection_name: str, split: str, kind: str = "clip") -> Path:
    """The HDF5 file one feature split of a collection is extracted into."""
    return feature_folder(root, collection_name, kind) / f"{split}.h5"


def annotation_sources(benchmark: str, split: str) -> tuple[AnnotationSource, ...]:
    if benchmark not in ANNOTATIONS:
        raise ConfigError(f"unknown benchmark '{benchmark}'; known: {', '.join(ANNOTATIONS)}.")
    if split not in ANNOTATIONS[benchmark]:
        raise ConfigError(f"unknown split '{split}' of {benchmark}; valid splits: {', '.join(ANNOTATIONS[benchmark])}.")
    return ANNOTATIONS[benchmark][split]


def image_folders() -> list[str]:
    """Every image folder the synthetic generator writes (the first candidate of each split)."""
    return [c.splits[s][0] for c in COLLECTIONS.values() for s in c.splits]


@dataclass(frozen=True)
class DataSpec:
    """Every model-dependent data shape and data-side choice, decided once by the model family and passed to every
    dataset (training, preflight and evaluation).

    ``feature_kind`` picks the feature folder (:data:`FEATURE_FOLDERS`), or ``images`` (:data:`IMAGE_KIND`: the
    images themselves, preprocessed for a model that runs its vision encoder online); ``n_boxes`` the number of
    visual tokens per image the reader returns (CLIP grids are pooled to √n_boxes × √n_boxes; pooled ViT vectors
    have 1); ``feat_dim`` the channel count the model's visual input expects (checked against the files before
    training; 3 for images, stored channels-last); ``max_text_positions`` guards the tokenizer's output.
    ``num_answers`` is the width of a classifier over an answer vocabulary (``classify`` tasks check their
    ``ans2label`` file against it). ``headline`` picks, for a task that offers several headline scores, which one it
    reports (``vqa_cls``: ``official`` or ``soft``; empty = the task's default). ``reshuffle_each_epoch=False`` keeps
    the epoch-0 sample order in every epoch (a ``DistributedSampler`` whose ``set_epoch`` is never called, as in the
    routing paper's released ViT+RoBERTa code).
    """

    feature_kind: str = "clip"
    n_boxes: int = 36
    feat_dim: int = 2048
    max_text_positions: int = 1024
    num_answers: int | None = None
    headline: str = ""
    reshuffle_each_epoch: bool = True


def check_image_folders(root: str | Path, dataset: str) -> None:
    """Raise a DataError naming the folders looked for when a split of ``dataset`` (an extract name or
    ``synthetic`` = all four) has no image folder under ``root``: the fail-fast check of extract_features.sh."""
    from vlrouting.errors import DataError

    names = [c.extract_name for c in COLLECTIONS.values()]
    if dataset != "synthetic" and dataset not in names:
        raise ConfigError(f"unknown dataset '{dataset}'; choose one of {', '.join(names + ['synthetic'])}.")
    for c in COLLECTIONS.values():
        if dataset not in ("synthetic", c.extract_name):
            continue
        for split, candidates in c.splits.items():
            if not any((Path(root) / cand).is_dir() for cand in candidates):
                looked = ", ".join(str(Path(root) / cand) for cand in candidates)
                raise DataError(f"no image folder for {c.extract_name} {split} (looked for {looked}); put the "
                                "images there or pass --root DIR.")


def main(argv: list[str] | None = None) -> int:
    """``python -m vlrouting.data.layout check-images DATASET ROOT``: exit 2 with one sentence if images are
    missing (used by scripts/extract_features.sh before it starts the extractor)."""
    import sys

    from vlrouting.errors import VLRoutingError

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 3 or argv[0] != "check-images":
        print("usage: python -m vlrouting.data.layout check-images DATASET ROOT", file=sys.stderr)
        return 2
    try:
        check_image_folders(argv[2], argv[1])
    except VLRoutingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
