"""GQA accuracy (VL-Adapter's exact-match soft score), id checks, CLI end to end with a missing file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vlrouting.errors import ConfigError, DataError
from vlrouting.evaluation import cli
from vlrouting.evaluation.gqa import evaluate_gqa

DATA = [
    {"img_id": "2375429", "sent": "Is the sky blue?", "question_id": "201307251", "label": {"yes": 1.0}},
    {"img_id": "2375429", "sent": "What is on the table?", "question_id": "201640614", "label": {"cup": 1.0}},
    {"img_id": "2417468", "sent": "Which color is the car?", "question_id": "20968058", "label": {"red": 1.0}},
    {"img_id": "2417468", "sent": "How many?", "question_id": "20968059", "label": {"2": 1.0}},
]


def test_exact_match_without_normalisation():
    preds = {"201307251": "yes", "201640614": "a cup", "20968058": "Red", "20968059": "two"}
    out = evaluate_gqa(preds, DATA)
    assert out == {"accuracy": 25.0, "n": 4}          # only "yes" matches exactly


def test_normalize_option_uses_vqa_normaliser():
    preds = {"201307251": "yes", "201640614": "a cup", "20968058": "Red", "20968059": "two"}
    assert evaluate_gqa(preds, DATA, normalize=True)["accuracy"] == 100.0


def test_integer_ids_match_string_ids():
    preds = {201307251: "yes", 201640614: "cup", 20968058: "red", 20968059: "2"}
    assert evaluate_gqa(preds, DATA)["accuracy"] == 100.0


def test_unknown_and_missing_ids():
    preds = {"201307251": "yes", "999": "no"}
    with pytest.raises(DataError, match=r"1 prediction\(s\) have a question_id that is not in the references "
                                        r"\('999'\)"):
        evaluate_gqa(preds, DATA)
    preds = {"201307251": "yes"}
    with pytest.raises(DataError, match=r"3 question_id\(s\) .* no prediction \('201640614', '20968058', '20968059'\)"):
        evaluate_gqa(preds, DATA)
    out = evaluate_gqa(preds, DATA, allow_missing=True)
    assert out == {"accuracy": 25.0, "n": 4, "missing_ids": ["201640614", "20968058", "20968059"]}


def test_missing_label_is_one_sentence():
    with pytest.raises(DataError, match="has no 'label'"):
        evaluate_gqa({"1": "yes"}, [{"question_id": "1"}])


def test_cli_gqa_missing_file_exit_2(tmp_path):
    refs = tmp_path / "testdev.json"
    refs.write_text(json.dumps(DATA))
    proc = subprocess.run(
        [sys.executable, "-m", "vlrouting", "eval", "--task", "gqa", "--predictions", str(tmp_path / "nope.json"),
         "--references", str(refs)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.json does not exist" in lines[0] and lines[0].startswith("error: ")
    assert proc.stdout == ""


def test_cli_gqa_in_process(tmp_path, capsys):
    refs = tmp_path / "testdev.json"
    refs.write_text(json.dumps(DATA))
    preds = tmp_path / "gqa_preds.json"
    preds.write_text(json.dumps([{"question_id": d["question_id"], "answer": "yes"} for d in DATA]))
    out = tmp_path / "m.json"
    assert cli.main(["--task", "gqa", "--predictions", str(preds), "--references", str(refs), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"accuracy": 25.0, "n": 4}
    # GQA's own submission format (what VL-Adapter's GQAEvaluator.dump_result writes)
    preds.write_text(json.dumps([{"questionId": d["question_id"], "prediction": "cup"} for d in DATA]))
    capsys.readouterr()
    assert cli.main(["--task", "gqa", "--predictions", str(preds), "--references", str(refs)]) == 0
    assert json.loads(capsys.readouterr().out) == {"accuracy": 25.0, "n": 4}
    with pytest.raises(ConfigError, match="--split"):
        cli.main(["--task", "gqa", "--predictions", str(preds), "--references", str(refs), "--split", "val"])
