"""Images as the visual input, for models that run their frozen vision encoder online (feature kind ``images``).

An :class:`ImageStore` is the image-file counterpart of :class:`vlrouting.data.features.FeatureStore`: the same
interface (``store[img_id]``, ``img_id in store``, ``ids()``, ``path``), so the tasks, the preflight check and the
datasets use it unchanged. It looks up an image id (the file name up to the first dot, as annotation files name
images) in every image folder the dataset layout lists for the collection (:data:`vlrouting.data.layout.COLLECTIONS`,
first existing candidate per split; VG: all of them) and returns the image preprocessed exactly as the offline
ViT extractor does (:func:`vlrouting.models.vit.load_image`: 224×224 bilinear, mean = std = 0.5), channels last —
``(224, 224, 3)`` float32, so the layout's ``feat_dim`` check sees the 3 channels. The model turns the batch into
``(B, 3, 224, 224)`` pixel values.

The folders are listed lazily on first use (once per process, so DataLoader workers list them themselves).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vlrouting.data.layout import collection, image_id
from vlrouting.errors import DataError, MissingFeatureError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_folders_of(root: str | Path, collection_name: str) -> list[Path]:
    """The existing image folders of a collection under ``root`` (the layout's candidates, in split order)."""
    coll = collection(collection_name)
    out: list[Path] = []
    for candidates in coll.splits.values():
        found = [Path(root) / c for c in candidates if (Path(root) / c).is_dir()]
        out.extend(found if coll.union else found[:1])
    return out


class ImageStore:
    """``store[img_id]`` → the preprocessed image (224, 224, 3) float32 of one collection under a datasets root."""

    def __init__(self, root: str | Path, collection_name: str):
        self.root = Path(root)
        self.collection = collection(collection_name)
        self.folders = image_folders_of(self.root, self.collection.folder)
        self.path = self.root / self.collection.folder
        if not self.folders:
            looked = ", ".join(str(self.root / c) for cands in self.collection.splits.values() for c in cands)
            raise DataError(f"no image folder of {self.collection.folder} under {self.root} (looked for {looked}); "
                            "put the images there, or use offline features (model.features=offline).")
        self._index: dict[str, Path] | None = None

    def _build_index(self) -> dict[str, Path]:
        if self._index is None:
            index: dict[str, Path] = {}
            for folder in self.folders:
                for base, subdirs, files in os.walk(folder):
                    subdirs.sort()
                    for name in sorted(files):
                        if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                            index.setdefault(image_id(name), Path(base) / name)
            self._index = index
        return self._index

    def __getstate__(self):  # workers rebuild the listing themselves
        state = self.__dict__.copy()
        state["_index"] = None
        return state

    def __contains__(self, img_id) -> bool:
        return str(img_id) in self._build_index()

    def ids(self) -> set[str]:
        return set(self._build_index())

    def __len__(self) -> int:
        return len(self._build_index())

    def locate(self, img_id: str) -> str:
        path = self._build_index().get(str(img_id))
        if path is None:
            raise MissingFeatureError(f"image id '{img_id}' has no image file in "
                                      f"{', '.join(str(f) for f in self.folders)}; add the image or fix the "
                                      "annotation file.")
        return str(path)

    def __getitem__(self, img_id: str) -> np.ndarray:
        from vlrouting.models.vit import load_image

        path = self.locate(img_id)
        try:
            pixels = load_image(path)
        except Exception as exc:  # noqa: BLE001 - any decoding failure becomes one sentence naming the file
            raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc}); replace or remove it.") \
                from None
        return np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())

    def close(self) -> None:  # the FeatureStore interface
        pass

    def __repr__(self) -> str:
        return f"ImageStore({str(self.root)!r}, {self.collection.folder!r})"
