"""Feature extraction on synthetic images with a tiny random-init open_clip ResNet (RN-tiny-w16, 512 channels)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from feature_extraction import model as M
from feature_extraction.__main__ import main as fe_main
from feature_extraction.extract import ExtractOptions, Extractor, extract, extract_dataset
from feature_extraction.h5writer import KILL_ENV
from feature_extraction.images import folder_job, load_image, preset_jobs
from feature_extraction.verify import verify
from vlrouting.data import synthetic
from vlrouting.data.features import FeatureStore, open_feature_store
from vlrouting.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = dict(model="RN-tiny-w16", pretrained="none", batch_size=4, workers=1, progress=False)
CLI_TINY = ["--model", "RN-tiny-w16", "--pretrained", "none", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a small shared CPU, OpenMP threads spinning for a core cost 10× on these tiny convs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _contents(path: Path) -> dict[str, np.ndarray]:
    """id → stored block, for either layout."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("layout") == "contiguous":
            return {i.decode(): f["features"][k] for k, i in enumerate(f["ids"][()])}
        return {k: f[k][()] for k in f}


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("ext") / "datasets"
    synthetic.generate(root, seed=0, n_coco=8, n_vg=3, n_gqa=2, n_nlvr=3, vqa_per_image=2, gqa_per_image=2,
                       nlvr_per_set=2)
    results = extract_dataset(root, "synthetic", recalibrate_bn=8, **TINY)
    return root, results


def test_synthetic_preset_files_and_provenance(syn):
    root, results = syn
    expected = {"COCO": {"train2014", "val2014"}, "VG": {"train"}, "GQA": {"testdev"}, "nlvr": {"train", "dev", "test"}}
    for ds, splits in expected.items():
        assert {p.stem for p in (root / ds / "clip_features").glob("*.h5")} == splits
    assert all(r.finalized and not r.bad for r in results)
    fps = set()
    for job in preset_jobs(root, "synthetic"):
        data = _contents(job.output)
        assert set(data) == set(job.images) and data
        for arr in data.values():
            assert arr.shape == (36, 512) and arr.dtype == np.float16 and np.isfinite(arr).all()
        with h5py.File(job.output, "r") as f:
            a = dict(f.attrs)
        assert a["model"] == "RN-tiny-w16" and a["pretrained"] == "none" and a["recalibrate_bn"] == 8
        assert a["grid"] == "6x6" and a["n_tokens"] == 36 and a["dtype"] == "float16" and bool(a["complete"])
        assert "open_clip_torch" in a["versions"] and "before attention pooling" in a["layer"]
        fps.add(a["model_fingerprint"])
    assert len(fps) == 1  # one network for every dataset and split
    # recalibrated BatchNorm statistics: features of order 1, not the ~1e-3 of a raw random CNN
    x = np.stack(list(_contents(root / "COCO/clip_features/train2014.h5").values())).astype(np.float32)
    assert x.std() > 0.1
    # the reader and verify see them
    store = open_feature_store(root, "nlvr")
    rec = json.loads((root / "nlvr/valid.json").read_text())[0]
    assert store[rec["img0"]].shape == (36, 512) and store[rec["img1"]].dtype == np.float32
    for ann, ds in (("vqa/karpathy_train.json", "COCO"), ("COCO/dataset_coco.json", "COCO"), ("GQA/train.json", "VG"),
                    ("GQA/valid.json", "VG"), ("GQA/testdev.json", "GQA"), ("nlvr/test.json", "nlvr")):
        ok, verdict, _ = verify([root / ann], root / ds / "clip_features")
        assert ok, verdict


