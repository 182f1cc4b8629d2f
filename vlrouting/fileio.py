"""Atomic file writes: a temporary file in the same folder, fsync, then ``os.replace``.

A reader never sees a half-written file, and a failure (or a kill) leaves the previous file untouched. Every
writer of run outputs, weights, checkpoints, metrics, predictions, tables, feature files and exported backbones goes
through here:

* :func:`atomic_write_bytes` / :func:`atomic_write_text` for data already in memory;
* :func:`atomic_path` for writers that want a file name (``torch.save``, safetensors, h5py, ``shutil.copyfile``);
* :func:`atomic_directory` for writers that fill a folder (``save_pretrained``);
* :func:`fsync_replace` to publish a file written elsewhere under its final name (the extractor's ``.partial``).

Temporary names follow one scheme, ``.<final name>.<8 random characters>.tmp`` beside the target, so that a run can
remove what a killed writer left behind (:func:`remove_orphans`). Published files get the usual permissions
(``0o666 & ~umask``), not the ``0o600`` of ``mkstemp``. :func:`check_writable` answers "can this output be created?"
before any work starts.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from vlrouting.errors import DataError

#: ``tempfile``'s random part: 8 characters of ``[a-z0-9_]``.
_ORPHAN = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cannot_write(path: Path, exc: OSError) -> DataError:
    return DataError(f"cannot write {path}: {exc.strerror or exc}; choose a writable output path.")


def make_folder(folder: str | os.PathLike) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created, outermost first (for :func:`remove_created`)."""
    folder = Path(folder)
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def remove_created(folders: list[Path]) -> None:
    """Undo :func:`make_folder`: remove the folders it created, innermost first, as long as they are empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty: someone else's files are in it now
            return


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; best effort (some filesystems refuse to fsync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _seal(path: Path, durable: bool = True) -> None:
    """Usual permissions and (``durable``) data on disk, before the file gets its final name."""
    os.chmod(path, 0o666 & ~_umask())
    if durable:
        _fsync_file(path)


def _publish(src: Path, dst: Path, durable: bool = True) -> None:
    os.replace(src, dst)
    if durable:
        _fsync_dir(dst.parent)


def fsync_replace(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Publish the complete file ``src`` as ``dst``: usual permissions, fsync, ``os.replace``, fsync of the folder."""
    src, dst = Path(src), Path(dst)
    _seal(src)
    _publish(src, dst)
    return dst


@contextmanager
def atomic_path(path: str | os.PathLike, before_replace: Callable[[], None] | None = None,
                durable: bool = True) -> Iterator[Path]:
    """Yield a temporary file name beside ``path``; when the block ends normally the file is published as ``path``
    (:func:`fsync_replace`), when it raises (or the process is interrupted) the temporary file is removed.

    ``before_replace`` runs after the fsync and before the rename (fault injection in the checkpoint tests).
    ``durable=False`` skips the fsyncs (still atomic for readers and kills, not for power loss): only for bulk
    files that are cheap to make again, e.g. the thousands of images of the synthetic benchmark.
    """
    path = Path(path)
    try:
        created = make_folder(path.parent)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    tmp = Path(name)
    try:
        yield tmp
        _seal(tmp, durable)
        if before_replace is not None:
            before_replace()
        _publish(tmp, path, durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        remove_created(created)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    path = Path(path)
    with atomic_path(path, durable=durable) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block ends normally every file written there is published
    into ``path`` (created if needed) with :func:`fsync_replace`; when it raises, the temporary folder is removed and
    ``path`` is left as it was (or not created)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"cannot write into {path}: it is a file, not a folder; choose another output folder.")
    try:
        created = make_folder(path.parent)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    try:
        yield tmp
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        for src in files:
            dst = path / src.relative_to(tmp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            fsync_replace(src, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_created(created)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def remove_orphans(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Remove the temporary files (and folders) of :func:`atomic_path` / :func:`atomic_directory` that a killed
    writer left in ``folder``; with ``names``, only those of these final names. Returns what was removed."""
    folder = Path(folder)
    wanted = None if names is None else set(names)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _ORPHAN.match(entry.name)
        if match is None or (wanted is not None and match["name"] not in wanted):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def is_plain_name(text: str) -> bool:
    """Whether ``text`` names one entry *inside* a folder: not empty, no path separator, not ``.``/``..``, no NUL.
    Ids and names that become file or folder names (image ids, ``output.run``) must be plain."""
    return bool(text) and text not in (".", "..") and not any(c in text for c in ("/", "\\", "\0"))


def check_writable(path: str | os.PathLike, option: str) -> None:
    """Raise a one-sentence DataError unless ``path`` (a folder, or a file's folder) exists as a writable folder or
    can be created: the nearest existing ancestor must be a folder in which we can create a folder. The probe
    folder is removed at once; nothing else is created."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists():
        if probe == probe.parent:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise DataError(f"{option} {path} cannot be created: {probe} is a file, not a folder; choose a writable "
                        f"folder for {option}.")
    try:
        Path(tempfile.mkdtemp(dir=probe, prefix=".vlrouting-write-check.", suffix=".tmp")).rmdir()
    except OSError as exc:
        raise DataError(f"{option} {path} is not writable ({probe}: {exc.strerror or exc}); choose a writable folder "
                        f"for {option}.") from exc
