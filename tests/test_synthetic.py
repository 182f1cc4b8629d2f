"""The synthetic four-task benchmark: VL-Adapter file layout and fields, determinism, balance, safety."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from vlrouting.__main__ import main as vlrouting_main
from vlrouting.data import synthetic
from vlrouting.errors import ConfigError

SMALL = dict(n_coco=12, n_vg=5, n_gqa=3, n_nlvr=6, vqa_per_image=3, gqa_per_image=3, nlvr_per_set=3)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path, rel: str):
    return json.loads((root / rel).read_text())


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "datasets"
    synthetic.generate(root, seed=0, **SMALL)
    return root


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synm") / "datasets"
    return root, synthetic.generate(root, seed=3, scale=0.4)


def test_same_seed_byte_identical_other_seed_differs(small_root, tmp_path):
    again = tmp_path / "again"
    synthetic.generate(again, seed=0, **SMALL)
    first, second = _hashes(small_root), _hashes(again)
    assert first == second and len(first) > 40
    other = tmp_path / "other"
    synthetic.generate(other, seed=1, **SMALL)
    third = _hashes(other)
    assert third["vqa/karpathy_train.json"] != first["vqa/karpathy_train.json"]
    assert set(third) != set(first) or third != first


def test_layout_and_images(small_root):
    card = _load(small_root, "benchmark_card.json")
    assert card["generator"] == synthetic.GENERATOR and card["seed"] == 0
    counts = {k: len(list((small_root / k).glob("*.jpg"))) for k in card["images"]}
    assert counts == card["images"] and sum(counts.values()) == card["total_images"]
    for rel in ("COCO/dataset_coco.json", "vqa/karpathy_train.json", "vqa/karpathy_val.json", "vqa/karpathy_test.json",
                "vqa/v2_mscoco_train2014_annotations.json", "vqa/v2_mscoco_val2014_annotations.json",
                "vqa/trainval_ans2label.json", "vqa/trainval_label2ans.json", "GQA/train.json", "GQA/valid.json",
                "GQA/testdev.json", "GQA/trainval_ans2label.json", "GQA/trainval_label2ans.json", "nlvr/train.json",
                "nlvr/valid.json", "nlvr/test.json"):
        assert (small_root / rel).is_file(), rel
    img = Image.open(next((small_root / "COCO/images/train2014").glob("*.jpg")))
    assert img.format == "JPEG" and img.size == (224, 224) and img.mode == "RGB"
    assert not list(small_root.rglob("*.tmp*"))


def test_karpathy_captions(small_root):
    data = _load(small_root, "COCO/dataset_coco.json")
    assert data["dataset"] == "coco"
    splits = Counter(im["split"] for im in data["images"])
    assert set(splits) == {"train", "restval", "val", "test"}
    sentids = set()
    for im in data["images"]:
        assert set(im) == {"filepath", "filename", "imgid", "cocoid", "split", "sentences", "sentids"}
        folder = "train2014" if im["split"] == "train" else "val2014"
        assert im["filepath"] == folder and im["filename"] == f"COCO_{folder}_{im['cocoid']:012d}.jpg"
        assert (small_root / "COCO/images" / folder / im["filename"]).is_file()
        assert len(im["sentences"]) == 5 and len({s["raw"] for s in im["sentences"]}) == 5
        for s in im["sentences"]:
            assert set(s) == {"raw", "tokens", "imgid", "sentid"} and s["imgid"] == im["imgid"]
            assert s["tokens"] and all(t == t.lower() for t in s["tokens"])
            sentids.add(s["sentid"])
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
    assert len(sentids) == 5 * len(data["images"])


def test_vqa_records_and_official_annotations(small_root):
    ans2label = _load(small_root, "vqa/trainval_ans2label.json")
    label2ans = _load(small_root, "vqa/trainval_label2ans.json")
    assert len(ans2label) == len(label2ans) and all(ans2label[a] == i for i, a in enumerate(label2ans))
    official = {}
    for sub in ("train2014", "val2014"):
        for ann in _load(small_root, f"vqa/v2_mscoco_{sub}_annotations.json")["annotations"]:
            assert set(ann) == {"question_id", "image_id", "question_type", "answer_type", "multiple_choice_answer",
                                "answers"}
            assert all(set(a) == {"answer", "answer_confidence", "answer_id"} for a in ann["answers"])
            official[ann["question_id"]] = (sub, ann)
    images = {im["filename"][:-4]: im["split"] for im in _load(small_root, "COCO/dataset_coco.json")["images"]}
    seen = set()
    for split, ksplits in (("train", {"train", "restval"}), ("val", {"val"}), ("test", {"test"})):
        recs = _load(small_root, f"vqa/karpathy_{split}.json")
        assert recs
        for r in recs:
            assert set(r) == {"img_id", "sent", "question_id", "label", "answers", "question_type", "answer_type",
                              "is_topk_optimal"}
            assert isinstance(r["question_id"], int) and r["question_id"] not in seen
            seen.add(r["question_id"])
            assert images[r["img_id"]] in ksplits
            assert r["sent"].endswith("?") and r["sent"][0].isupper()
            assert len(r["answers"]) == 10
            assert r["answer_type"] in ("yes/no", "number", "other")
            assert all(s in (0.3, 0.6, 0.9, 1.0) and a in ans2label for a, s in r["label"].items())
            sub, ann = official[r["question_id"]]
            assert ann["image_id"] == int(r["img_id"][-12:]) and sub in r["img_id"]
            assert ann["answers"] == r["answers"] and ann["question_type"] == r["question_type"]
    assert seen == set(official)


def test_gqa_and_nlvr_records(small_root):
    vg = {p.stem for p in (small_root / "VG/images").glob("*.jpg")}
    gqa_imgs = {p.stem for p in (small_root / "GQA/images").glob("*.jpg")}
    assert all(i.isdigit() for i in vg) and all(i.startswith("n") and i[1:].isdigit() for i in gqa_imgs)
    a2l = _load(small_root, "GQA/trainval_ans2label.json")
    qids = set()
    for split, pool in (("train", vg), ("valid", vg), ("testdev", gqa_imgs)):
        for r in _load(small_root, f"GQA/{split}.json"):
            assert set(r) == {"img_id", "sent", "question_id", "label"}
            assert isinstance(r["question_id"], str) and r["question_id"] not in qids
            qids.add(r["question_id"])
            assert r["img_id"] in pool and len(r["label"]) == 1 and list(r["label"].values()) == [1.0]
            if split != "testdev":
                assert next(iter(r["label"])) in a2l
    for split, folder in (("train", "train"), ("valid", "dev"), ("test", "test")):
        recs = _load(small_root, f"nlvr/{split}.json")
        groups = defaultdict(list)
        for r in recs:
            assert set(r) == {"uid", "identifier", "img0", "img1", "sent", "label"}
            assert r["label"] in (0, 1) and r["uid"].startswith(f"nlvr2_{split}_")
            ident = r["identifier"].split("-")
            assert ident[0] == folder and r["img0"] == "-".join(ident[:3]) + "-img0"
            assert r["img1"] == "-".join(ident[:3]) + "-img1"
            for key in ("img0", "img1"):
                assert (small_root / "nlvr/images" / folder / f"{r[key]}.jpg").is_file()
            groups["-".join(ident[:2] + ident[3:])].append(r)
        # the consistency metric groups a sentence's pairs: several pairs per sentence (train has 4 pairs here)
        if split == "train":
            assert max(len(g) for g in groups.values()) >= 2
        assert all(len({r["sent"] for r in g}) == 1 for g in groups.values())


def test_balance_and_baselines_need_the_image(medium):
    root, card = medium
    assert 300 < card["total_images"] < 500
    for split in card["vqa"]["splits"].values():
        assert 0.4 <= split["yes_fraction_of_yes_no"] <= 0.6
        assert split["majority"] < 0.35 and split["type_prior"] < 0.6
    for split in card["gqa"]["splits"].values():
        assert 0.4 <= split["yes_fraction_of_yes_no"] <= 0.6 and split["majority"] < 0.4
    for split in card["nlvr"]["splits"].values():
        assert 0.35 <= split["true_fraction"] <= 0.65 and split["type_prior"] < 0.65
    # the same question has different answers on different images: the answer is in the picture
    by_question = defaultdict(set)
    for r in _load(root, "vqa/karpathy_train.json"):
        by_question[r["sent"]].add(max(r["label"], key=r["label"].get) if r["label"] else None)
    assert sum(len(a) > 1 for a in by_question.values()) >= 10
    soft = [s for r in _load(root, "vqa/karpathy_train.json") for s in r["label"].values()]
    assert any(s < 1.0 for s in soft)  # noisy annotators: not every soft score is 1
    # default sizes stay within the CPU demo budget
    sizes = synthetic.resolve_sizes()
    total = sizes["n_coco"] + sizes["n_vg"] + sizes["n_gqa"] + 2 * sizes["n_nlvr"]
    assert 600 <= total <= 1200


def test_vqa_accuracy_and_scores():
    assert [synthetic.vqa_score(c) for c in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    assert synthetic.vqa_accuracy("2", ["two"] * 10) == 1.0
    assert synthetic.vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)


def test_refuses_foreign_root_and_cleans_stale_features(tmp_path, small_root):
    foreign = tmp_path / "real_datasets"
    (foreign / "vqa").mkdir(parents=True)
    (foreign / "vqa" / "karpathy_train.json").write_text("[]")
    with pytest.raises(ConfigError, match="not empty"):
        synthetic.generate(foreign, seed=0, **SMALL)
    assert (foreign / "vqa" / "karpathy_train.json").read_text() == "[]"
    root = tmp_path / "syn"
    synthetic.generate(root, seed=0, **SMALL)
    feats = root / "COCO" / "clip_features"
    feats.mkdir()
    (feats / "train2014.h5").write_bytes(b"x")
    card = synthetic.generate(root, seed=0, **SMALL)  # same settings: same images, features kept
    assert (feats / "train2014.h5").exists()
    # a run interrupted after its first files leaves an "incomplete" card that remembers the last complete one
    (root / "benchmark_card.json").write_text(json.dumps({"generator": synthetic.GENERATOR, "incomplete": True,
                                                          "previous": card}))
    synthetic.generate(root, seed=0, **SMALL)
    assert (feats / "train2014.h5").exists() and _load(root, "benchmark_card.json") == card
    synthetic.generate(root, seed=5, **SMALL)  # new images: stale features and images go
    assert not feats.exists()
    jpgs = {p.name for p in (root / "COCO/images/train2014").glob("*.jpg")}
    wanted = {im["filename"] for im in _load(root, "COCO/dataset_coco.json")["images"] if im["split"] == "train"}
    assert jpgs == wanted


def test_cli(tmp_path, capsys):
    root = tmp_path / "cli"
    args = ["synthetic", "--root", str(root), "--seed", "2"] + [
        f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    assert vlrouting_main(args) == 0
    out = capsys.readouterr().out
    assert "majority baselines" in out and (root / "benchmark_card.json").is_file()
    assert vlrouting_main(["synthetic", "--root", str(tmp_path / "x"), "--n-coco", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--n-coco" in err[0]
