"""The one atomic writer (vlrouting.fileio): permissions, nothing left on failure, orphans, writability probe."""

from __future__ import annotations

import os
import stat

import pytest

from vlrouting.errors import DataError
from vlrouting.fileio import (
    atomic_directory, atomic_path, atomic_write_text, check_writable, is_plain_name, remove_orphans,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_gives_normal_permissions_and_replaces(tmp_path):
    target = tmp_path / "new" / "deeper" / "results.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert _mode(target) == 0o666 & ~_umask()  # not mkstemp's 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]


def test_atomic_path_failure_leaves_the_old_file_and_no_new_folder(tmp_path):
    old = tmp_path / "weights.safetensors"
    old.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(old) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert old.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["weights.safetensors"]
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a" / "b" / "c.bin") as tmp:
            raise RuntimeError("writer failed")
    assert sorted(os.listdir(tmp_path)) == ["weights.safetensors"]  # the folders it made are gone too


def test_before_replace_runs_once_the_file_is_complete(tmp_path):
    seen = []
    with atomic_path(tmp_path / "state.pt", before_replace=lambda: seen.append(sorted(os.listdir(tmp_path)))) as t:
        t.write_text("complete")
    assert len(seen) == 1 and len(seen[0]) == 1 and seen[0][0].startswith(".state.pt.")  # not yet renamed
    assert (tmp_path / "state.pt").read_text() == "complete"


def test_atomic_directory_publishes_every_file_or_nothing(tmp_path):
    out = tmp_path / "backbone"
    with atomic_directory(out) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "vocab.txt").write_text("a")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["config.json", "sub", "sub/vocab.txt"]
    assert _mode(out / "config.json") == 0o666 & ~_umask()
    assert sorted(os.listdir(tmp_path)) == ["backbone"]
    for failed in (tmp_path / "failed", tmp_path / "new" / "deeper" / "failed"):
        with pytest.raises(RuntimeError):
            with atomic_directory(failed) as tmp:
                (tmp / "model.safetensors").write_text("half")
                raise RuntimeError("save_pretrained failed")
        assert sorted(os.listdir(tmp_path)) == ["backbone"]  # nor the folders made on the way
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError, match="a_file: it is a file, not a folder"):
        with atomic_directory(tmp_path / "a_file"):
            pass


def test_remove_orphans_removes_only_our_temporary_names(tmp_path):
    ours = [".training_state.pt.k2j_x9ab.tmp", ".adapter_model.safetensors.abcdefgh.tmp"]
    theirs = [".hidden", "notes.tmp", ".x.short.tmp", "training_state.pt", ".vimrc.swp"]
    for name in ours + theirs:
        (tmp_path / name).write_text("x")
    (tmp_path / ".backbone.qwertyui.tmp").mkdir()  # an atomic_directory orphan
    (tmp_path / ".backbone.qwertyui.tmp" / "config.json").write_text("{}")
    removed = remove_orphans(tmp_path, names=["training_state.pt"])
    assert [p.name for p in removed] == [".training_state.pt.k2j_x9ab.tmp"]
    removed = remove_orphans(tmp_path)
    assert sorted(p.name for p in removed) == [".adapter_model.safetensors.abcdefgh.tmp", ".backbone.qwertyui.tmp"]
    assert sorted(os.listdir(tmp_path)) == sorted(theirs)
    assert remove_orphans(tmp_path / "missing") == []


def test_check_writable_probes_without_leaving_anything(tmp_path):
    check_writable(tmp_path / "snap" / "exp" / "run", "output.snap_dir")
    assert os.listdir(tmp_path) == []
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError, match=r"output.snap_dir .*a_file/snap cannot be created: .*a_file is a file"):
        check_writable(tmp_path / "a_file" / "snap", "output.snap_dir")
    assert os.listdir(tmp_path) == ["a_file"]


@pytest.mark.parametrize("name, plain", [
    ("COCO_val2014_000000391895", True), ("2375429", True), ("a.b", True), ("..x", True),
    ("", False), (".", False), ("..", False), ("../x", False), ("a/b", False), ("a\\b", False), ("a\0b", False),
])
def test_is_plain_name(name, plain):
    assert is_plain_name(name) is plain
