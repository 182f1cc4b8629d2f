"""COCO caption metrics equal a direct pycocoevalcap computation; SPICE-missing path; id checks; CLI.

Java runs are slow on a shared CPU, so the scored run is made once per module (with SPICE's jars made to look
absent, which also exercises the SPICE-unavailable path) and METEOR's JVM is shared with the direct computation.
"""

from __future__ import annotations

import json
import shutil

import pytest

from vlrouting.errors import ConfigError, DataError
from vlrouting.evaluation import caption, cli
from vlrouting.evaluation.caption import averaged_metrics, caption_average, evaluate_caption, spice_unavailable_reason

REFERENCES = {
    "COCO_val2014_000000000001": ["A man riding a horse on a beach.", "A person rides a brown horse.",
                                  "Someone on horseback near the ocean.", "A rider and his horse by the sea."],
    "COCO_val2014_000000000002": ["Two dogs playing with a frisbee.", "Dogs play in the grass.",
                                  "Two puppies chase a red frisbee in a park."],
    "COCO_val2014_000000000003": ["A plate of food with broccoli.", "Broccoli and rice on a white plate.",
                                  "A dinner plate with vegetables and meat.", "Food served on a plate.",
                                  "A healthy meal of rice, meat and broccoli."],
    "COCO_val2014_000000000004": ["A red bus driving down a street.", "A double decker bus on a city road.",
                                  "A bus in traffic."],
}
PREDICTIONS = {
    "COCO_val2014_000000000001": "A man riding a horse on the beach.",
    "COCO_val2014_000000000002": "Two dogs play with a frisbee in the grass!",
    "COCO_val2014_000000000003": "a plate of rice , meat and broccoli",
    "COCO_val2014_000000000004": "A bus driving down a street",
}
#: Everything here except the pure-Python checks runs the Java scorers; the project requires Java, but say so.
requires_java = pytest.mark.skipif(shutil.which("java") is None, reason="the COCO caption metrics need Java")

KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


