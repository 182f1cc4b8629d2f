"""Crash-safe, resumable writing of one feature file per dataset split (DESIGN.md §6).

Two layouts of ``<split>.h5`` (both read by :class:`vlrouting.data.features.FeatureStore`), provenance as root
attributes in both:

* ``per-image`` (default): one dataset per image id at the root (``(36, C)`` float16, or ``(49, C)`` with
  ``--keep-grid``).
* ``contiguous``: one resizable ``features`` dataset ``(N, tokens, C)`` chunked ``(1, tokens, C)`` and an ``ids``
  dataset ``(N,)``, root attribute ``layout = "contiguous"``; a batch of images is then read with one cheap
  chunk read per image instead of a named-dataset lookup each.

Protocol:

* A run writes into ``<split>.h5.partial`` and renames it to ``<split>.h5`` (fsync, then ``os.replace``) only when the split is complete, so a
  reader never sees a half-extracted split and an existing complete file is never modified in place (adding
  images to it first copies it to ``.partial``, atomically).
* Each batch, per-image: create the batch's datasets → flush → set each dataset's ``complete`` attribute → flush.
  Contiguous: grow both datasets and write the batch's rows → flush → set the root attribute ``n_committed`` to the
  new row count → flush. After a kill (even ``kill -9``) the ``.partial`` file holds everything up to the last
  flush; on reopen, datasets without ``complete`` are deleted (rows past ``n_committed`` are cut off) and only the
  missing ids are extracted again. A ``.partial`` that HDF5 cannot open any more is discarded (with a warning) and
  started again.
* A test hook, environment variable ``FEATURE_EXTRACTION_KILL_AFTER_BATCHES=k``, SIGKILLs the process while it is
  writing batch k+1 (after half of its datasets / rows are written, before any flush).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import sys
import threading
from pathlib import Path

import h5py
import numpy as np

from vlrouting.data.features import CONTIGUOUS, FEATURES, IDS, LAYOUT_ATTR, PER_IMAGE
from vlrouting.errors import ConfigError
from vlrouting.fileio import atomic_path, fsync_replace

COMPLETE = "complete"
N_COMMITTED = "n_committed"  # contiguous layout: rows [0, n_committed) are complete
# Provenance keys that must agree for a rerun to add to an existing file (the rest is informative).
SETTINGS_KEYS = ("model", "pretrained", "seed", "image_size", "n_tokens", "grid", "dtype", "recalibrate_bn",
                 "recalibration_ids_sha256", "standardize_tokens")
KILL_ENV = "FEATURE_EXTRACTION_KILL_AFTER_BATCHES"


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def _attr(v):
    return v.decode() if isinstance(v, bytes) else (v.item() if isinstance(v, np.generic) else v)


def read_attrs(f: h5py.File) -> dict:
    return {k: _attr(v) for k, v in f.attrs.items()}


def settings_mismatch(stored: dict, settings: dict) -> list[str]:
    out = []
    for key in SETTINGS_KEYS:
        if key in settings and key in stored and str(stored[key]) != str(settings[key]):
            a, b = str(stored[key]), str(settings[key])
            a, b = (a[:12] + "…", b[:12] + "…") if len(a) > 16 else (a, b)
            out.append(f"{key} {a} vs {b}")
    return out


def stored_layout(attrs: dict) -> str:
    """The layout recorded in a file's attributes (files without the attribute are per-image)."""
    return str(attrs.get(LAYOUT_ATTR, PER_IMAGE))


def contiguous_ids(f: h5py.File, n: int | None = None) -> list[str]:
    """The first ``n`` (default: all) image ids of a contiguous-layout file, as str."""
    if IDS not in f:
        return []
    ids = f[IDS]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ids[: len(ids) if n is None else n].tolist()]


def _cut_uncommitted(f: h5py.File) -> set[str]:
    """Contiguous ``.partial``: drops the rows past ``n_committed``; returns the committed ids."""
    n = int(f.attrs.get(N_COMMITTED, 0))
    for name in (FEATURES, IDS):
        if name in f and f[name].shape[0] != n:
            f[name].resize(n, axis=0)
    return set(contiguous_ids(f, n))


def scan(output: Path) -> tuple[str | None, set[str], dict]:
    """State of an output: (where, done ids, stored attributes); where ∈ {None, "final", "partial"}.

    A ``.partial`` is cleaned on the way: datasets without the ``complete`` mark are deleted (contiguous layout: rows
    past ``n_committed`` are cut); an unreadable one is removed.
    """
    part = partial_path(output)
    if part.exists():
        try:
            with h5py.File(part, "r+") as f:
                attrs = read_attrs(f)
                if stored_layout(attrs) == CONTIGUOUS:
                    return "partial", _cut_uncommitted(f), attrs
                done = set()
                for name in list(f.keys()):
                    if f[name].attrs.get(COMPLETE, 0):
                        done.add(name)
                    else:
                        del f[name]
                return "partial", done, attrs
        except Exception as exc:  # noqa: BLE001 - any HDF5 damage means: start this split again
            print(f"warning: {part} could not be reopened ({type(exc).__name__}: {exc}); extracting this split "
                  f"again.", file=sys.stderr)
            part.unlink()
    if output.exists():
        try:
            with h5py.File(output, "r") as f:
                attrs = read_attrs(f)
                done = set(contiguous_ids(f)) if stored_layout(attrs) == CONTIGUOUS else set(f.keys())
                return "final", done, attrs
        except OSError as exc:
            raise ConfigError(f"{output} exists but is not a readable HDF5 file ({exc}); delete it and rerun the "
                              f"extraction.") from exc
    return None, set(), {}


