"""Task objects and task datasets on a tiny hand-written VL-Adapter-layout fixture (reference §1.2, §3.4, §4)."""

from __future__ import annotations

import dataclasses
import json
import pickle
import sys
import types
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from vlrouting.data.layout import DataSpec
from vlrouting.data.tasks import (
    IGNORE_INDEX, TASKS, ExampleBatch, build_tasks, get_task, list_tasks, sample_answer,
)
from vlrouting.errors import ConfigError, DataError, MissingFeatureError
from vlrouting.models.tiny import train_tiny_tokenizer

C = 8  # feature size of the fixture (2048 for CLIP RN101)
LONG_Q = "what is the color of the big round shape that is next to the small square on the left side of the picture"
LONG_SENT = ("the left image has more circles than the right image and every circle in the left image is red "
             "while the squares in the right image are blue and green and yellow")


class FakeStore:
    """The FeatureStore interface over an in-memory dict: ``store[id] -> float32 (36, C)``; picklable."""

    def __init__(self, name: str, arrays: dict):
        self.name, self.arrays = name, arrays

    def __getitem__(self, img_id: str) -> np.ndarray:
        if img_id not in self.arrays:
            raise MissingFeatureError(f"Image id {img_id} is not in {self.name}/clip_features/*.h5; re-extract it.")
        return self.arrays[img_id].astype(np.float32)


def feat(img_id: str) -> np.ndarray:
    """Deterministic, id-dependent (36, C) float16 features."""
    rng = np.random.default_rng(zlib.crc32(img_id.encode()))
    return rng.standard_normal((36, C)).astype(np.float16)


