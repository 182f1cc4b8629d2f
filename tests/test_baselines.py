"""``python -m vlrouting baselines``: blind baselines from the card and the majority-caption CIDEr."""

from __future__ import annotations

import json

import pytest

from vlrouting.__main__ import main
from vlrouting.baselines import blind_baselines, majority_caption
from vlrouting.errors import DataError


def _coco(images):
    return {"images": [{"filename": f"x{i}.jpg", "split": split, "sentences": [{"raw": c} for c in caps]}
                       for i, (split, caps) in enumerate(images)]}


def test_majority_caption_counts_train_and_restval_only():
    data = _coco([("train", ["A red circle.", "a blue square"]), ("restval", ["a red circle", "A blue square."]),
                  ("test", ["a green triangle"] * 5), ("train", ["a red circle."])])
    assert majority_caption(data) == "a red circle."  # 3 × (case and final period ignored) vs 2; test split unused
    tie = _coco([("train", ["b shape", "a shape"])])
    assert majority_caption(tie) == "a shape."  # ties → alphabetical
    with pytest.raises(DataError, match="no train/restval captions"):
        majority_caption(_coco([("val", ["a"])]))


def test_baselines_from_the_card_and_caption_cider(synthetic_bench, tmp_path, capsys):
    root, card = synthetic_bench["root"], synthetic_bench["card"]
    b = blind_baselines(root)
    assert b["vqa"]["test"]["majority"] == round(100 * card["vqa"]["splits"]["karpathy_test"]["majority"], 2)
    assert b["gqa"]["val"]["type_prior"] == round(100 * card["gqa"]["splits"]["valid"]["type_prior"], 2)
    assert b["nlvr"]["test"]["majority"] == round(100 * card["nlvr"]["splits"]["test"]["majority"], 2)
    cap = b["caption"]
    assert cap["majority_caption"].endswith(".") and "unavailable" not in cap
    assert 0 < cap["val"]["majority"] < 200 and 0 < cap["test"]["majority"] < 200
    out = tmp_path / "b.json"
    assert main(["baselines", "--root", str(root), "--split", "val", "--no-captions", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic val splits" in printed and f"{b['nlvr']['val']['majority']:6.2f}" in printed
    assert json.loads(out.read_text())["vqa"] == b["vqa"] and "caption" not in json.loads(out.read_text())


def test_baselines_on_a_folder_without_card(tmp_path, capsys):
    assert main(["baselines", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "benchmark_card.json does not exist" in err and len(err.strip().splitlines()) == 1
