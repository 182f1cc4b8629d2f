"""FeatureStore: the three on-disk layouts, pooling, batch reads, DataLoader workers, errors; ``verify``."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from feature_extraction.__main__ import main as fe_main
from vlrouting.data.features import (
    FeatureStore, adaptive_max_pool_grid, channel_dims, check_finite, open_feature_store,
)
from vlrouting.errors import ConfigError, DataError, MissingFeatureError

IDS = [f"COCO_train2014_{i:012d}" for i in (9, 25, 30)] + [f"COCO_val2014_{i:012d}" for i in (42, 73)]
C = 2048


def _grid(seed: int) -> np.ndarray:
    """A 7×7×C grid as 49 row-major float16 tokens."""
    return np.random.default_rng(seed).standard_normal((49, C)).astype(np.float16)


def _torch_pool(tokens: np.ndarray, side: int = 6) -> np.ndarray:
    s = int(np.sqrt(tokens.shape[0]))
    g = torch.from_numpy(tokens.astype(np.float32)).T.reshape(1, -1, s, s)
    return F.adaptive_max_pool2d(g, (side, side)).flatten(2).transpose(1, 2)[0].numpy()


def _write_contiguous(path: Path, arrays: dict[str, np.ndarray], **storage) -> None:
    """The contiguous layout by hand, rows in reverse id order (the reader must go through the id index)."""
    ids = sorted(arrays, reverse=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["layout"] = "contiguous"
        f.attrs["model_fingerprint"] = "abc"
        f.create_dataset("features", data=np.stack([arrays[i] for i in ids]), **storage)
        f.create_dataset("ids", data=ids, dtype=h5py.string_dtype())


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """The same grids in every layout: ours per image pooled (36) and keep-grid (49), VL-Adapter's per-image files
    (49), ours contiguous pooled and keep-grid, each with two storage variants (one per split file), and a folder
    mixing a per-image pooled file with a contiguous keep-grid one."""
    base = tmp_path_factory.mktemp("feats")
    grids = {i: _grid(k) for k, i in enumerate(IDS)}
    pooled = base / "pooled" / "COCO" / "clip_features"
    keep = base / "keep" / "COCO" / "clip_features"
    vla = base / "vla" / "COCO" / "clip_features"
    contig, contig_keep, mixed = (base / name / "COCO" / "clip_features" for name in ("contig", "contig_keep", "mixed"))
    for d in (pooled, keep, vla / "data_clip_RN101_att", contig, contig_keep, mixed):
        d.mkdir(parents=True)
    split = {s: {i: g for i, g in grids.items() if s in i} for s in ("train2014", "val2014")}
    pool = lambda arrays: {i: _torch_pool(g).astype(np.float16) for i, g in arrays.items()}  # noqa: E731
    # chunked per image, no filter: direct chunk reads; gzip: HDF5 decodes row by row; unchunked: one union read
    _write_contiguous(contig / "train2014.h5", pool(split["train2014"]), chunks=(1, 36, C))
    _write_contiguous(contig / "val2014.h5", pool(split["val2014"]), chunks=(1, 36, C), compression="gzip")
    _write_contiguous(contig_keep / "train2014.h5", split["train2014"])
    _write_contiguous(contig_keep / "val2014.h5", split["val2014"], chunks=(1, 49, C))
    _write_contiguous(mixed / "val2014.h5", split["val2014"], chunks=(1, 49, C))
    with h5py.File(mixed / "train2014.h5", "w") as f:
        for i, g in pool(split["train2014"]).items():
            f.create_dataset(i, data=g)
    for split in ("train2014", "val2014"):
        with h5py.File(pooled / f"{split}.h5", "w") as fp, h5py.File(keep / f"{split}.h5", "w") as fk:
            fp.attrs["model_fingerprint"] = fk.attrs["model_fingerprint"] = "abc"
            for i, g in grids.items():
                if split in i:
                    fp.create_dataset(i, data=_torch_pool(g).astype(np.float16))
                    fk.create_dataset(i, data=g)
    for i, g in grids.items():
        with h5py.File(vla / "data_clip_RN101_att" / f"{i}.h5", "w") as f:
            f.create_dataset(f"{i}/features", data=g)
    return {"grids": grids, "pooled": pooled, "keep": keep, "vla": vla, "contig": contig, "contig_keep": contig_keep,
            "mixed": mixed, "base": base}


LAYOUTS = ("pooled", "keep", "vla", "contig", "contig_keep", "mixed")


def test_layouts_agree_and_match_torch_pooling(roots):
    stores = [FeatureStore(roots[k]) for k in ("pooled", "keep", "vla")]
    for img_id, grid in roots["grids"].items():
        want = _torch_pool(grid)
        outs = [s[img_id] for s in stores]
        for out in outs:
            assert out.shape == (36, C) and out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
        # fp16 storage: pooling before or after the cast gives the same bits (max commutes with rounding)
        np.testing.assert_array_equal(outs[0], outs[1])
        np.testing.assert_array_equal(outs[1], outs[2])
        np.testing.assert_array_equal(outs[2], want.astype(np.float16).astype(np.float32))
    for s in stores:
        assert s.ids() == set(IDS) and IDS[0] in s and "COCO_train2014_000000000001" not in s and len(s) == len(IDS)


def test_contiguous_layout_reads_like_the_others(roots):
    modes = {}
    for key in ("contig", "contig_keep"):
        store = FeatureStore(roots[key])
        assert store.ids() == set(IDS) and len(store) == len(IDS) and IDS[3] in store and "features" not in store
        assert store.locate(IDS[3]).endswith("val2014.h5")
        modes[key] = [store._contiguous_dataset(i)[2] for i in range(2)]  # train2014, val2014
        ref = FeatureStore(roots["pooled"])
        for img_id in IDS:
            np.testing.assert_array_equal(store[img_id], ref[img_id])
    # every read path of the contiguous layout is exercised below
    assert modes == {"contig": ["chunk", "rows"], "contig_keep": ["union", "chunk"]}


ID_LISTS = {
    "sorted": IDS,
    "unsorted": [IDS[3], IDS[0], IDS[4], IDS[2], IDS[1]],
    "duplicates": [IDS[2], IDS[0], IDS[2], IDS[4], IDS[0], IDS[0]],
    "one file": [IDS[4], IDS[3]],
    "one id": [IDS[1]],
}


@pytest.mark.parametrize("key", LAYOUTS)
def test_read_batch_equals_per_sample_reads(roots, key):
    store = FeatureStore(roots[key])
    for name, ids in ID_LISTS.items():
        got = store.read_batch(ids)
        assert got.shape == (len(ids), 36, C) and got.dtype == np.float32 and got.flags["C_CONTIGUOUS"], name
        np.testing.assert_array_equal(got, np.stack([store[i] for i in ids]), err_msg=name)
    ids = ID_LISTS["unsorted"]
    half = store.read_batch(ids, dtype=np.float16)
    np.testing.assert_array_equal(half, np.stack([store[i] for i in ids]).astype(np.float16))
    buf = np.full((len(ids), 36, C), np.nan, np.float32)
    assert store.read_batch(ids, out=buf) is buf
    shapes = []
    got = store.read_batch(ids, out=lambda shape: shapes.append(shape) or buf)
    assert got is buf and shapes == [(len(ids), 36, C)]
    if key != "pooled" and key != "contig" and key != "mixed":  # the 7×7 grid itself
        grid = FeatureStore(roots[key], n_boxes=49)
        np.testing.assert_array_equal(grid.read_batch(ids), np.stack([roots["grids"][i] for i in ids]).astype(np.float32))


def _small_file(path: Path, blocks: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for i, x in blocks.items():
            f.create_dataset(i, data=x)


def test_read_batch_errors(roots, tmp_path):
    store = FeatureStore(roots["contig"])
    with pytest.raises(MissingFeatureError, match="'COCO_val2014_000000999999'.*val2014.h5"):
        store.read_batch([IDS[0], "COCO_val2014_000000999999"])
    with pytest.raises(ValueError, match="at least one"):
        store.read_batch([])
    with pytest.raises(ValueError, match="not int32"):
        store.read_batch(IDS[:1], dtype=np.int32)
    with pytest.raises(ValueError, match="shape"):
        store.read_batch(IDS[:2], out=np.empty((2, 36, 16), np.float32))
    with pytest.raises(ConfigError, match="n_boxes 49"):
        FeatureStore(roots["mixed"], n_boxes=49).read_batch([IDS[3], IDS[0]])
    ok, inf, nan = (np.ones((36, 16), np.float16) for _ in range(3))
    inf[5, 7], nan[35, 15] = np.inf, np.nan
    _small_file(tmp_path / "nan" / "a.h5", {"im0": ok, "im1": inf})
    _write_contiguous(tmp_path / "nan_c" / "a.h5", {"im0": ok, "im1": nan}, chunks=(1, 36, 16))
    grid = np.ones((49, 16), np.float32)
    grid[0, 0] = -np.inf  # the 2×2 max pooling would hide it: checked before pooling
    _small_file(tmp_path / "nan_g" / "a.h5", {"im0": np.ones((49, 16), np.float32), "im1": grid})
    for d in ("nan", "nan_c", "nan_g"):
        for dtype in (np.float32, np.float16):
            with pytest.raises(DataError, match=rf"image 'im1' in {tmp_path / d / 'a.h5'} contain NaN or Inf"):
                FeatureStore(tmp_path / d).read_batch(["im0", "im1"], dtype=dtype)
    np.testing.assert_array_equal(FeatureStore(tmp_path / "nan").read_batch(["im0"])[0], ok.astype(np.float32))
    _small_file(tmp_path / "dims" / "a.h5", {"im0": ok, "im1": np.ones((36, 8), np.float16)})
    with pytest.raises(DataError, match=r"differ in size: 'im1' in .*a.h5 has C=8, 'im0' .* has C=16"):
        FeatureStore(tmp_path / "dims").read_batch(["im0", "im1"])


def test_n_boxes_49_and_general_pooling(roots):
    g = roots["grids"][IDS[0]]
    for key in ("keep", "vla"):
        np.testing.assert_array_equal(FeatureStore(roots[key], n_boxes=49)[IDS[0]], g.astype(np.float32))
    with pytest.raises(ConfigError, match="n_boxes 49"):
        FeatureStore(roots["pooled"], n_boxes=49)[IDS[0]]
    with pytest.raises(ConfigError, match="square"):
        FeatureStore(roots["pooled"], n_boxes=40)
    x = np.random.default_rng(0).standard_normal((196, 8)).astype(np.float32)
    for side in (1, 3, 5, 6, 13):
        np.testing.assert_array_equal(adaptive_max_pool_grid(x, side), _torch_pool(x, side))
    xb = np.random.default_rng(1).standard_normal((3, 49, 8)).astype(np.float32)  # batched, into out
    for side in (3, 6):
        out = np.empty((3, side * side, 8), np.float32)
        assert adaptive_max_pool_grid(xb, side, out=out) is out
        np.testing.assert_array_equal(out, np.stack([_torch_pool(x1, side) for x1 in xb]))
    single = FeatureStore(roots["pooled"] / "val2014.h5")
    assert single.ids() == {i for i in IDS if "val2014" in i}


def test_missing_id_and_bad_paths(roots, tmp_path):
    store = open_feature_store(roots["base"] / "pooled", "COCO")
    with pytest.raises(MissingFeatureError) as err:
        store["COCO_val2014_000000999999"]
    msg = str(err.value)
    assert "COCO_val2014_000000999999" in msg and "train2014.h5" in msg and "--dataset coco" in msg
    assert isinstance(err.value, KeyError) and isinstance(err.value, DataError)
    with pytest.raises(MissingFeatureError, match="data_clip_RN101_att"):
        FeatureStore(roots["vla"])["nope"]
    with pytest.raises(DataError, match="does not exist"):
        open_feature_store(tmp_path, "nlvr")
    (tmp_path / "GQA" / "clip_features").mkdir(parents=True)
    (tmp_path / "GQA" / "clip_features" / "testdev.h5.partial").write_bytes(b"")
    with pytest.raises(DataError, match="unfinished testdev.h5.partial"):
        open_feature_store(tmp_path, "GQA")
    with pytest.raises(ConfigError, match="unknown feature dataset"):
        open_feature_store(tmp_path, "flickr")
    assert open_feature_store(roots["base"] / "pooled", "coco").path == store.path


class _VQALike(torch.utils.data.Dataset):
    def __init__(self, store, ids):
        self.store, self.ids = store, ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return torch.from_numpy(self.store[self.ids[i]])


@pytest.mark.parametrize("key", ["pooled", "vla"])
def test_dataloader_workers(roots, key):
    store = FeatureStore(roots[key])
    want = {i: store[i] for i in IDS}  # handles opened in the parent before the workers fork
    ids = IDS * 4
    loader = torch.utils.data.DataLoader(_VQALike(store, ids), batch_size=4, num_workers=2)
    got = torch.cat(list(loader))
    np.testing.assert_array_equal(got.numpy(), np.stack([want[i] for i in ids]))
    clone = pickle.loads(pickle.dumps(store))  # spawn-style workers
    assert clone._handles == {} and np.array_equal(clone[IDS[1]], want[IDS[1]])


def _ann(tmp_path: Path, name: str, ids: list[str]) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps([{"img_id": i, "sent": "q?", "question_id": k, "label": {}} for k, i in enumerate(ids)]))
    return p


def test_verify_good_and_bad(roots, tmp_path, capsys):
    good = _ann(tmp_path, "good.json", IDS)
    assert fe_main(["verify", "--annotations", str(good), "--features", str(roots["pooled"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("OK: all 5 image ids") and "36×2048 float16" in out[0]
    nlvr = tmp_path / "nlvr.json"
    nlvr.write_text(json.dumps([{"uid": "u", "identifier": "x-0-0-0", "img0": IDS[0], "img1": "gone-img1",
                                 "sent": "s", "label": 1}]))
    assert fe_main(["verify", "--annotations", str(good), str(nlvr), "--features", str(roots["vla"])]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("FAIL: 1 of 6 referenced image ids are missing") and out[1] == "missing: gone-img1"
    bad = tmp_path / "bad" / "clip_features"
    bad.mkdir(parents=True)
    with h5py.File(bad / "a.h5", "w") as f:
        x = np.zeros((36, 16), np.float16)
        x[3, 4] = np.nan
        f.create_dataset("im0", data=x)
        f.create_dataset("im1", data=np.zeros((30, 16), np.float16))
        f.create_dataset("im2", data=np.zeros((36, 16), np.float16))
    assert fe_main(["verify", "--annotations", str(_ann(tmp_path, "b.json", ["im0", "im1", "im2"])),
                    "--features", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "1 have a wrong shape" in out and "1 contain NaN/Inf" in out and "nonfinite: im0" in out
    assert fe_main(["verify", "--annotations", str(good), "--features", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_convert_per_image_to_contiguous(roots, tmp_path, capsys):
    out = tmp_path / "conv" / "COCO" / "clip_features"
    for split in ("train2014", "val2014"):
        argv = ["convert", "--input", str(roots["pooled"] / f"{split}.h5"), "--output", str(out / f"{split}.h5")]
        assert fe_main(argv) == 0
    assert "converted 2 images (36×2048 float16)" in capsys.readouterr().out.splitlines()[-1]
    with h5py.File(out / "train2014.h5", "r") as f, h5py.File(roots["pooled"] / "train2014.h5", "r") as src:
        assert f.attrs["layout"] == "contiguous" and f.attrs["model_fingerprint"] == "abc"
        assert f.attrs["n_images"] == f.attrs["n_committed"] == 3 and bool(f.attrs["complete"])
        assert f["features"].chunks == (1, 36, C) and f["features"].dtype == np.float16
        ids = [i.decode() for i in f["ids"][()]]
        assert ids == sorted(src.keys())
        for k, i in enumerate(ids):  # the stored bits, unchanged
            np.testing.assert_array_equal(f["features"][k], src[i][()])
    store, ref = FeatureStore(out), FeatureStore(roots["pooled"])
    assert store._contiguous_dataset(0)[2] == "chunk"
    np.testing.assert_array_equal(store.read_batch(IDS[::-1]), ref.read_batch(IDS[::-1]))
    assert fe_main(["verify", "--annotations", str(_ann(tmp_path, "good.json", IDS)), "--features", str(out)]) == 0
    assert capsys.readouterr().out.startswith("OK: all 5 image ids")
    # VL-Adapter's archive: the 49-token grids as stored; read, they equal the archive's pooled features
    grid = tmp_path / "vconv" / "all.h5"
    assert fe_main(["convert", "--input", str(roots["vla"] / "data_clip_RN101_att"), "--output", str(grid)]) == 0
    np.testing.assert_array_equal(FeatureStore(grid).read_batch(IDS), FeatureStore(roots["vla"]).read_batch(IDS))
    np.testing.assert_array_equal(FeatureStore(grid, n_boxes=49)[IDS[2]], roots["grids"][IDS[2]].astype(np.float32))
    capsys.readouterr()
    # refusals, one sentence each, nothing written
    odd = tmp_path / "odd.h5"
    _small_file(odd, {"a": np.ones((36, 16), np.float16), "b": np.ones((36, 16), np.float32)})
    cases = [
        (["--input", str(roots["pooled"] / "val2014.h5"), "--output", str(out / "val2014.h5")], "already exists"),
        (["--input", str(out / "val2014.h5"), "--output", str(tmp_path / "x.h5")], "already has the contiguous"),
        (["--input", str(odd), "--output", str(tmp_path / "y" / "odd.h5")], "'b' in"),
        (["--input", str(tmp_path / "none.h5"), "--output", str(tmp_path / "z.h5")], "does not exist"),
        (["--input", str(odd), "--output", str(tmp_path / "z.hdf5")], "must end in .h5"),
    ]
    for argv, needle in cases:
        assert fe_main(["convert"] + argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "y").exists()  # the failed conversion left nothing, not even the folder it made


# ----------------------------------------------------------------------------------------- non-finite features


def test_check_finite_names_the_image_and_file_of_one_or_of_a_stacked_block():
    good = np.ones((36, 4), np.float16)
    assert check_finite(good, "a", "f.h5") is good
    bad = good.copy()
    bad[5, 1] = np.inf
    with pytest.raises(DataError, match=r"^features of image 'a' in f\.h5 contain NaN or Inf values; re-extract"):
        check_finite(bad, "a", lambda: "f.h5")  # the file may be given lazily
    block = np.stack([good, bad, good, bad.astype(np.float32) * np.nan])  # a batched read of four images
    with pytest.raises(DataError, match=r"image 'id1' \(and 1 more image\(s\) of that read\) in b\.h5"):
        check_finite(block, ["id0", "id1", "id2", "id3"], "b.h5")
    check_finite(np.stack([good, good]), ["x", "y"], "b.h5")


class _NanSet(torch.utils.data.Dataset):
    def __init__(self, store):
        self.store = store

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.store[IDS[i]]


def test_nan_features_raise_one_sentence_also_from_a_dataloader_worker(roots, tmp_path):
    folder = tmp_path / "COCO" / "clip_features"
    folder.mkdir(parents=True)
    with h5py.File(folder / "train2014.h5", "w") as f:
        f.create_dataset(IDS[0], data=_torch_pool(roots["grids"][IDS[0]]).astype(np.float16))
        broken = _torch_pool(roots["grids"][IDS[1]]).astype(np.float16)
        broken[0, 0] = np.nan
        f.create_dataset(IDS[1], data=broken)
    store = FeatureStore(folder)
    assert store[IDS[0]].shape == (36, C)
    sentence = (f"features of image '{IDS[1]}' in {folder / 'train2014.h5'} contain NaN or Inf values; re-extract "
                f"that file (python -m feature_extraction extract) or drop the image from the annotations.")
    with pytest.raises(DataError) as direct:
        store[IDS[1]]
    assert str(direct.value) == sentence
    # torch re-raises a worker's exception as type(text with the worker's traceback): the sentence survives alone
    loader = torch.utils.data.DataLoader(_NanSet(store), batch_size=None, num_workers=1)
    with pytest.raises(DataError) as from_worker:
        list(loader)
    assert str(from_worker.value) == sentence
    assert channel_dims(store) == {str(folder / "train2014.h5"): C}