def write_fixture(root: Path) -> dict:
    """A VL-Adapter-layout datasets root (annotations + pooled HDF5 features); returns {dataset: {id: array}}."""
    features: dict[str, dict[str, np.ndarray]] = {"COCO": {}, "VG": {}, "GQA": {}, "nlvr": {}}

    def dump(rel, obj):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    def coco(i, src="train2014"):
        img = f"COCO_{src}_{i:012d}"
        features["COCO"][img] = feat(img)
        return img

    ans10 = lambda a: [{"answer": a, "answer_confidence": "yes", "answer_id": k} for k in range(1, 11)]
    vqa_train = [
        {"img_id": coco(1), "sent": "what color is the circle?", "question_id": 1,
         "label": {"red": 1.0, "blue": 0.3}, "answer_type": "other", "question_type": "what color"},
        {"img_id": coco(2), "sent": LONG_Q, "question_id": 2,
         "label": {"one two three four five one two three four five one two three": 1.0}},
        {"img_id": coco(3), "sent": "how many shapes are there?", "question_id": 3, "label": {}},
    ] + [{"img_id": coco(10 + i), "sent": f"is there a square {i}?", "question_id": 10 + i,
          "label": {"yes": 1.0} if i % 2 else {"no": 0.6}} for i in range(9)]
    dump("vqa/karpathy_train.json", vqa_train)
    dump("vqa/karpathy_val.json", [
        {"img_id": coco(101, "val2014"), "sent": "is it red?", "question_id": 101, "label": {"yes": 1.0},
         "answers": ans10("yes"), "answer_type": "yes/no", "question_type": "is it"},
        {"img_id": coco(102, "val2014"), "question": "what shape?", "question_id": 102, "label": {"circle": 0.9},
         "answers": ["circle"] * 10, "answer_type": "other", "question_type": "what"},
    ])
    dump("vqa/karpathy_test.json", [  # no answers: evaluation reads the official annotation file
        {"img_id": coco(201, "val2014"), "sent": "how many?", "question_id": 201, "label": {"2": 1.0}},
        {"img_id": coco(202, "val2014"), "sent": "what color?", "question_id": 202, "label": {"blue": 0.6, "green": 0.3}},
    ])
    dump("vqa/v2_mscoco_val2014_annotations.json", {"annotations": [
        {"question_id": 201, "answers": ans10("2"), "answer_type": "number", "question_type": "how many"},
        {"question_id": 202, "answers": ans10("blue"), "answer_type": "other", "question_type": "what color"},
        {"question_id": 999, "answers": ans10("x"), "answer_type": "other", "question_type": "what"},
    ]})

    def vg(i):
        features["VG"][str(i)] = feat(str(i))
        return str(i)

    dump("GQA/train.json", [{"img_id": vg(2375429 + i), "sent": f"is the square left of the triangle {i}?",
                             "question_id": f"g{i}", "label": {"yes" if i % 2 else "no": 1.0}} for i in range(8)])
    dump("GQA/valid.json", [{"img_id": vg(2375500), "sent": "what is red?", "question_id": "gv0",
                             "label": {"circle": 1.0}}])
    for name in ("n1", "n2"):
        features["GQA"][name] = feat(name)
    dump("GQA/testdev.json", [
        {"img_id": "n1", "sent": "is it blue?", "question_id": "t1", "label": {"no": 1.0}},
        {"img_id": "n2", "sent": "what shape is it?", "question_id": "t2", "label": {"square": 1.0}},
    ])

    def nlvr(split, n):
        recs = []
        for i in range(n):
            pair = [f"{split}-{i}-0-img0", f"{split}-{i}-0-img1"]
            for p in pair:
                features["nlvr"][p] = feat(p)
            recs.append({"uid": f"{split}-{i}-0-0", "identifier": f"{split}-{i}-0-{i % 2}", "img0": pair[0],
                         "img1": pair[1], "sent": LONG_SENT if i == 0 else "there are two circles.", "label": i % 2})
        dump(f"nlvr/{split}.json", recs)

    nlvr("train", 6)
    nlvr("valid", 2)
    nlvr("test", 2)

    images = []
    for i, split, n_caps in [(301, "train", 5), (302, "train", 5), (303, "restval", 2), (304, "val", 3),
                             (305, "val", 3), (306, "test", 2)]:
        src = "train2014" if split == "train" else "val2014"
        img = coco(i, src)
        images.append({"filepath": src, "filename": img + ".jpg", "split": split, "cocoid": i,
                       "sentences": [{"raw": f" A {['red', 'blue', 'green', 'small', 'big'][k]} circle {i}. ",
                                      "tokens": []} for k in range(n_caps)]})
    dump("COCO/dataset_coco.json", {"images": images, "dataset": "coco"})

    for ds, arrays in features.items():  # the pooled layout of our extractor: one file per split, one dataset per id
        path = root / ds / "clip_features" / "all.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=v)
    return features


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return root, write_fixture(root)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok"), [LONG_Q, LONG_SENT, "red blue circle square"])


@pytest.fixture(scope="session")
def stores(fixture_root):
    return {ds: FakeStore(ds, arrays) for ds, arrays in fixture_root[1].items()}


def build(name, split, tokenizer, fixture_root, stores, **kw):
    task = kw.pop("task", None) or get_task(name)
    return task.build_dataset(fixture_root[0], split, tokenizer, features=stores, **kw)


# ------------------------------------------------------------------------------------------------ registry


def test_registry_and_batch_ratios():
    assert list_tasks() == ["vqa", "gqa", "nlvr", "caption", "vqa_cls", "coco_lm"]
    with pytest.raises(ConfigError, match="valid tasks: vqa, gqa, nlvr, caption, vqa_cls, coco_lm"):
        get_task("vqa2")
    assert [TASKS[n].batch_size(500) for n in list_tasks()] == [500, 833, 166, 416, 500, 500]
    assert [TASKS[n].batch_size(1) for n in list_tasks()] == [1, 1, 1, 1, 1, 1]  # at least one example
    assert [TASKS[n].headline_metric for n in list_tasks()] == ["overall", "accuracy", "accuracy", "CIDEr", "accuracy",
                                                                          "CIDEr"]
    assert list(build_tasks("gqa, caption")) == ["gqa", "caption"]
    assert [t.decode.strategy for t in TASKS.values()] == ["greedy", "greedy", "true_false", "beam", "greedy", "beam"]
    assert TASKS["caption"].generate_kwargs() == {"num_beams": 5, "max_length": 40, "no_repeat_ngram_size": 3,
                                                  "early_stopping": True, "do_sample": False}
    # the prefix-LM captioner: the released decoding (HF defaults: no n-gram blocking, no early stopping)
    assert TASKS["coco_lm"].generate_kwargs() == {"num_beams": 5, "max_length": 50, "no_repeat_ngram_size": 0,
                                                  "early_stopping": False, "do_sample": False}
    assert TASKS["coco_lm"].objective == "prefix_lm" and TASKS["coco_lm"].evaluator == "caption"


