"""Visual features of one dataset folder, ``<root>/<DS>/clip_features`` (DESIGN.md §3, §6, §9).

Three on-disk layouts are read, chosen automatically (they may coexist; our files are looked up first):

* **ours, per image** — one HDF5 file per split directly in the folder (``train2014.h5``, ``val2014.h5``, ...),
  one dataset per image id, ``(36, C)`` float16 (or ``(49, C)`` with ``--keep-grid``), written by ``python -m
  feature_extraction extract``. The id → file index is built lazily by listing the files' keys.
* **ours, contiguous** — the same files, but holding one ``features`` dataset ``(N, tokens, C)`` chunked
  ``(1, tokens, C)`` (one chunk per image) and an ``ids`` dataset ``(N,)`` of image ids, marked by the root attribute
  ``layout = "contiguous"``; written by ``extract --layout contiguous`` or ``python -m feature_extraction convert``.
  The index is read from ``ids``.
* **VL-Adapter's release** — ``<dir>/data_clip_RN101_att/<img_id>.h5`` with key ``<img_id>/features``,
  ``(49, 2048)`` float16/32 (reference/vladapter_spec.md §1.4).

A 49-token (7×7, row-major) grid is pooled to √n_boxes × √n_boxes with adaptive max pooling at load time — the
``Downsample((6, 6))`` VL-Adapter applies inside its encoder (§1.5); for 7 → 6 that is a 2×2 max window with
stride 1. ``n_boxes=49`` returns the unpooled grid where the file has one. Features come back as float32.

Two read paths: ``store[img_id]`` reads one block (the reference path), :meth:`FeatureStore.read_batch` reads the
blocks of a whole batch into one preallocated ``(B, n_boxes, C)`` array with as few HDF5 calls as the layout
allows: ids sorted per file, duplicates read once; the contiguous layout reads each image's chunk with one direct
chunk read (``H5Dread_chunk``: no datatype pipeline), or one hyperslab-union read per file when the dataset is stored
unchunked — a union read over a *chunked* dataset costs ~100× more than the per-chunk reads with HDF5 2.0 here;
the per-image layouts need one open + one read per image. The float16 → float32 cast, the NaN/Inf check and the
7×7 pooling then run once over the batch.

h5py handles are not fork-safe (DESIGN.md §9): a store opens its files lazily in each process (it tracks the pid),
pickles without handles (spawned DataLoader workers), and closes its handles just before any ``os.fork`` of the
process, so forked DataLoader workers never inherit an open HDF5 file.
"""

from __future__ import annotations

import math
import os
import weakref
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np

from vlrouting.errors import ConfigError, DataError, MissingFeatureError

from vlrouting.data.layout import COLLECTIONS, FEATURE_FOLDERS

_EXTRACT_NAME = {c.folder: c.extract_name for c in COLLECTIONS.values()}

# The contiguous layout: root attribute LAYOUT_ATTR = CONTIGUOUS, datasets FEATURES (N, tokens, C) and IDS (N,).
LAYOUT_ATTR = "layout"
PER_IMAGE = "per-image"
CONTIGUOUS = "contiguous"
LAYOUTS = (PER_IMAGE, CONTIGUOUS)
FEATURES = "features"
IDS = "ids"

# ``out=`` of read_batch: an array to fill, or a callable that gets the shape and returns one (e.g. shared memory).
OutSpec = Union[None, np.ndarray, Callable[[tuple], np.ndarray]]

_STORES: "weakref.WeakSet[FeatureStore]" = weakref.WeakSet()


def _close_all_before_fork() -> None:
    for store in list(_STORES):
        store.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_close_all_before_fork)


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def file_layout(f) -> str:
    """The layout of an open feature file of ours: ``per-image`` (no ``layout`` attribute) or ``contiguous``."""
    layout = _str(f.attrs.get(LAYOUT_ATTR, PER_IMAGE))
    if layout not in LAYOUTS:
        raise DataError(f"{f.filename} has the unknown feature layout '{layout}' (this vlrouting reads "
                        f"{' and '.join(LAYOUTS)}); update vlrouting or re-extract the file.")
    return layout


