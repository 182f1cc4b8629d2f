"""Visual features of one dataset folder, ``<root>/<DS>/clip_features`` (DESIGN.md §3, §6, §9).

Two on-disk layouts are read, chosen automatically (both may coexist; ours is looked up first):

* **ours** — one HDF5 file per split directly in the folder (``train2014.h5``, ``val2014.h5``, ...), one dataset
  per image id, ``(36, C)`` float16 (or ``(49, C)`` with ``--keep-grid``), written by ``python -m
  feature_extraction extract``. The id → file index is built lazily by listing the files' keys.
* **VL-Adapter's release** — ``<dir>/data_clip_RN101_att/<img_id>.h5`` with key ``<img_id>/features``,
  ``(49, 2048)`` float16/32 (reference/vladapter_spec.md §1.4).

A 49-token (7×7, row-major) grid is pooled to √n_boxes × √n_boxes with adaptive max pooling at load time — the
``Downsample((6, 6))`` VL-Adapter applies inside its encoder (§1.5); for 7 → 6 that is a 2×2 max window with
stride 1. ``n_boxes=49`` returns the unpooled grid where the file has one. Features come back as float32.

h5py handles are not fork-safe (DESIGN.md §9): a store opens its files lazily in each process (it tracks the pid),
pickles without handles (spawned DataLoader workers), and closes its handles just before any ``os.fork`` of the
process, so forked DataLoader workers never inherit an open HDF5 file.
"""

from __future__ import annotations

import math
import os
import weakref
from pathlib import Path

import numpy as np

from vlrouting.errors import ConfigError, DataError, MissingFeatureError

from vlrouting.data.layout import COLLECTIONS, FEATURE_FOLDERS

_EXTRACT_NAME = {c.folder: c.extract_name for c in COLLECTIONS.values()}

_STORES: "weakref.WeakSet[FeatureStore]" = weakref.WeakSet()


def _close_all_before_fork() -> None:
    for store in list(_STORES):
        store.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_close_all_before_fork)