def test_prompts_and_options(tokenizer, fixture_root, stores):
    assert [get_task(n).prompt for n in list_tasks()] == ["vqa: ", "gqa: ", "nlvr: ", "caption: ", "", ""]
    assert get_task("gqa", vladapter_prompt_typo=True).prompt == "gpa: "
    assert get_task("vqa", vladapter_prompt_typo=True).prompt == "vqa: "
    assert all(t.prompt == "" for t in build_tasks(use_task_prompts=False).values())

    gpa = build("gqa", "train", tokenizer, fixture_root, stores, task=get_task("gqa", vladapter_prompt_typo=True))
    assert tokenizer.decode(gpa[0]["input_ids"], skip_special_tokens=True).startswith("gpa: is the square")
    ex = build("vqa", "train", tokenizer, fixture_root, stores)[0]
    assert tokenizer.decode(ex["input_ids"]) == "<s>vqa: what color is the circle?</s>"
    cap = build("caption", "train", tokenizer, fixture_root, stores)[0]
    assert cap["input_ids"] == tokenizer("caption: ")["input_ids"]
    off = build("caption", "train", tokenizer, fixture_root, stores, task=get_task("caption", use_task_prompts=False))
    assert off[0]["input_ids"] == [tokenizer.bos_token_id, tokenizer.eos_token_id]  # just <s></s>


# ------------------------------------------------------------------------------------------------ datasets


def test_vqa_batch_contract_and_truncation(tokenizer, fixture_root, stores):
    task = get_task("vqa")
    ds = build("vqa", "train", tokenizer, fixture_root, stores, seed=3)
    batch = task.collate([ds[i] for i in range(3)])
    assert batch["task"] == "vqa" and batch["ids"] == [1, 2, 3]
    b, length = batch["input_ids"].shape
    assert length == 20  # the long question is truncated to 20 tokens, specials included
    assert batch["input_ids"][1, -1].item() == tokenizer.eos_token_id and batch["input_ids"][1, 0].item() == 0
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == [len(ds[i]["input_ids"]) for i in range(3)]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert batch["vis_feats"].shape == (3, 36, C) and batch["vis_feats"].dtype == torch.float32
    np.testing.assert_array_equal(batch["vis_feats"][0].numpy(), fixture_root[1]["COCO"]["COCO_train2014_000000000001"])
    assert (batch["img_order_ids"] == 0).all() and batch["obj_order_ids"][0].tolist() == list(range(36))
    labels = batch["labels"]
    assert labels.shape[1] == 10  # the long answer is cut to 10 target tokens
    assert labels[:, 0].tolist() == [0, 0, 0]
    assert labels[2].tolist()[:2] == [0, 2] and (labels[2, 2:] == IGNORE_INDEX).all()  # empty label: '' -> <s></s>
    assert batch["targets"][0] in ("red", "blue") and batch["targets"][2] == ""
    assert batch["loss_weights"][2].item() == 0.0
    assert batch["loss_weights"][0].item() == pytest.approx({"red": 1.0, "blue": 0.3}[batch["targets"][0]])
    assert tokenizer.decode([t for t in labels[0].tolist() if t != IGNORE_INDEX]) == f"<s>{batch['targets'][0]}</s>"

    val = build("vqa", "val", tokenizer, fixture_root, stores)
    vb = task.collate([val[0], val[1]])
    assert vb["labels"] is None and vb["targets"] == ["yes", "circle"] and vb["ids"] == [101, 102]
    assert tokenizer.decode(val[1]["input_ids"]) == "<s>vqa: what shape?</s>"  # 'question' fallback field


