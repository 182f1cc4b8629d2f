"""NLVR2 accuracy and consistency on known groups, answer parsing, submission CSV, CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vlrouting.errors import DataError
from vlrouting.evaluation.nlvr import evaluate_nlvr, sentence_key, write_nlvr_submission


def example(i, identifier, label):
    split, set_id, pair, _ = identifier.split("-")
    return {"uid": f"nlvr2_{split}_{i}", "identifier": identifier, "img0": f"{split}-{set_id}-{pair}-img0",
            "img1": f"{split}-{set_id}-{pair}-img1", "sent": "s", "label": label}


# Three sentences: dev-1-0 (3 image pairs), dev-1-1 (2 pairs), dev-2-0 (1 pair).
DATA = [
    example(0, "dev-1-0-0", 1), example(1, "dev-1-1-0", 0), example(2, "dev-1-2-0", 1),
    example(3, "dev-1-0-1", 0), example(4, "dev-1-1-1", 0),
    example(5, "dev-2-0-0", 1),
]


def test_sentence_key_drops_the_image_pair_field():
    assert sentence_key("dev-850-0-0") == "dev-850-0"
    assert sentence_key("test1-850-3-2") == "test1-850-2"
    with pytest.raises(DataError, match="split-set-pair-sentence"):
        sentence_key("dev-850")


def test_accuracy_and_consistency():
    # dev-1-0: all three right; dev-1-1: one of two wrong; dev-2-0: right. Values in every accepted spelling.
    preds = {"nlvr2_dev_0": True, "nlvr2_dev_1": "false", "nlvr2_dev_2": 1,
             "nlvr2_dev_3": "False", "nlvr2_dev_4": "true", "nlvr2_dev_5": "1"}
    out = evaluate_nlvr(preds, DATA)
    assert out["accuracy"] == pytest.approx(100 * 5 / 6)
    assert out["consistency"] == pytest.approx(100 * 2 / 3)
    assert out["n"] == 6 and out["n_sentences"] == 3


def test_missing_counts_as_wrong_and_breaks_consistency():
    preds = {"nlvr2_dev_0": 1, "nlvr2_dev_1": 0, "nlvr2_dev_3": 0, "nlvr2_dev_4": 0, "nlvr2_dev_5": 1}
    with pytest.raises(DataError, match=r"1 uid\(s\) of the references have no prediction \('nlvr2_dev_2'\)"):
        evaluate_nlvr(preds, DATA)
    out = evaluate_nlvr(preds, DATA, allow_missing=True)
    assert out["missing_ids"] == ["nlvr2_dev_2"]
    assert out["accuracy"] == pytest.approx(100 * 5 / 6)
    assert out["consistency"] == pytest.approx(100 * 2 / 3)  # dev-1-0 broken by the missing pair


def test_unknown_ids_and_bad_answers():
    preds = {e["uid"]: e["label"] for e in DATA}
    with pytest.raises(DataError, match=r"not in the references \('nlvr2_test_0'\)"):
        evaluate_nlvr({**preds, "nlvr2_test_0": 1}, DATA)
    with pytest.raises(DataError, match="'maybe'"):
        evaluate_nlvr({**preds, "nlvr2_dev_0": "maybe"}, DATA)


def test_write_submission(tmp_path):
    path = tmp_path / "nlvr_submit.csv"
    write_nlvr_submission({"nlvr2_dev_5": 1, "nlvr2_dev_0": "false"}, DATA, path)
    assert path.read_text() == "dev-1-0-0,False\ndev-2-0-0,True\n"


def test_cli_nlvr_csv_end_to_end(tmp_path):
    refs = tmp_path / "test.json"
    refs.write_text(json.dumps(DATA))
    preds = tmp_path / "nlvr_submit.csv"
    preds.write_text("identifier,prediction\n" + "".join(f"{e['identifier']},{bool(e['label'])}\n" for e in DATA))
    out = tmp_path / "metrics.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vlrouting", "eval", "--task", "nlvr", "--predictions", str(preds),
         "--references", str(refs), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == {"accuracy": 100.0, "consistency": 100.0, "n": 6, "n_sentences": 3}


def test_cli_nlvr_json_and_unknown_csv_identifier(tmp_path):
    from vlrouting.evaluation import cli

    refs = tmp_path / "test.json"
    refs.write_text(json.dumps(DATA))
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps([{"uid": e["uid"], "answer": "true"} for e in DATA]))
    args = cli.build_parser().parse_args(["--task", "nlvr", "--predictions", str(preds), "--references", str(refs)])
    assert cli.run(args)["accuracy"] == 50.0
    bad = tmp_path / "bad.csv"
    bad.write_text("dev-9-0-0,True\n")
    with pytest.raises(DataError, match=r"identifier that is not in the references \('dev-9-0-0'\)"):
        cli.main(["--task", "nlvr", "--predictions", str(bad), "--references", str(refs)])