def finalize_partial(output: Path, attrs: dict) -> None:
    """Marks ``<output>.partial`` complete and renames it to ``output``."""
    part = partial_path(output)
    with h5py.File(part, "r+") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        f.attrs[COMPLETE] = True
    fsync_replace(part, output)  # on disk before it gets the name readers trust


class H5Writer:
    """Writes batches of (id, array) into ``<output>.partial`` from a background thread; :meth:`finish` renames."""

    def __init__(self, output: Path, where: str | None, attrs: dict, queue_size: int = 4, layout: str = PER_IMAGE):
        self.output = Path(output)
        self.layout = layout
        self.partial = partial_path(self.output)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if where == "final":
            with atomic_path(self.partial) as tmp:
                shutil.copyfile(self.output, tmp)
        self.file = h5py.File(self.partial, "r+" if where in ("final", "partial") else "w")
        for key, value in attrs.items():
            self.file.attrs[key] = value
        if layout == CONTIGUOUS:
            self.file.attrs[LAYOUT_ATTR] = CONTIGUOUS
        self.file.attrs[COMPLETE] = False
        self.file.flush()
        self.written = 0
        self.batches = 0
        self.error: BaseException | None = None
        kill = os.environ.get(KILL_ENV)
        self._kill_at = int(kill) if kill not in (None, "") else None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name=f"h5writer:{self.output.name}", daemon=True)
        self._thread.start()

    def put(self, items: list[tuple[str, np.ndarray]]) -> None:
        if self.error is not None:
            raise self.error
        if items:
            self._queue.put(items)

    def _run(self) -> None:
        while True:
            items = self._queue.get()
            if items is None:
                return
            try:
                self._write(items)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self.error = exc
                # keep draining so that the producer never blocks on a full queue
                while self._queue.get() is not None:
                    pass
                return

    def _kill_now(self) -> bool:
        return self._kill_at is not None and self.batches == self._kill_at

    def _write(self, items: list[tuple[str, np.ndarray]]) -> None:
        if self.layout == CONTIGUOUS:
            self._write_rows(items)
        else:
            self._write_datasets(items)
        self.written += len(items)
        self.batches += 1

    def _write_datasets(self, items: list[tuple[str, np.ndarray]]) -> None:
        f = self.file
        for n, (img_id, arr) in enumerate(items):
            if img_id in f:
                del f[img_id]
            f.create_dataset(img_id, data=arr)
            if self._kill_now() and n == len(items) // 2:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: die in the middle of a batch
        f.flush()
        for img_id, _ in items:
            f[img_id].attrs[COMPLETE] = np.uint8(1)
        f.flush()

    def _write_rows(self, items: list[tuple[str, np.ndarray]]) -> None:
        f = self.file
        block = np.stack([arr for _, arr in items])
        if FEATURES not in f:
            create_contiguous(f, block.shape[1:], block.dtype)
        feats, ids = f[FEATURES], f[IDS]
        if feats.shape[1:] != block.shape[1:] or feats.dtype != block.dtype:
            raise ConfigError(f"{self.partial} holds {feats.dtype} blocks of shape {feats.shape[1:]}, this run makes "
                              f"{block.dtype} {block.shape[1:]}; delete it or pass the options it was extracted with.")
        n, k = int(f.attrs.get(N_COMMITTED, 0)), len(items)
        feats.resize(n + k, axis=0)
        ids.resize(n + k, axis=0)
        half = k // 2
        feats[n:n + half] = block[:half]
        if self._kill_now():
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: die in the middle of a batch
        feats[n + half:n + k] = block[half:]
        ids[n:n + k] = [img_id for img_id, _ in items]
        f.flush()
        f.attrs[N_COMMITTED] = n + k
        f.flush()

    def close(self) -> None:
        """Waits for the queue, then closes the file (still ``.partial``)."""
        if self.file is None:
            return
        self._queue.put(None)
        self._thread.join()
        self.file.close()
        self.file = None
        if self.error is not None:
            raise self.error

    def finish(self, attrs: dict) -> None:
        """Marks the file complete and renames it to the final name."""
        self.close()
        finalize_partial(self.output, attrs)

    def abort(self) -> None:
        try:
            self.close()
        except BaseException:  # noqa: BLE001 - closing after a failure; the first error is what matters
            pass


def create_contiguous(f: h5py.File, block_shape: tuple, dtype) -> None:
    """The empty, resizable datasets of the contiguous layout: one chunk per image (what ``read_batch`` reads)."""
    f.create_dataset(FEATURES, shape=(0, *block_shape), maxshape=(None, *block_shape), dtype=dtype,
                     chunks=(1, *block_shape))
    f.create_dataset(IDS, shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(4096,))
    f.attrs[LAYOUT_ATTR] = CONTIGUOUS
    f.attrs[N_COMMITTED] = 0