def test_vqa_sampling_follows_scores_and_is_deterministic(tokenizer, fixture_root, stores):
    ds = build("vqa", "train", tokenizer, fixture_root, stores, seed=7)
    draws = []
    for epoch in range(600):
        ds.set_epoch(epoch)
        draws.append(ds[0]["target"])
    p_red = draws.count("red") / len(draws)
    assert abs(p_red - 1.0 / 1.3) < 0.06  # P(red) = 1.0 / (1.0 + 0.3)
    assert set(draws) == {"red", "blue"}
    again = build("vqa", "train", tokenizer, fixture_root, stores, seed=7)
    again.set_epoch(5)
    ds.set_epoch(5)
    assert [again[0]["target"] for _ in range(3)] == [ds[0]["target"]] * 3  # same (seed, epoch, index)
    other = build("vqa", "train", tokenizer, fixture_root, stores, seed=8)
    seq7, seq8 = [], []
    for epoch in range(30):
        ds.set_epoch(epoch)
        other.set_epoch(epoch)
        seq7.append(ds[0]["target"])
        seq8.append(other[0]["target"])
    assert seq7 != seq8  # the seed matters
    rng = np.random.default_rng(0)
    assert sample_answer({}, rng) == ("", 0.0) and sample_answer({"a": 0.0}, rng) == ("", 0.0)
    draws = [sample_answer({"a": 0.9, "b": 0.3}, rng)[0] for _ in range(4000)]
    assert abs(draws.count("a") / 4000 - 0.75) < 0.03


def test_gqa_splits_and_sources(tokenizer, fixture_root, stores):
    calls = []

    def opener(name):
        calls.append(name)
        return stores[name]

    train = build("gqa", "train", tokenizer, fixture_root, opener)
    assert calls == ["VG"] and len(train) == 9 and train.records[-1]["question_id"] == "gv0"  # train + valid
    assert train[8]["target"] == "circle" and train[8]["loss_weight"] == 1.0
    for split in ("val", "test"):
        calls.clear()
        ds = build("gqa", split, tokenizer, fixture_root, opener)
        assert calls == ["GQA"] and [r["question_id"] for r in ds.records] == ["t1", "t2"]
        batch = get_task("gqa").collate([ds[0], ds[1]])
        assert batch["targets"] == ["no", "square"] and batch["labels"] is not None
    long = get_task("gqa").collate([train[i] for i in range(9)])
    assert long["input_ids"].shape[1] <= 20


def test_nlvr_two_images(tokenizer, fixture_root, stores):
    task = get_task("nlvr")
    ds = build("nlvr", "train", tokenizer, fixture_root, stores)
    batch = task.collate([ds[0], ds[1]])
    assert batch["ids"] == ["train-0-0-0", "train-1-0-0"]
    assert batch["vis_feats"].shape == (2, 72, C)
    np.testing.assert_array_equal(batch["vis_feats"][1, :36].numpy(), fixture_root[1]["nlvr"]["train-1-0-img0"])
    np.testing.assert_array_equal(batch["vis_feats"][1, 36:].numpy(), fixture_root[1]["nlvr"]["train-1-0-img1"])
    assert batch["img_order_ids"][0].tolist() == [0] * 36 + [1] * 36
    assert batch["obj_order_ids"][0].tolist() == list(range(36)) * 2
    assert batch["targets"] == ["false", "true"]
    assert batch["labels"].shape[1] <= 3 and batch["labels"][1, 0].item() == 0
    n_tokens = len(tokenizer("nlvr: " + LONG_SENT)["input_ids"])
    assert n_tokens > 20 and len(ds[0]["input_ids"]) == n_tokens  # NLVR2 text is not truncated
    guarded = build("nlvr", "train", tokenizer, fixture_root, stores, spec=DataSpec(max_text_positions=16))
    assert len(guarded[0]["input_ids"]) == 16  # ... except by the model's text positions
    val = build("nlvr", "val", tokenizer, fixture_root, stores)
    assert task.collate([val[0]])["labels"] is not None
    true_id, false_id = task.answer_token_ids(tokenizer)
    assert true_id == tokenizer("true", add_special_tokens=False)["input_ids"][0] and true_id != false_id