def adaptive_max_pool_grid(tokens: np.ndarray, out_side: int, out: np.ndarray | None = None) -> np.ndarray:
    """(..., s², C) row-major tokens → (..., out_side², C), exactly ``torch.nn.functional.adaptive_max_pool2d``.

    Leading dimensions are a batch; ``out`` (C-contiguous, the result's shape) receives the result.
    """
    *lead, n, c = tokens.shape
    s = math.isqrt(n)
    if out is not None and not out.flags.c_contiguous:
        raise ValueError("adaptive_max_pool_grid: out must be C-contiguous")
    if out_side == s:
        if out is None:
            return tokens
        np.copyto(out, tokens)
        return out
    grid = tokens.reshape(*lead, s, s, c)
    dst = None if out is None else out.reshape(*lead, out_side, out_side, c)
    if out_side == s - 1:  # 7 → 6: windows [i, i + 2)
        rows = np.maximum(grid[..., :-1, :, :], grid[..., 1:, :, :])
        res = np.maximum(rows[..., :, :-1, :], rows[..., :, 1:, :], out=dst)
    else:
        bounds = [(i * s // out_side, -(-(i + 1) * s // out_side)) for i in range(out_side)]
        rows = np.stack([grid[..., a:b, :, :].max(axis=-3) for a, b in bounds], axis=-3)
        res = np.stack([rows[..., :, a:b, :].max(axis=-2) for a, b in bounds], axis=-2)
        if dst is not None:
            np.copyto(dst, res)
    return res.reshape(*lead, out_side * out_side, c) if out is None else out


def _cast_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` across dtypes; torch's vectorised float16 → float32 cast is ~10× numpy's on this CPU."""
    if dst.dtype == src.dtype:
        np.copyto(dst, src)
        return
    import torch

    torch.from_numpy(dst).copy_(torch.from_numpy(src))


def _all_finite(x: np.ndarray) -> bool:
    """Whether ``x`` holds no NaN/Inf, in one pass: torch's min/max propagate NaN and keep ±Inf, so both ends are
    finite exactly when every value is (0.6 ms for a 64 × 36 × 2048 batch here; ``np.isfinite(x).all()`` takes 2-5×
    that for float32 and 30× for float16)."""
    if x.size == 0:
        return True
    import torch

    lo, hi = torch.aminmax(torch.from_numpy(x))
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


class _Gather:
    """Where the raw blocks of one batch land while they are read.

    ``main`` is one ``(B, tokens, C)`` array of the file dtype in which the block of batch position p goes to
    slot p, for every block of the batch's first kind (tokens, C, dtype) — in practice all of them. A block of another
    kind (a file extracted differently) goes to a small array of its own, with its positions (``others``).
    """

    def __init__(self, n: int):
        self.n = n
        self.main: np.ndarray | None = None
        self.main_positions: list[int] = []
        self.others: list[tuple[list[int], np.ndarray]] = []

    def buffer(self, kind: tuple, positions: list[int]) -> tuple[np.ndarray, list[int]]:
        """The array to read the blocks of ``positions`` into, and the slot of each position in it."""
        tokens, c, dtype = kind
        if self.main is None:
            self.main = np.empty((self.n, tokens, c), dtype)
        if self.main.shape[1:] == (tokens, c) and self.main.dtype == dtype:
            self.main_positions.extend(positions)
            return self.main, list(positions)
        arr = np.empty((len(positions), tokens, c), dtype)
        self.others.append((list(positions), arr))
        return arr, list(range(len(positions)))


def check_finite(block: np.ndarray, img_ids, where) -> np.ndarray:
    """``block`` unchanged when every value is finite, else a DataError naming the image and its file.

    ``block`` holds the features of one image (``img_ids`` a str) or of several stacked on the first axis
    (``img_ids`` a sequence, one per row); ``where`` is the file (or a callable returning it, evaluated only on
    failure). One ``np.isfinite`` per block read costs far less than the read; without it a bad feature surfaces as
    a NaN loss steps later with nothing pointing at the file.
    """
    finite = np.isfinite(block)
    if finite.all():
        return block
    if isinstance(img_ids, str):
        bad = [img_ids]
    else:
        ids = list(img_ids)
        bad = [ids[k] for k in np.flatnonzero(~finite.reshape(len(ids), -1).all(axis=1))]
    more = f" (and {len(bad) - 1} more image(s) of that read)" if len(bad) > 1 else ""
    where = where() if callable(where) else where
    raise DataError(f"features of image '{bad[0]}'{more} in {where} contain NaN or Inf values; re-extract that file "
                    f"(python -m feature_extraction extract) or drop the image from the annotations.")


def channel_dims(store: "FeatureStore") -> dict[str, int]:
    """Channels (last axis) of the first dataset of every feature file of ``store``, plus one file of a released
    ``data_clip_*_att/`` folder: what the pre-flight check compares with ``model.feat_dim``. Reads shapes only."""
    dims: dict[str, int] = {}
    for i, path in enumerate(store._files):
        f = store._h5(i)
        first = next(iter(f.keys()), None)
        if first is None:
            continue
        shape = getattr(f[first], "shape", None)
        if not shape:
            raise DataError(f"{path} does not hold one (tokens, C) dataset per image id ('{first}' is not one); "
                            f"re-extract it with python -m feature_extraction extract.")
        dims[str(path)] = int(shape[-1])
    if store._att_dir is not None:
        first = next((p for p in store._att_dir.iterdir() if p.name.endswith(".h5")), None)
        if first is not None:
            import h5py

            try:
                with h5py.File(first, "r") as f:
                    dims[str(first)] = int(f[f"{first.name[:-3]}/features"].shape[-1])
            except (OSError, KeyError) as exc:
                raise DataError(f"{first} has no readable '{first.name[:-3]}/features' ({exc}); re-download or "
                                f"re-extract it.") from exc
    return dims


class FeatureStore:
    """Reads visual features for one dataset folder `<root>/<DS>/clip_features`.

    ``feature_dir`` may also be a single ``.h5`` file of ours. ``store[img_id]`` → (n_boxes, C) float32;
    ``store.read_batch(ids)`` → (len(ids), n_boxes, C) float32; ``img_id in store``; ``store.ids()``. Missing ids
    raise :class:`MissingFeatureError`.
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
        # image id → (file number, row); row -1: the per-image layout (a dataset named by the id)
        self._index: dict[str, tuple[int, int]] | None = None
        self._handles: dict[int, object] = {}
        self._dsets: dict[int, tuple] = {}  # per process: file number → (features DatasetID, kind, read mode)
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
            self._dsets = {}
            self._pid = pid

    def _h5(self, i: int):
        self._check_pid()
        f = self._handles.get(i)
        if f is None:
            f = open_h5(self._files[i])
            self._handles[i] = f
        return f

    def close(self) -> None:
        """Closes this process' handles (they reopen on the next access)."""
        self._dsets = {}
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
        state["_dsets"] = {}
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
    def _build_index(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            index: dict[str, tuple[int, int]] = {}
            for i in range(len(self._files)):
                f = self._h5(i)
                if file_layout(f) == CONTIGUOUS:
                    for row, key in enumerate(self._contiguous_ids(i)):
                        index.setdefault(key, (i, row))
                else:
                    for key in f.keys():
                        index.setdefault(key, (i, -1))
            self._index = index
        return self._index

    def _contiguous_ids(self, i: int) -> list[str]:
        f = self._h5(i)
        feats, ids = f.get(FEATURES), f.get(IDS)
        if feats is None or ids is None or feats.ndim != 3 or ids.ndim != 1 or len(ids) != feats.shape[0]:
            raise DataError(f"{self._files[i]} is marked as the contiguous layout but lacks a '{FEATURES}' (N, tokens, C) "
                            f"and an '{IDS}' (N,) dataset of equal length; re-extract or re-convert it.")
        return [_str(v) for v in ids[()].tolist()]

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
        loc = self._build_index().get(str(img_id))
        if loc is not None:
            return str(self._files[loc[0]])
        att = self._att_file(str(img_id))
        if att is not None:
            return str(att)
        raise self._missing(str(img_id))

    def _missing(self, img_id: str) -> MissingFeatureError:
        return MissingFeatureError(f"image id '{img_id}' has no features in {self.path} (searched {self._searched()})"
                                   f"; {self._extract_hint()}.")

    # ---- reading one block
    def raw(self, img_id: str) -> np.ndarray:
        """The stored array, as stored (tokens × C, file dtype), without pooling."""
        img_id = str(img_id)
        loc = self._build_index().get(img_id)
        if loc is not None:
            f = self._h5(loc[0])
            return f[FEATURES][loc[1]] if loc[1] >= 0 else f[img_id][()]
        att = self._att_file(img_id)
        if att is None:
            raise self._missing(img_id)
        try:
            with open_h5(att) as f:
                return f[f"{img_id}/features"][()]
        except (OSError, KeyError) as exc:
            raise DataError(f"{att} has no readable '{img_id}/features' ({exc}); re-download or re-extract it.") \
                from exc

    def __getitem__(self, img_id: str) -> np.ndarray:
        arr = check_finite(self.raw(img_id), str(img_id), lambda: self.locate(img_id))
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

    # ---- reading a batch
    def read_batch(self, ids: Sequence[str], out: OutSpec = None, *, dtype=np.float32) -> np.ndarray:
        """The features of ``ids`` as one ``(len(ids), n_boxes, C)`` array, row k = ``store[ids[k]]`` cast to ``dtype``.

        ``out``: the array to fill, or a callable that gets the shape and returns it (so a DataLoader worker can put
        the batch straight into shared memory); by default a new array. Ids may repeat and come in any order; blocks
        are read once each, in file order (see the module docstring). Raises :class:`MissingFeatureError` for an
        unknown id and :class:`DataError` naming the image and its file for NaN/Inf values or blocks of different
        feature sizes.
        """
        ids = [str(i) for i in ids]
        if not ids:
            raise ValueError("read_batch needs at least one image id")
        if np.dtype(dtype) not in (np.float16, np.float32, np.float64):
            raise ValueError(f"read_batch returns float16, float32 or float64 features, not {np.dtype(dtype)}")
        index = self._build_index()
        first: dict[str, int] = {}
        dups: list[tuple[int, int]] = []
        contiguous: dict[int, list[tuple[int, int]]] = {}
        per_image: dict[int, list[tuple[str, int]]] = {}
        archive: list[tuple[str, int]] = []
        for pos, img_id in enumerate(ids):
            if img_id in first:
                dups.append((pos, first[img_id]))
                continue
            first[img_id] = pos
            loc = index.get(img_id)
            if loc is None:
                if self._att_file(img_id) is None:
                    raise self._missing(img_id)
                archive.append((img_id, pos))
            elif loc[1] >= 0:
                contiguous.setdefault(loc[0], []).append((loc[1], pos))
            else:
                per_image.setdefault(loc[0], []).append((img_id, pos))
        g = _Gather(len(ids))
        for i, rows in sorted(contiguous.items(), key=lambda kv: -len(kv[1])):  # the largest group sets the kind
            self._read_contiguous(i, sorted(rows), g)
        for i, names in per_image.items():
            fid = self._h5(i).id
            for img_id, pos in sorted(names):
                self._read_dataset(_open_dataset(fid, img_id, self._files[i]), img_id, pos, g)
        for img_id, pos in sorted(archive):
            path = self._att_dir / f"{img_id}.h5"
            try:
                with open_h5(path) as f:
                    self._read_dataset(f[f"{img_id}/features"].id, img_id, pos, g)
            except (OSError, KeyError) as exc:
                raise DataError(f"{path} has no readable '{img_id}/features' ({exc}); re-download or re-extract "
                                f"it.") from exc
        return self._assemble(g, ids, dups, out, np.dtype(dtype))

    def _read_contiguous(self, i: int, rows: list[tuple[int, int]], g: _Gather) -> None:
        import h5py

        did, kind, mode = self._contiguous_dataset(i)
        arr, slots = g.buffer(kind, [p for _, p in rows])
        tokens, c, _ = kind
        if mode == "chunk":  # one H5Dread_chunk per image, straight into its slot
            flat = arr.reshape(len(arr), -1).view(np.uint8)
            for (row, _), slot in zip(rows, slots):
                did.read_direct_chunk((row, 0, 0), out=flat[slot])
            return
        fspace = did.get_space()
        if mode == "union":  # unchunked storage: one read for the whole group
            fspace.select_none()
            for row, _ in rows:
                fspace.select_hyperslab((row, 0, 0), (1, tokens, c), op=h5py.h5s.SELECT_OR)
            if slots == list(range(slots[0], slots[0] + len(slots))):  # file order = batch order: read in place
                dst = arr[slots[0]:slots[0] + len(slots)]
                did.read(h5py.h5s.create_simple(dst.shape), fspace, dst)
            else:
                tmp = np.empty((len(rows), tokens, c), arr.dtype)
                did.read(h5py.h5s.create_simple(tmp.shape), fspace, tmp)
                arr[slots] = tmp
            return
        mspace = h5py.h5s.create_simple((1, tokens, c))  # filtered / other chunking: HDF5 decodes each row
        for (row, _), slot in zip(rows, slots):
            fspace.select_hyperslab((row, 0, 0), (1, tokens, c))
            did.read(mspace, fspace, arr[slot:slot + 1])

    def _contiguous_dataset(self, i: int) -> tuple:
        """(features DatasetID, (tokens, C, native dtype), read mode) of contiguous-layout file ``i``; per process."""
        import h5py

        f = self._h5(i)  # resets the cache in a new process
        info = self._dsets.get(i)
        if info is None:
            ds = f[FEATURES]
            did = ds.id
            dcpl = did.get_create_plist()
            _, tokens, c = ds.shape
            dtype = ds.dtype
            if (dcpl.get_layout() == h5py.h5d.CHUNKED and dcpl.get_chunk() == (1, tokens, c)
                    and dcpl.get_nfilters() == 0 and dtype.isnative):
                mode = "chunk"  # the chunk's bytes are the block's bytes
            elif dcpl.get_layout() == h5py.h5d.CONTIGUOUS:
                mode = "union"
            else:
                mode = "rows"
            info = (did, (tokens, c, dtype.newbyteorder("=")), mode)
            self._dsets[i] = info
        return info

    def _read_dataset(self, did, img_id: str, pos: int, g: _Gather) -> None:
        """One per-image dataset (ours or VL-Adapter's), (tokens, C) or (s, s, C), into its slot."""
        import h5py

        shape = tuple(did.shape)
        dtype = did.dtype
        if len(shape) not in (2, 3) or dtype.kind not in "fiu":
            raise DataError(f"features of '{img_id}' in {self.locate(img_id)} have shape {shape} and dtype {dtype}, "
                            f"not (square number of tokens, C) numbers; re-extract them.")
        arr, slots = g.buffer((math.prod(shape[:-1]), shape[-1], dtype.newbyteorder("=")), [pos])
        did.read(h5py.h5s.ALL, h5py.h5s.ALL, arr[slots[0]].reshape(shape))

    def _assemble(self, g: _Gather, ids: list[str], dups, out: OutSpec, dtype: np.dtype) -> np.ndarray:
        """Casts, checks and pools the gathered blocks into the output array."""
        b, (_, c) = g.n, g.main.shape[1:]
        shape = (b, self.n_boxes, c)
        if out is None:
            out = np.empty(shape, dtype)
        elif callable(out):
            out = out(shape)
        if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
            raise ValueError(f"read_batch: out must be a C-contiguous {dtype} array of shape {shape}, got "
                             f"{out.dtype} {out.shape}")
        in_main = set(g.main_positions)
        row_ids: list[str | None] = [ids[p] if p in in_main else None for p in range(b)]
        if len(in_main) < b:  # slots filled later (duplicates, other kinds): zero, so the checks see only blocks
            g.main[[p for p in range(b) if p not in in_main]] = 0
        self._convert(g.main, out, row_ids)
        for positions, arr in g.others:
            if arr.shape[2] != c:
                a, o = ids[positions[0]], ids[g.main_positions[0]]
                raise DataError(f"the features of one batch differ in size: '{a}' in {self.locate(a)} has C="
                                f"{arr.shape[2]}, '{o}' in {self.locate(o)} has C={c}; re-extract the features "
                                f"with one model.")
            part = np.empty((len(positions), self.n_boxes, c), dtype)
            self._convert(arr, part, [ids[p] for p in positions])
            out[positions] = part
        if dups:
            to, frm = zip(*dups)
            out[list(to)] = out[list(frm)]
        return out

    def _convert(self, src: np.ndarray, dst: np.ndarray, row_ids: list) -> None:
        """(n, tokens, C) raw blocks → (n, n_boxes, C) ``dst``: cast, NaN/Inf check, adaptive max pooling."""
        tokens = src.shape[1]
        s = math.isqrt(tokens)
        name = next(i for i in row_ids if i is not None)
        if s * s != tokens:
            raise DataError(f"features of '{name}' in {self.locate(name)} have {tokens} tokens, not a square "
                            f"number; re-extract them.")
        if self.side > s:
            raise ConfigError(f"n_boxes {self.n_boxes} asks for a {self.side}×{self.side} grid but "
                              f"{self.locate(name)} stores {s}×{s} tokens; use n_boxes {tokens} or re-extract with "
                              f"--keep-grid.")
        if s == self.side:
            _cast_into(dst, src)
            self._check_finite(dst, row_ids)
            return
        x = src
        if src.dtype != np.float32:
            x = np.empty(src.shape, np.float32)
            _cast_into(x, src)
        self._check_finite(x, row_ids)  # before pooling, which could hide a -inf
        if dst.dtype == np.float32:
            adaptive_max_pool_grid(x, self.side, out=dst)
        else:
            _cast_into(dst, adaptive_max_pool_grid(x, self.side))

    def _check_finite(self, block: np.ndarray, row_ids: list) -> None:
        """A DataError naming the first image (row k is ``row_ids[k]``; None: not a block) holding NaN/Inf."""
        if _all_finite(block):
            return
        for k, img_id in enumerate(row_ids):
            if img_id is not None and not np.isfinite(block[k]).all():
                raise DataError(f"features of image '{img_id}' in {self.locate(img_id)} contain NaN or Inf values; "
                                f"re-extract that file (python -m feature_extraction extract) or drop the image from "
                                f"the annotations.")

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, n_boxes={self.n_boxes})"


def open_h5(path: Path):
    """A feature file opened read-only without HDF5 file locking (read-only mounts, files being copied); every
    read-only open of a feature file goes through here, since HDF5 refuses a second open of one file with other
    locking flags in the same process."""
    import h5py

    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise DataError(f"cannot open feature file {path} ({exc}); re-extract it.") from exc


def _open_dataset(fid, img_id: str, path: Path):
    import h5py

    try:
        return h5py.h5d.open(fid, img_id.encode())
    except KeyError as exc:
        raise DataError(f"{path} lost the dataset '{img_id}' while open ({exc}); re-extract it.") from exc


def open_feature_store(datasets_root, dataset: str, n_boxes: int = 36, kind: str = "clip") -> FeatureStore:
    """The store of ``<datasets_root>/<dataset>/<feature folder of kind>`` (:mod:`vlrouting.data.layout`);
    dataset ∈ {"COCO", "VG", "GQA", "nlvr"}."""
    from vlrouting.data.layout import feature_folder

    return FeatureStore(feature_folder(datasets_root, dataset, kind), n_boxes=n_boxes)
