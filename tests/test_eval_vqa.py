"""VQAv2 accuracy: official normalisation, leave-one-out arithmetic, breakdowns, id checks, CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vlrouting.errors import ConfigError, DataError
from vlrouting.evaluation import cli
from vlrouting.evaluation.vqa import (
    QUESTION_GROUPS,
    VERSIONS,
    evaluate_vqa,
    normalize_answer,
    vqa_accuracy,
    write_vqa_submission,
)


def ten(answer):
    return [answer] * 10


@pytest.mark.parametrize("raw, expected", [
    ("yes", "yes"),
    ("Yes.", "yes"),
    ("yes?", "yes"),
    ("yes!", "yes"),
    ("  Yes \n", "yes"),
    ("Two dogs.", "2 dogs"),
    ("ten", "10"),
    ("none", "0"),
    ("An apple", "apple"),
    ("the man", "man"),
    ("a", ""),
    ("dont", "don't"),
    ("isnt it", "isn't it"),
    ("its", "its"),            # not in the contraction table
    ("Im", "im"),              # the official key "Im" is capitalised and can never match lower-cased text
    ("1,000", "1000"),         # digit-comma-digit: every mark is deleted, not blanked
    ("1,000 (approx)", "1000 approx"),
    ("3.5", "3.5"),            # a period before a digit stays
    ("5.", "5"),               # the official period regex deletes any period not followed by a digit
    ("st. louis", "st louis"),
    ("red/white", "red white"),
    ("red / white", "red white"),
    ("e-mail", "e mail"),
    ("well - done", "well done"),
    ("(yes)", "yes"),
    ("black, white", "black white"),
    ("black,white", "black white"),
])
def test_normalize_answer_table(raw, expected):
    assert normalize_answer(raw) == expected


def test_period_count_quirk():
    # re.UNICODE (=32) is passed as re.sub's count in the official code: only 32 periods are deleted.
    assert normalize_answer("." * 40 + "x") == "." * 8 + "x"


@pytest.mark.parametrize("prediction, answers, expected", [
    # identical answers, various spellings of the prediction
    ("yes", ten("yes"), 1.0),
    ("Yes.", ten("yes"), 1.0),
    ("yes?", ten("yes"), 1.0),
    ("two", ten("2"), 1.0),
    ("Two", ten("2"), 1.0),
    ("a dog", ten("dog"), 1.0),
    ("dont", ten("don't"), 1.0),
    ("1,000", ten("1000"), 1.0),
    ("3.5", ten("3.5"), 1.0),
    ("3.5", ten("35"), 0.0),
    ("none", ten("0"), 1.0),
    ("no", ten("yes"), 0.0),
    # unanimous ground truth is compared raw: "1,000" / "red/white" are never punctuation-processed
    ("1000", ten("1,000"), 0.0),
    ("red/white", ten("red/white"), 0.0),
    ("red/white", ten("red white"), 1.0),
    # disagreeing answers are punctuation-processed: "1,000" → "1000", "red/white" → "red white"
    ("1000", ["1,000"] * 5 + ["1000"] * 5, 1.0),
    ("red/white", ["red/white"] * 4 + ["red"] * 6, 1.0),
    # ...but not digit/article-processed: "two" and "the dog" stay as they are in the ground truth
    ("2", ["two"] * 5 + ["2"] * 5, 1.0),
    ("two", ["two"] * 9 + ["2"], 0.3),
    # number of matches m among 10 answers: leave-one-out mean of min(1, matches/3)
    #   m=1: 9 subsets keep the match (1/3), 1 drops it (0)            → (9·1/3)/10       = 0.3
    #   m=2: 8 subsets keep both (2/3), 2 keep one (1/3)               → (8·2/3 + 2·1/3)/10 = 0.6
    #   m=3: 7 subsets keep three (1), 3 keep two (2/3)                → (7 + 3·2/3)/10    = 0.9
    #   m=4: every subset keeps at least three                         → 1.0
    ("cat", ["cat"] + ["dog"] * 9, 0.3),
    ("cat", ["cat"] * 2 + ["dog"] * 8, 0.6),
    ("cat", ["cat"] * 3 + ["dog"] * 7, 0.9),
    ("cat", ["cat"] * 4 + ["dog"] * 6, 1.0),
    ("cat", ["dog"] * 10, 0.0),
    ("five", ["5"] * 3 + ["4"] * 7, 0.9),
    # official annotation dicts
    ("cat", [{"answer": "cat", "answer_id": 1}] + [{"answer": "dog", "answer_id": i} for i in range(2, 11)], 0.3),
])
def test_vqa_accuracy_table(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == expected  # exact: integer leave-one-out arithmetic


def test_vqa_accuracy_bad_answers():
    with pytest.raises(DataError, match="non-empty list"):
        vqa_accuracy("yes", [])


# A small split with known per-question accuracies: 1.0, 0.0, 0.9, 1.0, 0.6.
ANNOTATIONS = [
    {"question_id": 1, "answers": ten("yes"), "answer_type": "yes/no", "question_type": "is the man",
     "label": {"yes": 1.0}, "is_topk_optimal": True},
    {"question_id": 2, "answers": ten("no"), "answer_type": "yes/no", "question_type": "is there",
     "label": {"no": 1.0}, "is_topk_optimal": True},
    {"question_id": 3, "answers": ["2"] * 3 + ["3"] * 7, "answer_type": "number", "question_type": "how many",
     "label": {"3": 1.0, "2": 0.6}, "is_topk_optimal": True},
    {"question_id": 4, "answers": ten("red"), "answer_type": "other", "question_type": "what color is the",
     "label": {"red": 1.0}, "is_topk_optimal": False},
    {"question_id": 5, "answers": ["table"] * 2 + ["desk"] * 8, "answer_type": "other",
     "question_type": "where is the", "label": {"desk": 1.0, "table": 0.6}, "is_topk_optimal": False},
]
PREDICTIONS = {1: "yes", 2: "yes", 3: "two", 4: "Red", 5: "table"}


def test_evaluate_vqa_breakdowns():
    out = evaluate_vqa(PREDICTIONS, ANNOTATIONS)
    assert out["overall"] == 70.0                       # (1 + 0 + 0.9 + 1 + 0.6) / 5
    assert out["per_answer_type"] == {"yes/no": 50.0, "number": 90.0, "other": 80.0}
    assert out["per_question_type"] == {"how many": 90.0, "is the man": 100.0, "is there": 0.0,
                                        "what color is the": 100.0, "where is the": 60.0}
    assert out["question_groups"] == {"where": 60.0, "color": 100.0, "time": None, "person": 100.0}
    assert out["question_group_counts"] == {"where": 1, "color": 1, "time": 0, "person": 1}
    # VL-Adapter's soft score uses the raw prediction: "two" and "Red" are not label keys.
    assert out["topk_score"] == 32.0                    # (1 + 0 + 0 + 0 + 0.6) / 5
    assert out["is_topk_optimal"] == {"true": {"overall": 63.33, "n": 3}, "false": {"overall": 80.0, "n": 2}}
    assert out["n"] == 5 and "missing_ids" not in out
    json.dumps(out)


def test_question_groups_follow_appendix_a():
    assert set(QUESTION_GROUPS) == {"where", "color", "time", "person"}
    assert "what is the color of the" in QUESTION_GROUPS["color"] and "is this person" in QUESTION_GROUPS["person"]


def test_official_annotation_format_and_string_ids():
    official = {"annotations": [dict(a, answers=[{"answer": x, "answer_id": i + 1} for i, x in enumerate(a["answers"])])
                                for a in ANNOTATIONS]}
    for a in official["annotations"]:
        del a["label"], a["is_topk_optimal"]
    out = evaluate_vqa({str(k): v for k, v in PREDICTIONS.items()}, official)
    assert out["overall"] == 70.0 and "topk_score" not in out and "is_topk_optimal" not in out


def test_unknown_ids_rejected():
    preds = dict(PREDICTIONS, **{str(i): "yes" for i in range(100, 108)})
    with pytest.raises(DataError) as err:
        evaluate_vqa(preds, ANNOTATIONS)
    msg = str(err.value)
    assert msg.startswith("8 prediction(s)") and "'100'" in msg and "and 3 more" in msg and "\n" not in msg


def test_missing_ids_reported():
    preds = {k: v for k, v in PREDICTIONS.items() if k not in (1, 4)}
    with pytest.raises(DataError, match=r"2 question_id\(s\) of the references have no prediction \(1, 4\)"):
        evaluate_vqa(preds, ANNOTATIONS)
    out = evaluate_vqa(preds, ANNOTATIONS, allow_missing=True)
    assert out["missing_ids"] == [1, 4]
    assert out["overall"] == 30.0                       # (0 + 0 + 0.9 + 0 + 0.6) / 5
    assert out["n"] == 5


def test_duplicate_reference_and_non_string_prediction():
    with pytest.raises(DataError, match="twice"):
        evaluate_vqa(PREDICTIONS, ANNOTATIONS + ANNOTATIONS[:1])
    with pytest.raises(DataError, match="not a string"):
        evaluate_vqa({**PREDICTIONS, 1: 3}, ANNOTATIONS)


def test_write_vqa_submission(tmp_path):
    path = tmp_path / "sub" / "vqa_results.json"
    write_vqa_submission({"1": "yes", 2: "two"}, path)
    assert json.loads(path.read_text()) == [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "two"}]
    assert [p.name for p in path.parent.iterdir()] == ["vqa_results.json"]  # no temporary left behind


def test_cli_vqa_end_to_end(tmp_path):
    refs = tmp_path / "karpathy_test.json"
    refs.write_text(json.dumps([dict(a, img_id="COCO_val2014_0", sent="q?") for a in ANNOTATIONS]))
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps([{"question_id": k, "answer": v} for k, v in PREDICTIONS.items()]))
    out = tmp_path / "metrics.json"
    sub = tmp_path / "submission.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vlrouting", "eval", "--task", "vqa", "--predictions", str(preds),
         "--references", str(refs), "--out", str(out), "--submission", str(sub)],
        capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    assert metrics == evaluate_vqa(PREDICTIONS, ANNOTATIONS)
    assert json.loads(proc.stdout) == metrics
    assert len(json.loads(sub.read_text())) == 5


def test_cli_vqa_only_predicted_with_official_file(tmp_path, capsys):
    official = {"annotations": ANNOTATIONS + [dict(ANNOTATIONS[0], question_id=99)]}
    refs = tmp_path / "v2_mscoco_val2014_annotations.json"
    refs.write_text(json.dumps(official))
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({str(k): v for k, v in PREDICTIONS.items()}))
    argv = ["--task", "vqa", "--predictions", str(preds), "--references", str(refs)]
    with pytest.raises(DataError, match=r"no prediction \(99\)"):
        cli.main(argv)
    assert cli.main(argv + ["--only-predicted"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"] == 70.0


def test_cli_vqa_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps(ANNOTATIONS))
    with pytest.raises(DataError, match=r"predictions file .*bad.json is not valid JSON"):
        cli.main(["--task", "vqa", "--predictions", str(bad), "--references", str(refs)])
    with pytest.raises(DataError, match=r"lacks 'question_id' or 'answer'"):
        bad.write_text(json.dumps([{"qid": 1}]))
        cli.main(["--task", "vqa", "--predictions", str(bad), "--references", str(refs)])


# ----------------------------------------------------------------------------------------- vqaEval.py revisions
# Hand-computed with the leave-one-out rule: with n answers of which m match, an answer position that matches sees
# m - 1 matches among the other nine, one that does not sees m; accuracy = mean of min(1, k/3) over the ten.

REVISION_CASES = [
    # (prediction, answers, 2017, 2021)
    # unanimous "2": 2017 normalises the prediction ("two" -> "2"); 2021 processes nothing when all ten agree
    ("two", ten("2"), 1.0, 0.0),
    # unanimous "Two": 2017 lower-cases and digit-maps the prediction only ("Two" -> "2" != "Two"); 2021 compares raw
    ("Two", ten("Two"), 0.0, 1.0),
    # unanimous "yes", prediction "Yes.": normalised to "yes" by 2017, compared raw by 2021
    ("Yes.", ten("yes"), 1.0, 0.0),
    # unanimous " yes": 2017 compares the answers unstripped; 2021 strips both sides
    ("yes", ten(" yes"), 0.0, 1.0),
    # disagreeing 2 x "two" / 8 x "three": 2017 keeps "two" (punctuation only) vs the prediction's "2" -> 0 matches;
    # 2021 maps the answers too: 2 matches -> (2 x 1/3 + 8 x 2/3) / 10 = 0.6
    ("two", ["two"] * 2 + ["three"] * 8, 0.0, 0.6),
    # disagreeing 3 x "a dog" / 7 x "cat": articles are dropped from the answers only by 2021:
    # 3 matches -> (3 x 2/3 + 7 x 1) / 10 = 0.9
    ("dog", ["a dog"] * 3 + ["cat"] * 7, 0.0, 0.9),
    # disagreeing answers that differ in case: 2017 leaves "Yes" capitalised (4 of 10 never match "yes");
    # prediction "yes" matches the 6 others -> 1.0 in both
    ("yes", ["Yes"] * 4 + ["yes"] * 6, 1.0, 1.0),
    # disagreeing, 1 x "red" of 10: one match -> (1 x 0 + 9 x 1/3) / 10 = 0.3 in both
    ("Red", ["red"] + ["blue"] * 9, 0.3, 0.3),
]


@pytest.mark.parametrize("prediction, answers, v2017, v2021", REVISION_CASES)
def test_vqa_accuracy_by_revision(prediction, answers, v2017, v2021):
    assert vqa_accuracy(prediction, answers) == pytest.approx(v2017, abs=1e-12)  # 2017 is the default
    assert vqa_accuracy(prediction, answers, version="2017") == pytest.approx(v2017, abs=1e-12)
    assert vqa_accuracy(prediction, answers, version="2021") == pytest.approx(v2021, abs=1e-12)


def test_evaluate_vqa_by_revision_and_cli_option(tmp_path, capsys):
    assert VERSIONS == ("2017", "2021")
    annotations = [{"question_id": i, "answers": answers, "answer_type": "other"}
                   for i, (_, answers, _, _) in enumerate(REVISION_CASES)]
    predictions = {i: p for i, (p, _, _, _) in enumerate(REVISION_CASES)}
    n = len(REVISION_CASES)
    out17 = evaluate_vqa(predictions, annotations)
    out21 = evaluate_vqa(predictions, annotations, version="2021")
    assert out17["version"] == "2017" and out21["version"] == "2021"
    assert out17["overall"] == round(100 * (1 + 0 + 1 + 0 + 0 + 0 + 1 + 0.3) / n, 2) == 41.25
    assert out21["overall"] == round(100 * (0 + 1 + 0 + 1 + 0.6 + 0.9 + 1 + 0.3) / n, 2) == 60.0
    with pytest.raises(DataError, match="version '2019' is unknown"):
        evaluate_vqa(predictions, annotations, version="2019")
    refs, preds = tmp_path / "refs.json", tmp_path / "preds.json"
    refs.write_text(json.dumps(annotations))
    # the trainer's own prediction file format: [{"id", "prediction"}]
    preds.write_text(json.dumps([{"id": i, "prediction": p} for i, p in predictions.items()]))
    argv = ["--task", "vqa", "--predictions", str(preds), "--references", str(refs)]
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["overall"] == 41.25
    assert cli.main(argv + ["--vqa-version", "2021"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"] == 60.0
    with pytest.raises(ConfigError, match="--vqa-version only applies to VQA tasks, not gqa"):
        cli.main(["--task", "gqa", "--predictions", str(preds), "--references", str(refs), "--vqa-version", "2021"])