def test_caption_splits(tokenizer, fixture_root, stores):
    task = get_task("caption")
    train = build("caption", "train", tokenizer, fixture_root, stores)
    assert len(train) == 5 + 5 + 2  # one example per caption, restval merged into train
    assert [r["img_id"] for r in train.records].count("COCO_val2014_000000000303") == 2
    ex = train[0]
    assert ex["target"] == "A red circle 301." and ex["id"] == "COCO_train2014_000000000301"  # stripped raw caption
    batch = task.collate([train[i] for i in range(4)])
    assert batch["labels"] is not None and batch["labels"].shape[1] <= 40
    val = build("caption", "val", tokenizer, fixture_root, stores)
    assert [r["img_id"] for r in val.records] == ["COCO_val2014_000000000304", "COCO_val2014_000000000305"]
    assert val.records[0]["references"] == ["A red circle 304.", "A blue circle 304.", "A green circle 304."]
    vb = task.collate([val[0], val[1]])
    assert vb["labels"] is None and vb["ids"] == [r["img_id"] for r in val.records]
    assert len(build("caption", "val", tokenizer, fixture_root, stores, limit=1)) == 1  # limit counts images
    assert len(build("caption", "test", tokenizer, fixture_root, stores)) == 1


def test_limit_and_pickle(tokenizer, fixture_root, stores):
    ds = build("vqa", "train", tokenizer, fixture_root, stores, limit=4)
    assert len(ds) == 4 and len(ds.records) == 4
    assert len(build("vqa", "train", tokenizer, fixture_root, stores, limit=0)) == 0
    with pytest.raises(ConfigError, match="limit"):
        build("vqa", "train", tokenizer, fixture_root, stores, limit=-1)
    ds.set_epoch(2)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[1]["input_ids"] == ds[1]["input_ids"] and clone[0]["target"] == ds[0]["target"]


# ------------------------------------------------------------------------------------------------ errors


def test_errors_name_the_thing(tmp_path, tokenizer, fixture_root, stores):
    with pytest.raises(DataError, match=r"nowhere.*python -m vlrouting synthetic --root DIR"):
        get_task("vqa").build_dataset(tmp_path / "nowhere", "train", tokenizer, features=stores)
    (tmp_path / "vqa").mkdir()
    with pytest.raises(DataError, match=r"karpathy_train\.json does not exist.*README"):
        get_task("vqa").build_dataset(tmp_path, "train", tokenizer, features=stores)
    (tmp_path / "vqa" / "karpathy_val.json").write_text("[{")
    with pytest.raises(DataError, match=r"karpathy_val\.json is not valid JSON"):
        get_task("vqa").build_dataset(tmp_path, "val", tokenizer, features=stores)
    (tmp_path / "vqa" / "karpathy_test.json").write_text(json.dumps([{"img_id": "x"}]))
    with pytest.raises(DataError, match=r"Record 0 of .*karpathy_test\.json lacks the field\(s\) question_id"):
        get_task("vqa").build_dataset(tmp_path, "test", tokenizer, features=stores)
    with pytest.raises(ConfigError, match="Unknown split 'dev' for task nlvr; valid splits: train, val, test"):
        build("nlvr", "dev", tokenizer, fixture_root, stores)
    with pytest.raises(ConfigError, match="lacks a store for COCO"):
        build("vqa", "train", tokenizer, fixture_root, {"VG": stores["VG"]})
    partial = {"nlvr": FakeStore("nlvr", {k: v for k, v in fixture_root[1]["nlvr"].items() if "img1" not in k})}
    ds = build("nlvr", "train", tokenizer, fixture_root, partial)
    with pytest.raises(MissingFeatureError, match="train-0-0-img1"):
        ds[0]