@pytest.fixture(scope="module")
def no_spice_jars(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(caption, "SPICE_DIR", tmp_path_factory.mktemp("empty_spice"))
        yield mp


@pytest.fixture(scope="module")
def ours(no_spice_jars):
    return evaluate_caption(PREDICTIONS, REFERENCES)


@pytest.fixture(scope="module")
def direct(ours):
    """pycocoevalcap's own pipeline (COCOEvalCap.evaluate without the COCO API objects)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    res = tokenizer.tokenize({k: [{"caption": c}] for k, c in PREDICTIONS.items()})
    bleu, _ = Bleu(4).compute_score(gts, res)
    meteor, _ = caption.shared_meteor().compute_score(gts, res)  # same jar, JVM already warm
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return dict(zip(KEYS, [*bleu, meteor, rouge, cider]))


@requires_java
def test_metrics_equal_direct_pycocoevalcap(ours, direct):
    for key in KEYS:
        assert ours[key] == pytest.approx(100 * direct[key], abs=1e-9), key
    assert 0 < ours["BLEU-4"] < ours["BLEU-1"] <= 100 and ours["CIDEr"] > 0
    assert ours["n"] == 4
    json.dumps(ours)


@requires_java
def test_spice_missing_returns_other_metrics_and_a_reason(ours):
    assert ours["SPICE"] is None and ours["Avg"] is None
    reason = ours["spice_unavailable"]
    assert "stanford-corenlp-3.6.0.jar" in reason and "get_stanford_models" in reason and "\n" not in reason


def test_spice_reason_checks_files_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(caption, "SPICE_DIR", tmp_path)
    monkeypatch.setattr(caption, "_java", lambda: "/usr/bin/java")
    assert "spice-1.0.jar" in spice_unavailable_reason()
    for name in caption.SPICE_REQUIRED_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert spice_unavailable_reason() is None
    monkeypatch.setattr(caption, "_java", lambda: None)
    assert "Java" in spice_unavailable_reason()


@requires_java
def test_spice_on_requires_jars_and_off_skips(no_spice_jars):
    with pytest.raises(DataError, match="SPICE is unavailable.*--spice auto"):
        evaluate_caption(PREDICTIONS, REFERENCES, spice="on")
    with pytest.raises(ConfigError, match="'maybe'"):
        evaluate_caption(PREDICTIONS, REFERENCES, spice="maybe")


def test_caption_average_needs_all_five():
    metrics = {"BLEU-4": 30.0, "METEOR": 25.0, "ROUGE-L": 50.0, "CIDEr": 110.0, "SPICE": 20.0}
    assert caption_average(metrics) == pytest.approx(47.0)
    assert caption_average({**metrics, "SPICE": None}) is None
    five = ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE"]
    assert averaged_metrics(metrics) == averaged_metrics(metrics, average_available=True) == five
    assert averaged_metrics({**metrics, "SPICE": None}) == []  # CLIP-BART's caption: no average without SPICE
    assert averaged_metrics({**metrics, "SPICE": None}, average_available=True) == five[:4]


@requires_java
def test_average_of_the_available_metrics_names_them(no_spice_jars, ours, tmp_path, capsys):
    """Task coco_lm (Table 4) averages what exists when SPICE is unavailable and says which metrics; the default
    (CLIP-BART's caption task) keeps Avg None, without Avg_metrics."""
    assert "Avg_metrics" not in ours
    out = evaluate_caption(PREDICTIONS, REFERENCES, average_available=True)
    assert out["SPICE"] is None and "spice_unavailable" in out
    assert out["Avg_metrics"] == ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
    assert out["Avg"] == pytest.approx((ours["BLEU-4"] + ours["METEOR"] + ours["ROUGE-L"] + ours["CIDEr"]) / 4)
    results = tmp_path / "captions.json"
    results.write_text(json.dumps(PREDICTIONS))
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps(REFERENCES))
    assert cli.main(["--task", "coco_lm", "--predictions", str(results), "--references", str(refs)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["Avg"] == pytest.approx(out["Avg"]) and printed["Avg_metrics"] == out["Avg_metrics"]


@requires_java
def test_spice_value_used_when_available(ours, monkeypatch, tmp_path):
    monkeypatch.setattr(caption, "spice_unavailable_reason", lambda: None)
    monkeypatch.setattr(caption, "_run_spice", lambda gts, res: 0.2)
    out = evaluate_caption(PREDICTIONS, REFERENCES)
    assert out["SPICE"] == pytest.approx(20.0) and "spice_unavailable" not in out
    assert out["Avg"] == pytest.approx(sum(out[k] for k in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")) / 5)
    assert out["Avg_metrics"] == ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE"]
    assert out["CIDEr"] == pytest.approx(ours["CIDEr"])

    def broken(gts, res):
        raise RuntimeError("java.lang.OutOfMemoryError")
    monkeypatch.setattr(caption, "_run_spice", broken)
    out = evaluate_caption(PREDICTIONS, REFERENCES)
    assert out["SPICE"] is None and "OutOfMemoryError" in out["spice_unavailable"]


def test_missing_java_is_one_sentence(monkeypatch):
    monkeypatch.setattr(caption, "_java", lambda: None)
    with pytest.raises(caption.JavaNotFoundError, match="apt-get install default-jre-headless") as err:
        evaluate_caption(PREDICTIONS, REFERENCES)
    assert isinstance(err.value, DataError) and "\n" not in str(err.value)


@requires_java
def test_unknown_and_missing_ids(no_spice_jars, ours):
    with pytest.raises(DataError, match=r"image id that is not in the references \('COCO_val2014_000000000009'\)"):
        evaluate_caption({**PREDICTIONS, "COCO_val2014_000000000009": "x"}, REFERENCES)
    partial = {k: v for k, v in PREDICTIONS.items() if not k.endswith("4")}
    with pytest.raises(DataError, match=r"1 image id\(s\) .* no prediction \('COCO_val2014_000000000004'\)"):
        evaluate_caption(partial, REFERENCES)
    out = evaluate_caption(partial, REFERENCES, spice="off", allow_missing=True)
    assert out["missing_ids"] == ["COCO_val2014_000000000004"]
    assert out["CIDEr"] < ours["CIDEr"] and out["n"] == 4
    assert out["spice_unavailable"] == "SPICE was not computed because spice='off'."


@requires_java
def test_cli_caption_karpathy_file(tmp_path, capsys, no_spice_jars, ours):
    images = [{"filename": f"{k}.jpg", "cocoid": int(k[-12:]), "split": "test",
               "sentences": [{"raw": r + " ", "tokens": []} for r in refs]} for k, refs in REFERENCES.items()]
    images.append({"filename": "COCO_train2014_000000000077.jpg", "cocoid": 77, "split": "train",
                   "sentences": [{"raw": "A cat."}]})
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps({"images": images, "dataset": "coco"}))
    results = tmp_path / "captions.json"  # COCO results format with integer COCO ids
    results.write_text(json.dumps([{"image_id": int(k[-12:]), "caption": c} for k, c in PREDICTIONS.items()]))
    out = tmp_path / "metrics.json"
    assert cli.main(["--task", "caption", "--predictions", str(results), "--references", str(karpathy),
                     "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == metrics
    for key in KEYS:
        assert metrics[key] == pytest.approx(ours[key])
    with pytest.raises(DataError, match=r"no image in split 'val' \(it has test, train\)"):
        cli.main(["--task", "caption", "--predictions", str(results), "--references", str(karpathy),
                  "--split", "val"])