def adaptive_max_pool_grid(tokens: np.ndarray, out_side: int) -> np.ndarray:
    """(s², C) row-major tokens → (out_side², C), exactly ``torch.nn.functional.adaptive_max_pool2d``."""
    n, c = tokens.shape
    s = math.isqrt(n)
    grid = tokens.reshape(s, s, c)
    if out_side == s:
        return tokens
    if out_side == s - 1:  # 7 → 6: windows [i, i + 2)
        rows = np.maximum(grid[:-1], grid[1:])
        return np.maximum(rows[:, :-1], rows[:, 1:]).reshape(out_side * out_side, c)
    bounds = [(i * s // out_side, -(-(i + 1) * s // out_side)) for i in range(out_side)]
    rows = np.stack([grid[a:b].max(axis=0) for a, b in bounds])
    return np.stack([rows[:, a:b].max(axis=1) for a, b in bounds], axis=1).reshape(out_side * out_side, c)


class FeatureStore:
    """Reads visual features for one dataset folder `<root>/<DS>/clip_features`.

    ``feature_dir`` may also be a single ``.h5`` file of ours. ``store[img_id]`` → (n_boxes, C) float32;
    ``img_id in store``; ``store.ids()``. Missing ids raise :class:`MissingFeatureError`.
    """

    def __init__(self, feature_dir, n_boxes: int = 36, *, feature_type: str = "RN101"):
        self.path = Path(feature_dir)
        self.n_boxes = int(n_boxes)
        self.side = math.isqrt(self.n_boxes)
        if self.n_boxes < 1 or self.side * self.side != self.n_boxes:
            raise ConfigError(f"n_boxes {n_boxes} is not a square number of grid tokens; use 36 (6×6) or 49 (7×7).")
        if self.path.is_file():
            if self.path.suffix != ".h5":
                raise DataError(f"{self.path} is not an .h5 feature file; pass a clip_features folder or an .h5 file.")
            self._files = [self.path]
            self._att_dir = None
        elif self.path.is_dir():
            self._files = sorted(p for p in self.path.glob("*.h5") if p.is_file())
            att = self.path / f"data_clip_{feature_type}_att"
            self._att_dir = att if att.is_dir() else None
            if not self._files and self._att_dir is None:
                raise DataError(f"no features in {self.path}: expected <split>.h5 files or data_clip_{feature_type}_att/"
                                f"{self._partial_hint()}; {self._extract_hint()}.")
        else:
            raise DataError(f"feature folder {self.path} does not exist; {self._extract_hint()}.")
        self._index: dict[str, int] | None = None
        self._handles: dict[int, object] = {}
        self._pid: int | None = None
        _STORES.add(self)

    # ---- messages
    def _extract_hint(self) -> str:
        folder = self.path if self.path.is_dir() or not self.path.suffix else self.path.parent
        ds = _EXTRACT_NAME.get(folder.parent.name)
        if folder.name in FEATURE_FOLDERS.values() and ds:
            return f"extract them with `python -m feature_extraction extract --dataset {ds} --root {folder.parent.parent}`"
        return "extract them with `python -m feature_extraction extract --images DIR --output FILE.h5`"

    def _partial_hint(self) -> str:
        partial = sorted(p.name for p in self.path.glob("*.h5.partial")) if self.path.is_dir() else []
        return f" (only the unfinished {', '.join(partial)}: rerun the extraction to finish it)" if partial else ""

    def _searched(self) -> str:
        parts = [p.name for p in self._files[:6]] + (["..."] if len(self._files) > 6 else [])
        if self._att_dir is not None:
            parts.append(f"{self._att_dir.name}/<img_id>.h5")
        return ", ".join(parts)

    # ---- handles (lazy, per process)
    def _check_pid(self) -> None:
        pid = os.getpid()
        if self._pid != pid:
            self._handles = {}  # inherited handles (if any) belong to the parent: drop, never use
            self._pid = pid

    def _h5(self, i: int):
        import h5py

        self._check_pid()
        f = self._handles.get(i)
        if f is None:
            try:
                f = h5py.File(self._files[i], "r", locking=False)
            except TypeError:  # h5py without the locking argument
                f = h5py.File(self._files[i], "r")
            except OSError as exc:
                raise DataError(f"cannot open feature file {self._files[i]} ({exc}); re-extract it.") from exc
            self._handles[i] = f
        return f

    def close(self) -> None:
        """Closes this process' handles (they reopen on the next access)."""
        if self._pid == os.getpid():
            for f in self._handles.values():
                try:
                    f.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
        self._handles = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_pid"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        _STORES.add(self)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # ---- index
    def _build_index(self) -> dict[str, int]:
        if self._index is None:
            index: dict[str, int] = {}
            for i in range(len(self._files)):
                for key in self._h5(i).keys():
                    index.setdefault(key, i)
            self._index = index
        return self._index

    def _att_file(self, img_id: str) -> Path | None:
        if self._att_dir is None:
            return None
        p = self._att_dir / f"{img_id}.h5"
        return p if p.is_file() else None

    def __contains__(self, img_id) -> bool:
        img_id = str(img_id)
        return img_id in self._build_index() or self._att_file(img_id) is not None

    def ids(self) -> set[str]:
        out = set(self._build_index())
        if self._att_dir is not None:
            out.update(p.name[:-3] for p in self._att_dir.iterdir() if p.name.endswith(".h5"))
        return out

    def __len__(self) -> int:
        return len(self.ids())

    def locate(self, img_id: str) -> str:
        """The file that holds ``img_id`` (for messages)."""
        i = self._build_index().get(str(img_id))
        if i is not None:
            return str(self._files[i])
        att = self._att_file(str(img_id))
        if att is not None:
            return str(att)
        raise self._missing(str(img_id))

    def _missing(self, img_id: str) -> MissingFeatureError:
        return MissingFeatureError(f"image id '{img_id}' has no features in {self.path} (searched {self._searched()})"
                                   f"; {self._extract_hint()}.")

    # ---- reading
    def raw(self, img_id: str) -> np.ndarray:
        """The stored array, as stored (tokens × C, file dtype), without pooling."""
        img_id = str(img_id)
        i = self._build_index().get(img_id)
        if i is not None:
            return self._h5(i)[img_id][()]
        att = self._att_file(img_id)
        if att is None:
            raise self._missing(img_id)
        import h5py

        try:
            with h5py.File(att, "r") as f:
                return f[f"{img_id}/features"][()]
        except (OSError, KeyError) as exc:
            raise DataError(f"{att} has no readable '{img_id}/features' ({exc}); re-download or re-extract it.") \
                from exc

    def __getitem__(self, img_id: str) -> np.ndarray:
        arr = self.raw(img_id)
        if arr.ndim == 3:  # (7, 7, C) grids
            arr = arr.reshape(-1, arr.shape[-1])
        n = arr.shape[0]
        s = math.isqrt(n)
        if arr.ndim != 2 or s * s != n:
            raise DataError(f"features of '{img_id}' in {self.locate(img_id)} have shape {arr.shape}, not "
                            f"(square number of tokens, C); re-extract them.")
        if self.side > s:
            raise ConfigError(f"n_boxes {self.n_boxes} asks for a {self.side}×{self.side} grid but "
                              f"{self.locate(img_id)} stores {s}×{s} tokens; use n_boxes {n} or re-extract with "
                              f"--keep-grid.")
        return np.ascontiguousarray(adaptive_max_pool_grid(arr, self.side), dtype=np.float32)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, n_boxes={self.n_boxes})"


def open_feature_store(datasets_root, dataset: str, n_boxes: int = 36, kind: str = "clip") -> FeatureStore:
    """The store of ``<datasets_root>/<dataset>/<feature folder of kind>`` (:mod:`vlrouting.data.layout`);
    dataset ∈ {"COCO", "VG", "GQA", "nlvr"}. Kind ``images`` opens the collection's image files instead
    (:class:`vlrouting.data.images.ImageStore`, for models that run their vision encoder online)."""
    from vlrouting.data.layout import IMAGE_KIND, feature_folder

    if kind == IMAGE_KIND:
        from vlrouting.data.images import ImageStore

        return ImageStore(datasets_root, dataset)

    return FeatureStore(feature_folder(datasets_root, dataset, kind), n_boxes=n_boxes)