# ------------------------------------------------------------------------------------------------ losses


def _ce(logits, labels):
    """Hand-written per-token cross-entropy (B, T); 0 where the label is ignored."""
    out = torch.zeros(labels.shape)
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            y = labels[b, t].item()
            if y != IGNORE_INDEX:
                row = logits[b, t]
                out[b, t] = torch.log(torch.exp(row).sum()) - row[y]
    return out


def test_loss_reductions_match_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[0, 3, 2], [0, 2, IGNORE_INDEX]])
    labels_short = torch.tensor([[0, 3, 2], [4, IGNORE_INDEX, IGNORE_INDEX]])
    weights = torch.tensor([1.0, 0.3])
    ce = _ce(logits, labels)
    ex0, ex1 = ce[0].sum() / 3, ce[1, :2].sum() / 2
    assert get_task("gqa").loss(logits, labels, torch.ones(2)).item() == pytest.approx(((ex0 + ex1) / 2).item(), rel=1e-5)
    assert get_task("nlvr").loss(logits, labels, torch.ones(2)).item() == pytest.approx(((ex0 + ex1) / 2).item(), rel=1e-5)
    assert get_task("vqa").loss(logits, labels, weights).item() == pytest.approx(((ex0 + 0.3 * ex1) / 2).item(), rel=1e-5)
    assert get_task("vqa").loss(logits, labels, torch.zeros(2)).item() == 0.0  # '' answers weigh nothing
    assert get_task("caption").loss(logits, labels, torch.ones(2)).item() == pytest.approx((ce.sum() / 5).item(), rel=1e-5)

    ce_s = _ce(logits, labels_short)
    token_mean = ce_s.sum() / 4
    example_mean = (ce_s[0].sum() / 3 + ce_s[1, 0]) / 2
    cap = get_task("caption").loss(logits, labels_short, torch.ones(2))
    gqa = get_task("gqa").loss(logits, labels_short, torch.ones(2))
    assert cap.item() == pytest.approx(token_mean.item(), rel=1e-5)
    assert gqa.item() == pytest.approx(example_mean.item(), rel=1e-5)
    assert abs(cap.item() - gqa.item()) > 1e-3  # the caption reduction really differs
    lg = logits.clone().requires_grad_(True)
    get_task("vqa").loss(lg, labels, weights).backward()
    assert lg.grad is not None and torch.isfinite(lg.grad).all()


# ------------------------------------------------------------------------------------------------ evaluation


@pytest.fixture
def fake_evaluators(monkeypatch):
    calls = {}

    def make(module, fn_name, result):
        mod = types.ModuleType(module)

        def fn(predictions, data, **options):
            calls[fn_name] = (dict(predictions), data)
            calls[f"{fn_name} options"] = options
            return dict(result)

        setattr(mod, fn_name, fn)
        monkeypatch.setitem(sys.modules, module, mod)

    make("vlrouting.evaluation.vqa", "evaluate_vqa", {"overall": 61.5})
    make("vlrouting.evaluation.gqa", "evaluate_gqa", {"accuracy": 50.0})
    make("vlrouting.evaluation.nlvr", "evaluate_nlvr", {"accuracy": 75.0, "consistency": 50.0})
    make("vlrouting.evaluation.caption", "evaluate_caption", {"CIDEr": 110.2, "BLEU-4": 30.0})
    return calls