def test_pooling_equals_direct_model_and_keep_grid(syn, tmp_path):
    root, _ = syn
    jobs = preset_jobs(root, "synthetic")
    ex = Extractor(ExtractOptions(recalibrate_bn=8, standardize=True, **TINY), jobs)  # same sample → same network
    ex.ensure_model()
    coco = jobs[0]
    with h5py.File(coco.output, "r") as f:
        assert f.attrs["model_fingerprint"] == ex.fingerprint
        stored = {k: f[k][()] for k in f}
    first = list(coco.images)[:4]  # the run's first chunk
    x = torch.stack([load_image(coco.images[i]) for i in first])
    with torch.inference_mode():
        grid = M.grid_features(ex.visual, x)
    assert grid.shape == (4, 512, 7, 7)
    pooled = F.adaptive_max_pool2d(grid, (6, 6)).flatten(2).transpose(1, 2)
    norm = ex.visual.token_standardizer  # the synthetic preset standardises each channel (recalibration sample)
    pooled = ((pooled - norm.mean) / norm.std).half().numpy()
    for k, i in enumerate(first):
        np.testing.assert_array_equal(stored[i], pooled[k])
    # --keep-grid: the 49 row-major tokens of the grid; the reader pools them to what a pooled run stores
    images = root / "COCO/images/train2014"
    ex2 = Extractor(ExtractOptions(keep_grid=True, **TINY), [folder_job(images, tmp_path / "grid" / "t.h5")])
    ex2.run()
    kept = _contents(tmp_path / "grid" / "t.h5")
    with torch.inference_mode():
        grid2 = M.grid_features(ex2.visual, x)
    for k, i in enumerate(first):
        assert kept[i].shape == (49, 512)
        np.testing.assert_array_equal(kept[i], grid2[k].flatten(1).T.half().numpy())
    extract([folder_job(images, tmp_path / "pooled" / "t.h5")], ExtractOptions(**TINY))
    store_grid, store_pooled = FeatureStore(tmp_path / "grid"), FeatureStore(tmp_path / "pooled")
    for i in kept:
        np.testing.assert_array_equal(store_grid[i], store_pooled[i])
    assert FeatureStore(tmp_path / "grid", n_boxes=49)[first[0]].shape == (49, 512)


def test_token_standardizer_statistics(syn):
    """Standardised tokens of the calibration sample have per-channel mean 0 and std 1 (float64 reference)."""
    root, _ = syn
    images = sorted((root / "COCO/images/train2014").glob("*.jpg"))
    x = torch.stack([load_image(p) for p in images])
    visual = M.build_visual("RN-tiny-w16", "none", seed=0)
    M.recalibrate_bn(visual, [x[:3], x[3:]])
    raw = M.tokens(visual, x, 6).double().reshape(-1, 512)
    assert M.calibrate_standardizer(visual, [x[:2], x[2:]], 6) == len(images)
    np.testing.assert_allclose(visual.token_standardizer.mean.double(), raw.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(visual.token_standardizer.std.double(), raw.std(0, unbiased=False).clamp_min(1e-3),
                               rtol=1e-4, atol=1e-6)
    out = M.tokens(visual, x, 6).double().reshape(-1, 512)
    keep = raw.std(0) > 1e-2
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(0, unbiased=False)[keep], 1.0, rtol=1e-3)
    before = M.fingerprint(visual)
    visual.token_standardizer.std.mul_(2)
    assert M.fingerprint(visual) != before  # part of the network: files of another calibration are refused


def test_standardize_needs_recalibration_sample(syn):
    root, _ = syn
    with pytest.raises(ConfigError, match="--recalibrate-bn"):
        Extractor(ExtractOptions(standardize=True, **TINY), preset_jobs(root, "synthetic"))
    # a rerun with the other choice is refused by name instead of mixing two kinds of tokens
    with pytest.raises(ConfigError, match="standardize_tokens"):
        extract_dataset(root, "synthetic", recalibrate_bn=8, standardize=False, **TINY)


