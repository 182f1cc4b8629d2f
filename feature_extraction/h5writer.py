"""Crash-safe, resumable writing of one feature file per dataset split (DESIGN.md §6).

Layout of ``<split>.h5``: one dataset per image id at the root (``(36, C)`` float16, or ``(49, C)`` with
``--keep-grid``), provenance as root attributes. Protocol:

* A run writes into ``<split>.h5.partial`` and renames it to ``<split>.h5`` (fsync, then ``os.replace``) only when
  the split is complete, so a reader never sees a half-extracted split and an existing complete file is never
  modified in place (adding images to it first copies it to ``.partial``, atomically).
* Each batch: create the batch's datasets → flush → set each dataset's ``complete`` attribute → flush. After a
  kill (even ``kill -9``) the ``.partial`` file holds everything up to the last flush; on reopen, datasets without
  ``complete`` are deleted and only the missing ids are extracted again. A ``.partial`` that HDF5 cannot open any
  more is discarded (with a warning) and started again.
* A test hook, environment variable ``FEATURE_EXTRACTION_KILL_AFTER_BATCHES=k``, SIGKILLs the process while it is
  writing batch k+1 (after half of its datasets are created, before any flush).
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

from vlrouting.errors import ConfigError
from vlrouting.fileio import atomic_path, fsync_replace

COMPLETE = "complete"
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


def scan(output: Path) -> tuple[str | None, set[str], dict]:
    """State of an output: (where, done ids, stored attributes); where ∈ {None, "final", "partial"}.

    A ``.partial`` is cleaned on the way: datasets without the ``complete`` mark are deleted; an unreadable one is
    removed.
    """
    part = partial_path(output)
    if part.exists():
        try:
            with h5py.File(part, "r+") as f:
                attrs = read_attrs(f)
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
                return "final", set(f.keys()), read_attrs(f)
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

    def __init__(self, output: Path, where: str | None, attrs: dict, queue_size: int = 4):
        self.output = Path(output)
        self.partial = partial_path(self.output)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if where == "final":
            with atomic_path(self.partial) as tmp:
                shutil.copyfile(self.output, tmp)
        self.file = h5py.File(self.partial, "r+" if where in ("final", "partial") else "w")
        for key, value in attrs.items():
            self.file.attrs[key] = value
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

    def _write(self, items: list[tuple[str, np.ndarray]]) -> None:
        f = self.file
        for n, (img_id, arr) in enumerate(items):
            if img_id in f:
                del f[img_id]
            f.create_dataset(img_id, data=arr)
            if self._kill_at is not None and self.batches == self._kill_at and n == len(items) // 2:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: die in the middle of a batch
        f.flush()
        for img_id, _ in items:
            f[img_id].attrs[COMPLETE] = np.uint8(1)
        f.flush()
        self.written += len(items)
        self.batches += 1

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