def test_evaluate_calls_the_evaluators(tokenizer, fixture_root, stores, fake_evaluators):
    calls = fake_evaluators
    vqa = get_task("vqa")
    val = build("vqa", "val", tokenizer, fixture_root, stores)
    assert vqa.headline(vqa.evaluate({101: "yes", 102: "square"}, val)) == 61.5
    preds, anns = calls["evaluate_vqa"]
    assert preds == {101: "yes", 102: "square"}
    assert anns[0] == {"question_id": 101, "answers": ["yes"] * 10, "answer_type": "yes/no",
                       "question_type": "is it", "label": {"yes": 1.0}}
    assert anns[1]["answers"] == ["circle"] * 10
    test = build("vqa", "test", tokenizer, fixture_root, stores)  # answers from the official annotation file
    vqa.evaluate({201: "2", 202: "red"}, test)
    anns = calls["evaluate_vqa"][1]
    assert [a["answers"][0] for a in anns] == ["2", "blue"] and anns[0]["answer_type"] == "number"
    assert anns[1]["question_type"] == "what color" and len(anns[1]["answers"]) == 10
    assert calls["evaluate_vqa options"] == {"version": "2017"}  # VL-Adapter's / the paper's evaluator by default
    dataclasses.replace(vqa, eval_version="2021").evaluate({201: "2", 202: "red"}, test)
    assert calls["evaluate_vqa options"] == {"version": "2021"}

    gqa = get_task("gqa")
    ds = build("gqa", "val", tokenizer, fixture_root, stores)
    assert gqa.headline(gqa.evaluate({"t1": "no", "t2": "circle"}, ds)) == 50.0
    assert calls["evaluate_gqa"][1] == [{"question_id": "t1", "label": {"no": 1.0}},
                                        {"question_id": "t2", "label": {"square": 1.0}}]
    nlvr = get_task("nlvr")
    ds = build("nlvr", "test", tokenizer, fixture_root, stores)
    assert nlvr.headline(nlvr.evaluate({"test-0-0-0": "false", "test-1-0-0": "false"}, ds)) == 75.0
    assert calls["evaluate_nlvr"][1][1] == {"uid": "test-1-0-0", "identifier": "test-1-0-1", "label": 1}
    cap = get_task("caption")
    ds = build("caption", "val", tokenizer, fixture_root, stores)
    assert cap.headline(cap.evaluate({"COCO_val2014_000000000304": "a circle"}, ds)) == 110.2
    refs = calls["evaluate_caption"][1]
    assert refs["COCO_val2014_000000000305"] == ["A red circle 305.", "A blue circle 305.", "A green circle 305."]


def test_vqa_evaluate_without_official_files(tmp_path, tokenizer, stores, fake_evaluators):
    (tmp_path / "vqa").mkdir()
    (tmp_path / "vqa" / "karpathy_test.json").write_text(json.dumps(
        [{"img_id": "COCO_val2014_000000000201", "sent": "how many?", "question_id": 201, "label": {"2": 1.0}}]))
    ds = get_task("vqa").build_dataset(tmp_path, "test", tokenizer, features=stores)
    with pytest.raises(DataError, match=r"v2_mscoco_train2014_annotations\.json"):
        get_task("vqa").evaluate({201: "2"}, ds)


# ------------------------------------------------------------------------------------------------ real reader


def test_with_the_packaged_feature_reader(tokenizer, fixture_root):
    features = pytest.importorskip("vlrouting.data.features")
    root, arrays = fixture_root
    ds = get_task("nlvr").build_dataset(root, "train", tokenizer)  # features=None opens the real store
    ex = ds[1]
    assert ex["vis_feats"].shape == (72, C) and ex["vis_feats"].dtype == np.float32
    np.testing.assert_allclose(ex["vis_feats"][36:], arrays["nlvr"]["train-1-0-img1"].astype(np.float32))
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[1]["vis_feats"], ex["vis_feats"])
    assert hasattr(features, "open_feature_store")
    from vlrouting.data.multitask import make_eval_loader

    task = get_task("caption")
    val = task.build_dataset(root, "val", tokenizer)
    batches = list(make_eval_loader(val, task, 1, num_workers=2))  # lazy per-worker HDF5 handles
    assert [b["ids"][0] for b in batches] == ["COCO_val2014_000000000304", "COCO_val2014_000000000305"]
    np.testing.assert_allclose(batches[1]["vis_feats"][0].numpy(),
                               arrays["COCO"]["COCO_val2014_000000000305"].astype(np.float32))
    val.records.append({"img_id": "COCO_val2014_000000999999", "references": ["x"], "_features": "COCO"})
    with pytest.raises(MissingFeatureError, match="COCO_val2014_000000999999"):
        val[2]