@pytest.mark.parametrize("layout", ["per-image", "contiguous"])
def test_resume_after_sigkill_equals_uninterrupted(syn, tmp_path, layout, capsys):
    root, _ = syn
    images = root / "COCO/images/train2014"  # 5 images → 3 batches of 2
    ref = tmp_path / "ref" / "x.h5"
    extract([folder_job(images, ref)], ExtractOptions(**{**TINY, "batch_size": 2, "workers": 0}))
    out = tmp_path / "run" / "x.h5"
    args = ["extract", "--images", str(images), "--output", str(out), "--batch-size", "2", "--layout", layout]
    env = {**os.environ, KILL_ENV: "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "feature_extraction"] + args + CLI_TINY, env=env, cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr  # SIGKILL while writing the second batch
    partial = out.with_name("x.h5.partial")
    assert partial.exists() and not out.exists()
    with h5py.File(partial, "r") as f:  # readable; holds the first batch
        if layout == "per-image":
            assert 2 <= len(f) <= 3
        else:
            assert f.attrs["layout"] == "contiguous" and f.attrs["n_committed"] == 2 and f["features"].shape[0] >= 2
    other = "per-image" if layout == "contiguous" else "contiguous"
    assert fe_main(args[:-1] + [other] + CLI_TINY) == 2  # the other layout is refused by name
    assert f"has the {layout} layout" in capsys.readouterr().err
    assert fe_main(args + CLI_TINY + ["--seed", "1"]) == 2  # other settings are refused by name
    assert "with other settings (seed 0 vs 1)" in capsys.readouterr().err
    with h5py.File(partial, "r+") as f:  # same settings, another network (e.g. a weights file replaced in place)
        fingerprint, f.attrs["model_fingerprint"] = f.attrs["model_fingerprint"], "0" * 64
    assert fe_main(args + CLI_TINY) == 2
    assert "was written by a network with another fingerprint (000000000000…" in capsys.readouterr().err
    with h5py.File(partial, "r+") as f:
        f.attrs["model_fingerprint"] = fingerprint
    assert fe_main(args + CLI_TINY) == 0
    assert "extracted 3 images (2 already done" in capsys.readouterr().out  # resumed, not restarted
    assert out.exists() and not partial.exists()
    got, want = _contents(out), _contents(ref)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    if layout == "contiguous":
        with h5py.File(out, "r") as f, h5py.File(ref, "r") as r:
            assert f["features"].shape == (5, 36, 512) and f["features"].chunks == (1, 36, 512)
            assert f.attrs["n_committed"] == 5 and f.attrs["n_images"] == 5 and bool(f.attrs["complete"])
            assert f.attrs["model_fingerprint"] == r.attrs["model_fingerprint"]
            assert list(_contents(out)) == sorted(want)  # rows in the extraction's (sorted) id order
        store, ref_store = FeatureStore(out), FeatureStore(ref)
        ids = sorted(want)[::-1] + sorted(want)[:1]
        np.testing.assert_array_equal(store.read_batch(ids), np.stack([ref_store[i] for i in ids]))
        store.close()  # HDF5 refuses a second open of one file with other locking flags in the same process
    # a rerun has nothing to do
    assert fe_main(args + CLI_TINY) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_bad_images_reported_fatal_unless_skip_bad(syn, tmp_path, capsys):
    root, _ = syn
    d = tmp_path / "imgs"
    d.mkdir()
    good = sorted((root / "COCO/images/train2014").glob("*.jpg"))[:3]
    for p in good:
        shutil.copy(p, d / p.name)
    (d / "COCO_train2014_000000000001.jpg").write_bytes(good[0].read_bytes()[:300])  # truncated JPEG
    (d / "COCO_train2014_000000000002.jpg").write_text("not an image")
    ann = tmp_path / "ann.json"
    ids = [p.stem for p in good] + ["COCO_train2014_000000000001", "COCO_train2014_000000000002",
                                    "COCO_train2014_000000000003"]  # the last one has no file
    ann.write_text(json.dumps([{"img_id": i} for i in ids]))
    out = tmp_path / "feats" / "train2014.h5"
    args = ["extract", "--images", str(d), "--output", str(out), "--annotations", str(ann)] + CLI_TINY
    assert fe_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 image(s) could not be read" in err[0] and "--skip-bad" in err[0]
    report = out.with_name("train2014.bad_images.txt")
    lines = report.read_text().splitlines()[1:]
    reasons = {line.split("\t")[0]: line.split("\t")[2] for line in lines}
    assert set(reasons) == set(ids[3:])
    assert reasons[ids[3]].startswith("unreadable") and reasons[ids[5]].startswith("missing")
    assert not out.exists()
    with h5py.File(out.with_name("train2014.h5.partial"), "r") as f:
        assert set(f) == {p.stem for p in good}  # no entry for the bad ones
    assert fe_main(args + ["--skip-bad"]) == 0
    with h5py.File(out, "r") as f:
        assert set(f) == {p.stem for p in good} and f.attrs["n_skipped"] == 3
    assert report.exists()
    # the other way out: remove the bad files; the rerun finishes the split without recomputing anything
    out2 = tmp_path / "feats2" / "train2014.h5"
    assert fe_main(["extract", "--images", str(d), "--output", str(out2)] + CLI_TINY) == 2
    capsys.readouterr()
    for name in ("COCO_train2014_000000000001.jpg", "COCO_train2014_000000000002.jpg"):
        (d / name).unlink()
    assert fe_main(["extract", "--images", str(d), "--output", str(out2)] + CLI_TINY) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert out2.exists() and not out2.with_name("train2014.bad_images.txt").exists()
    np.testing.assert_array_equal(_contents(out2)[good[0].stem], _contents(out)[good[0].stem])


def test_cli_errors(syn, tmp_path, capsys):
    root, _ = syn
    cases = [
        (["extract", "--images", str(tmp_path / "nope"), "--output", str(tmp_path / "o.h5")], "is not a folder"),
        (["extract", "--dataset", "coco", "--root", str(root), "--model", "ViT-B-32", "--pretrained", "none"],
         "no ResNet vision tower"),
        (["extract", "--dataset", "coco", "--root", str(root)] + CLI_TINY, "other settings"),  # recalibration differs
        (["extract", "--dataset", "coco", "--root", str(tmp_path)], "no image folder for coco train2014"),
        (["extract"], "say what to extract"),
    ]
    for argv, needle in cases:
        assert fe_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_extract_features_script_fails_fast(tmp_path):
    script = REPO / "scripts" / "extract_features.sh"
    proc = subprocess.run(["bash", str(script), "nlvr", "--root", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nlvr" in lines[0] and str(tmp_path) in lines[0]
    proc = subprocess.run(["bash", str(script), "flickr"], capture_output=True, text=True)
    assert proc.returncode == 2 and "coco, vg, gqa, nlvr, synthetic" in proc.stderr



def _image(mode: str):
    """A small image of ``mode`` and the RGB values to_rgb must give, computed by hand."""
    from PIL import Image

    if mode == "L":
        return Image.fromarray(np.array([[0, 100]], np.uint8), "L"), [[0] * 3, [100] * 3]
    if mode == "I;16":  # PIL's convert("RGB") clips: 0, 255, 255, 255
        return Image.fromarray(np.array([[0, 25700, 65535, 257]], np.uint16)), [[0] * 3, [100] * 3, [255] * 3, [1] * 3]
    if mode == "I":  # 32-bit integer grayscale (older PIL's 16-bit PNGs): read as 16-bit values
        return Image.fromarray(np.array([[514, 65535]], np.int32), "I"), [[2] * 3, [255] * 3]
    if mode == "CMYK":  # PIL: channel = (255 - ink) * (255 - K) / 255
        im = Image.new("CMYK", (2, 1))
        im.putpixel((0, 0), (0, 255, 255, 0))
        im.putpixel((1, 0), (64, 128, 0, 32))
        return im, [[255, 0, 0], [round(191 * 223 / 255), round(127 * 223 / 255), 223]]
    if mode == "RGBA":  # alpha dropped, as VL-Adapter's convert("RGB")
        return Image.fromarray(np.array([[[10, 20, 30, 0], [200, 100, 50, 255]]], np.uint8), "RGBA"), \
            [[10, 20, 30], [200, 100, 50]]
    if mode == "LA":
        return Image.fromarray(np.array([[[70, 0], [140, 255]]], np.uint8), "LA"), [[70] * 3, [140] * 3]
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255])
    im.putpixel((1, 0), 1)
    if mode == "P+transparency":
        im.info["transparency"] = 0
    return im, [[255, 0, 0], [0, 0, 255]]


@pytest.mark.parametrize("mode", ["L", "I;16", "I", "CMYK", "RGBA", "LA", "P", "P+transparency"])
def test_image_modes_become_the_expected_rgb(mode):
    from feature_extraction.images import to_rgb

    im, expected = _image(mode)
    rgb = to_rgb(im)
    assert rgb.mode == "RGB"
    assert np.asarray(rgb).tolist() == [expected]


def test_16_bit_png_is_scaled_not_clipped_through_load_image(tmp_path):
    from PIL import Image

    path = tmp_path / "gray16.png"
    Image.fromarray(np.array([[0, 25700], [65535, 257]], np.uint16)).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"  # what a 16-bit grayscale PNG opens as
    x = load_image(path, size=2)  # 2 × 2: no resize
    expected = np.array([[0, 100], [255, 1]], np.float32) / 255.0
    for c in range(3):
        np.testing.assert_allclose(x[c].numpy(), (expected - M.CLIP_MEAN[c]) / M.CLIP_STD[c], rtol=0, atol=1e-6)
