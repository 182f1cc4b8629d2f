"""``python -m feature_extraction convert --input IN --output OUT.h5``: per-image features → the contiguous layout.

``IN`` is one of our per-image files (``<split>.h5`` from ``extract``) or a folder of VL-Adapter's per-image files
(``data_clip_RN101_att/<img_id>.h5``, key ``<img_id>/features``). ``OUT`` gets the contiguous layout of
:mod:`feature_extraction.h5writer`: one ``features`` dataset ``(N, tokens, C)`` chunked ``(1, tokens, C)`` and an
``ids`` dataset, rows in sorted id order. Blocks are copied as stored — same dtype, same tokens (a 7×7 grid stays
49 tokens; the reader pools at load time) — so the reader returns exactly what it returned from ``IN``. Our
provenance attributes (model, fingerprint, settings) come along, so ``extract --layout contiguous`` can later add
images to ``OUT``.

Atomic: ``OUT`` is written under a temporary name in its folder and renamed when complete; an existing ``OUT`` is
never overwritten. Check the result with ``python -m feature_extraction verify --features OUT ...``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from vlrouting.data.features import CONTIGUOUS, FEATURES, IDS, PER_IMAGE, file_layout, open_h5
from vlrouting.errors import ConfigError, DataError
from vlrouting.fileio import atomic_path

from .h5writer import COMPLETE, N_COMMITTED, create_contiguous, read_attrs

BLOCK = 256  # images per write


class _Source:
    """The per-image input: ids, attributes and a reader of one block into a buffer row."""

    def __init__(self, path: Path):
        self.path = path
        self.file = None
        if path.is_file():
            if path.suffix != ".h5":
                raise ConfigError(f"--input {path} is not an .h5 feature file; pass a per-image <split>.h5 of ours or "
                                  f"a folder of VL-Adapter's <img_id>.h5 files.")
            self.file = open_h5(path)
            if file_layout(self.file) == CONTIGUOUS:
                raise ConfigError(f"--input {path} already has the contiguous layout; nothing to convert.")
            self.attrs = read_attrs(self.file)
            if not self.attrs.get(COMPLETE, True):
                raise DataError(f"--input {path} is an unfinished extraction; rerun the extraction to finish it first.")
            self.ids = sorted(k for k, v in self.file.items() if isinstance(v, h5py.Dataset))
        elif path.is_dir():
            self.attrs = {}
            self.ids = sorted(p.name[:-3] for p in path.glob("*.h5") if p.is_file())
        else:
            raise DataError(f"--input {path} does not exist; pass a per-image <split>.h5 of ours or a folder of "
                            f"VL-Adapter's <img_id>.h5 files.")
        if not self.ids:
            raise DataError(f"--input {path} holds no image features; pass a per-image <split>.h5 of ours or a folder "
                            f"of VL-Adapter's <img_id>.h5 files.")

    def where(self, img_id: str) -> str:
        return str(self.path) if self.file is not None else str(self.path / f"{img_id}.h5")

    def dataset(self, img_id: str, f=None) -> h5py.Dataset:
        try:
            return (self.file or f)[img_id if self.file is not None else f"{img_id}/features"]
        except KeyError as exc:
            raise DataError(f"{self.where(img_id)} has no readable features for '{img_id}' ({exc}); re-download or "
                            f"re-extract it.") from exc

    def read_into(self, img_id: str, buf: np.ndarray, kind: tuple) -> None:
        if self.file is not None:
            self._read(self.dataset(img_id), img_id, buf, kind)
            return
        with open_h5(self.path / f"{img_id}.h5") as f:
            self._read(self.dataset(img_id, f), img_id, buf, kind)

    def _read(self, ds: h5py.Dataset, img_id: str, buf: np.ndarray, kind: tuple) -> None:
        if (ds.shape, ds.dtype) != kind:
            raise DataError(f"features of '{img_id}' in {self.where(img_id)} are {ds.dtype} {ds.shape} but the first "
                            f"image's are {kind[1]} {kind[0]}; one contiguous dataset needs one shape and dtype — "
                            f"re-extract that image.")
        ds.read_direct(buf.reshape(ds.shape))

    def kind(self) -> tuple:
        """(shape, dtype) of the first image's block; every block must have it."""
        first = self.ids[0]
        if self.file is not None:
            ds = self.dataset(first)
            return ds.shape, ds.dtype
        with open_h5(self.path / f"{first}.h5") as f:
            ds = self.dataset(first, f)
            return ds.shape, ds.dtype

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def convert(input_path, output, *, verbose: bool = True) -> int:
    """Writes ``output`` (contiguous layout) from the per-image ``input_path``; returns the number of images."""
    src_path, out = Path(input_path), Path(output)
    if out.suffix != ".h5":
        raise ConfigError(f"--output {out} must end in .h5 (the reader looks for *.h5 files).")
    if out.exists():
        raise ConfigError(f"--output {out} already exists; delete it or choose another name.")
    t0 = time.perf_counter()
    src = _Source(src_path)
    try:
        shape, dtype = src.kind()
        if len(shape) not in (2, 3):
            raise DataError(f"features of '{src.ids[0]}' in {src.where(src.ids[0])} have shape {shape}, not (tokens, "
                            f"C) or (side, side, C); re-extract them.")
        block_shape = (int(np.prod(shape[:-1])), shape[-1])
        n = len(src.ids)
        with atomic_path(out) as tmp:
            with h5py.File(tmp, "w") as f:
                for key, value in src.attrs.items():
                    f.attrs[key] = value
                f.attrs["converted_from"] = f"{src_path.name} ({PER_IMAGE} layout)"
                f.attrs[COMPLETE] = False
                create_contiguous(f, block_shape, dtype)
                feats, ids = f[FEATURES], f[IDS]
                feats.resize(n, axis=0)
                ids.resize(n, axis=0)
                buf = np.empty((min(BLOCK, n), *block_shape), dtype)
                for a in range(0, n, BLOCK):
                    chunk = src.ids[a:a + BLOCK]
                    for k, img_id in enumerate(chunk):
                        src.read_into(img_id, buf[k], (shape, dtype))
                    feats[a:a + len(chunk)] = buf[:len(chunk)]
                ids[:] = src.ids
                f.attrs[N_COMMITTED] = n
                f.attrs["n_images"] = n
                f.attrs[COMPLETE] = True
    finally:
        src.close()
    if verbose:
        print(f"converted {n} images ({'×'.join(map(str, block_shape))} {dtype}) from {src_path} to {out} "
              f"(contiguous layout) in {time.perf_counter() - t0:.1f}s")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m feature_extraction convert",
        description="Rewrite per-image feature files as the contiguous layout (one (N, tokens, C) dataset chunked per "
                    "image plus an id index), which batch reads go through about twice as fast.")
    p.add_argument("--input", required=True,
                   help="a per-image <split>.h5 of ours, or a folder of VL-Adapter's <img_id>.h5 files")
    p.add_argument("--output", required=True, help="the .h5 file to write (must not exist)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    convert(args.input, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