def test_with_the_real_evaluators(tokenizer, fixture_root, stores):
    pytest.importorskip("vlrouting.evaluation.vqa")
    vqa = get_task("vqa")
    test = build("vqa", "test", tokenizer, fixture_root, stores)
    assert vqa.headline(vqa.evaluate({201: "2", 202: "blue"}, test)) == pytest.approx(100.0)
    gqa = get_task("gqa")
    val = build("gqa", "val", tokenizer, fixture_root, stores)
    assert gqa.headline(gqa.evaluate({"t1": "no", "t2": "circle"}, val)) == pytest.approx(50.0)
    nlvr = get_task("nlvr")
    val = build("nlvr", "val", tokenizer, fixture_root, stores)
    assert nlvr.headline(nlvr.evaluate({"valid-0-0-0": "false", "valid-1-0-0": "true"}, val)) == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------------ batched reads


def assert_same_batch(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, torch.Tensor):
            assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
        else:
            assert got[k] == v, k


@pytest.mark.parametrize("name,split", [("vqa", "train"), ("vqa", "val"), ("gqa", "train"), ("gqa", "test"),
                                        ("nlvr", "train"), ("nlvr", "val"), ("caption", "train"), ("caption", "val")])
def test_getitems_collates_like_per_example_reads(tokenizer, fixture_root, stores, name, split):
    task = get_task(name)
    for features in (None, stores):  # the packaged reader (batch reads), a store without read_batch
        ds = task.build_dataset(fixture_root[0], split, tokenizer, features=features, seed=5)
        ds.set_epoch(3)
        n = len(ds)
        for idx in (list(range(n)), [n - 1, 0, n - 1]):  # in order; reversed with a repeat
            examples = ds.__getitems__(idx)
            singles = [ds[i] for i in idx]
            assert isinstance(examples, ExampleBatch) and len(examples) == len(idx)
            for e, s in zip(examples, singles):
                assert e.keys() == s.keys()
                for k in s:
                    if isinstance(s[k], np.ndarray):
                        np.testing.assert_array_equal(e[k], s[k])
                    else:
                        assert e[k] == s[k], k
            assert_same_batch(task.collate(examples), task.collate(singles))


def test_batched_reads_in_workers_contiguous_and_mixed_stores(tmp_path, tokenizer, fixture_root, stores):
    from feature_extraction.convert import convert
    from vlrouting.data.features import FeatureStore

    root, arrays = fixture_root
    path = tmp_path / "nlvr.h5"
    convert(root / "nlvr" / "clip_features" / "all.h5", path, verbose=False)
    task = get_task("nlvr")
    ds = build("nlvr", "train", tokenizer, fixture_root, {"nlvr": FeatureStore(path)})
    want = [task.collate([ds[i] for i in b]) for b in ([0, 1, 2], [3, 4, 5])]
    np.testing.assert_array_equal(want[0]["vis_feats"][2, 36:].numpy(), arrays["nlvr"]["train-2-0-img1"])
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=task.collate)
    got = list(loader)  # __getitems__ in the workers, features in shared memory
    assert len(got) == 2
    for g, w in zip(got, want):
        assert_same_batch(g, w)
    # one batch from two feature datasets: each read as a batch, then placed
    vqa = get_task("vqa")
    ds = build("vqa", "val", tokenizer, fixture_root, stores)
    ds.records = ds.records + [{**ds.records[0], "img_id": "n1", "_features": "GQA", "question_id": 7}]
    ds.stores["GQA"] = stores["GQA"]
    examples = ds.__getitems__([2, 0, 1])
    assert_same_batch(vqa.collate(examples), vqa.collate([ds[2], ds[0], ds[1]]))
    np.testing.assert_array_equal(examples.vis_feats[0].numpy(), arrays["GQA"]["n1"])
