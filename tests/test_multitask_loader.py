"""The multitask loader (VL-Adapter MultitaskLoader semantics, reference §5.1-§5.2) on tiny task datasets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from vlrouting.data.multitask import MultitaskLoader, loader_generator, make_eval_loader
from vlrouting.data.tasks import build_tasks
from vlrouting.errors import ConfigError, MissingFeatureError
from vlrouting.models.tiny import train_tiny_tokenizer

SIZES = {"vqa": 13, "gqa": 11, "nlvr": 7, "caption": 9}  # odd sizes: DistributedSampler pads with 2 ranks
C = 4


class ArrayStore:
    """FeatureStore stand-in: id-dependent (36, C) features computed on the fly; picklable."""

    def __init__(self, ids):
        self.ids = set(ids)

    def __getitem__(self, img_id):
        if img_id not in self.ids:
            raise MissingFeatureError(f"Image id {img_id} is missing; re-extract the features.")
        return np.full((36, C), float(sum(map(ord, img_id)) % 97), dtype=np.float32)


def write_layout(root: Path) -> dict:
    """Annotation files of the four tasks with SIZES training examples, unique ids and targets; returns stores."""
    ids = {"COCO": [], "VG": [], "GQA": [], "nlvr": []}

    def dump(rel, obj):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(obj))

    vqa = [{"img_id": f"COCO_train2014_{i:012d}", "sent": f"question {i}?", "question_id": i,
            "label": {f"a{i}": 1.0, f"b{i}": 0.5}} for i in range(SIZES["vqa"])]
    ids["COCO"] += [r["img_id"] for r in vqa]
    dump("vqa/karpathy_train.json", vqa)
    dump("vqa/karpathy_val.json", vqa[:5])
    gqa = [{"img_id": str(1000 + i), "sent": f"gqa question {i}?", "question_id": f"q{i}", "label": {f"g{i}": 1.0}}
           for i in range(SIZES["gqa"])]
    ids["VG"] += [r["img_id"] for r in gqa]
    dump("GQA/train.json", gqa[:8])
    dump("GQA/valid.json", gqa[8:])
    nlvr = [{"uid": f"u{i}", "identifier": f"u-{i}", "img0": f"n{i}-img0", "img1": f"n{i}-img1",
             "sent": f"sentence {i}.", "label": i % 2} for i in range(SIZES["nlvr"])]
    ids["nlvr"] += [r[k] for r in nlvr for k in ("img0", "img1")]
    dump("nlvr/train.json", nlvr)
    images = [{"filename": f"COCO_val2014_{500 + i:012d}.jpg", "split": "train" if i < 2 else "restval",
               "sentences": [{"raw": f"caption {i}-{k}"} for k in range(3)]} for i in range(3)]
    ids["COCO"] += [im["filename"][:-4] for im in images]
    dump("COCO/dataset_coco.json", {"images": images})
    return {ds: ArrayStore(v) for ds, v in ids.items()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt_datasets")
    stores = write_layout(root)
    tok = train_tiny_tokenizer(tmp_path_factory.mktemp("mt_tok"), ["question sentence caption"])
    tasks = build_tasks()
    datasets = {n: t.build_dataset(root, "train", tok, features=stores, seed=11) for n, t in tasks.items()}
    assert {n: len(d) for n, d in datasets.items()} == SIZES
    return root, tok, tasks, datasets, stores


def key(task, batch):
    """A per-example identity: question id / uid, or the (unique) caption for captions."""
    return [(task, k) for k in (batch["targets"] if task == "caption" else batch["ids"])]


def run_epoch(loader, epoch=None, limit=None):
    if epoch is not None:
        loader.set_epoch(epoch)
    out = []
    for i, batch in enumerate(loader):
        if limit is not None and i == limit:
            break
        out.append(batch)
    return out


def same_batch(a, b):
    assert a["task"] == b["task"] and a["ids"] == b["ids"] and a["targets"] == b["targets"]
    for k in ("input_ids", "attention_mask", "vis_feats", "img_order_ids", "obj_order_ids", "loss_weights"):
        assert torch.equal(a[k], b[k]), k
    assert (a["labels"] is None) == (b["labels"] is None)
    if a["labels"] is not None:
        assert torch.equal(a["labels"], b["labels"])


def test_batch_size_ratios(setup):
    _, _, tasks, datasets, _ = setup
    assert MultitaskLoader(datasets, tasks, 500).batch_sizes == {"vqa": 500, "gqa": 833, "nlvr": 166, "caption": 416}
    assert MultitaskLoader(datasets, tasks, 3).batch_sizes == {"vqa": 3, "gqa": 5, "nlvr": 1, "caption": 2}


def test_every_batch_of_every_task_once_per_epoch(setup):
    _, _, tasks, datasets, _ = setup
    loader = MultitaskLoader(datasets, tasks, 3, seed=5)
    expected_batches = {"vqa": 5, "gqa": 3, "nlvr": 7, "caption": 5}
    assert loader.num_batches() == expected_batches and len(loader) == 20
    for epoch in (0, 1):
        batches = run_epoch(loader, epoch)
        assert len(batches) == 20
        assert Counter(b["task"] for b in batches) == expected_batches
        assert [b["task"] for b in batches] == loader.task_order(epoch)
        seen = Counter(k for b in batches for k in key(b["task"], b))
        assert all(v == 1 for v in seen.values()) and sum(seen.values()) == sum(SIZES.values())
        for b in batches:
            assert len(b["ids"]) <= loader.batch_sizes[b["task"]]
            assert b["vis_feats"].shape[1] == (72 if b["task"] == "nlvr" else 36)
    assert loader.task_order(0) != loader.task_order(1)  # the order changes with the epoch
    first = [k for b in run_epoch(loader, 0) if b["task"] == "vqa" for k in b["ids"]]
    second = [k for b in run_epoch(loader, 1) if b["task"] == "vqa" for k in b["ids"]]
    assert first != second  # ... and so does the sample order within a task
    assert MultitaskLoader(datasets, tasks, 3, seed=6).task_order(0) != loader.task_order(0)


def test_two_ranks_share_the_task_order_and_split_the_data(setup):
    _, _, tasks, datasets, _ = setup
    ranks = [MultitaskLoader(datasets, tasks, 3, world_size=2, rank=r, seed=5) for r in (0, 1)]
    assert ranks[0].num_batches() == ranks[1].num_batches() == {"vqa": 3, "gqa": 2, "nlvr": 4, "caption": 3}
    for epoch in (0, 3):
        runs = [run_epoch(loader, epoch) for loader in ranks]
        assert [b["task"] for b in runs[0]] == [b["task"] for b in runs[1]]  # same task at every step
        keys = [Counter(k for b in run for k in key(b["task"], b)) for run in runs]
        union = keys[0] + keys[1]
        assert len(union) == sum(SIZES.values())  # both ranks together cover every example
        for task, n in SIZES.items():
            # odd sizes: DistributedSampler pads one rank with exactly one repeated example, nothing else overlaps
            overlap = {k for k in keys[0] if k[0] == task} & {k for k in keys[1] if k[0] == task}
            assert len(overlap) == (n % 2)
    dropped = [MultitaskLoader(datasets, tasks, 3, world_size=2, rank=r, seed=5, drop_last=True) for r in (0, 1)]
    runs = [run_epoch(loader, 0) for loader in dropped]
    assert [b["task"] for b in runs[0]] == [b["task"] for b in runs[1]]
    keys = [{k for b in run for k in key(b["task"], b)} for run in runs]
    assert not keys[0] & keys[1]  # drop_last: disjoint shards
    assert len(keys[0]) == len(keys[1]) == sum(n // 2 for n in SIZES.values())


def test_resume_mid_epoch_yields_exactly_the_remaining_batches(setup):
    _, _, tasks, datasets, _ = setup
    full = run_epoch(MultitaskLoader(datasets, tasks, 3, seed=5), 2)
    interrupted = MultitaskLoader(datasets, tasks, 3, seed=5)
    interrupted.set_epoch(2)
    it = iter(interrupted)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a checkpoint round trip
    assert state["epoch"] == 2 and state["consumed"] == 7
    it.close()

    resumed = MultitaskLoader(datasets, tasks, 3, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # what a trainer's epoch loop does; keeps the resume position
    rest = list(resumed)
    assert len(rest) == len(full) - 7
    for a, b in zip(rest, full[7:]):
        same_batch(a, b)
    assert resumed.state_dict()["consumed"] == len(full)
    nxt = run_epoch(resumed, 3)  # the next epoch starts from the beginning
    assert len(nxt) == len(full)
    with pytest.raises(ConfigError, match="world_size"):
        MultitaskLoader(datasets, tasks, 3, seed=5, world_size=2).load_state_dict(state)


def test_workers_give_the_same_batches(setup):
    _, _, tasks, datasets, _ = setup
    sub = {n: datasets[n] for n in ("vqa", "nlvr")}
    plain = run_epoch(MultitaskLoader(sub, tasks, 3, seed=1), 4)
    workers = run_epoch(MultitaskLoader(sub, tasks, 3, seed=1, num_workers=2), 4)
    assert len(plain) == len(workers) == 5 + 7
    for a, b in zip(plain, workers):
        same_batch(a, b)
    early = MultitaskLoader(sub, tasks, 3, seed=1, num_workers=2)
    assert len(run_epoch(early, 0, limit=2)) == 2  # stopping early shuts the workers down cleanly


def test_loaders_leave_the_global_rng_alone(setup):
    """The global torch RNG drives dropout and is what a checkpoint saves; a DataLoader iterator draws its workers'
    base seed from it unless the loader has a generator, and the per-task iterators are created lazily (at other
    steps after a resume), so the loaders must never draw from it — with or without workers, resumed or not."""
    root, tok, tasks, datasets, stores = setup
    sub = {n: datasets[n] for n in ("vqa", "nlvr")}
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for workers in (0, 2):
        assert len(run_epoch(MultitaskLoader(sub, tasks, 3, seed=1, num_workers=workers), 0)) == 12
    resumed = MultitaskLoader(sub, tasks, 3, seed=1)
    resumed.load_state_dict({"epoch": 0, "consumed": 5})
    assert len(run_epoch(resumed, 0)) == 7
    val = tasks["vqa"].build_dataset(root, "val", tok, features=stores)
    assert len([b for b in make_eval_loader(val, tasks["vqa"], 2)]) == 3
    assert torch.equal(torch.get_rng_state(), before)
    # each loader's own generator: reproducible, different per seed, epoch, rank and task
    seeds = {loader_generator(*key).initial_seed() for key in [(1, 0, 0, "vqa"), (1, 0, 0, "nlvr"), (2, 0, 0, "vqa"),
                                                               (1, 1, 0, "vqa"), (1, 0, 1, "vqa")]}
    assert len(seeds) == 5 and loader_generator(1, 0, 0, "vqa").initial_seed() in seeds


def test_eval_loader_shards(setup):
    root, tok, tasks, _, stores = setup
    val = tasks["vqa"].build_dataset(root, "val", tok, features=stores)
    whole = [i for b in make_eval_loader(val, tasks["vqa"], 2) for i in b["ids"]]
    assert whole == [r["question_id"] for r in val.records]  # dataset order, no shuffling
    shards = [[i for b in make_eval_loader(val, tasks["vqa"], 2, world_size=2, rank=r) for i in b["ids"]]
              for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == sorted(whole) and not set(shards[0]) & set(shards[1])
    assert all(b["labels"] is None for b in make_eval_loader(val, tasks["vqa"], 2))


def test_loader_errors(setup):
    _, _, tasks, datasets, _ = setup
    with pytest.raises(ConfigError, match="no task objects for caption"):
        MultitaskLoader(datasets, {n: tasks[n] for n in ("vqa", "gqa", "nlvr")}, 3)
    with pytest.raises(ConfigError, match="rank=2"):
        MultitaskLoader(datasets, tasks, 3, world_size=2, rank=2)
    with pytest.raises(ConfigError, match="batch size 0"):
        MultitaskLoader(datasets, tasks, 0)


# ------------------------------------------------------------------------------ workers: buffers, epochs, pinning

from vlrouting.data import shm  # noqa: E402


def test_recycled_buffers_are_never_overwritten_while_referenced(setup):
    """One worker per task with 3 recycled feature buffers (prefetch 1 + 2). A consumer that keeps every batch, or
    only a view / numpy array of its features, must see them unchanged after later batches were read: such a buffer
    stays leased and the worker falls back to fresh memory. A consumer that drops each batch gets its buffers
    recycled. Any release before the last reference is gone (at the next batch, when the batch dict dies, ...)
    makes the kept features equal to a later batch's."""
    _, _, tasks, datasets, _ = setup
    sub = {n: datasets[n] for n in ("vqa", "nlvr")}  # 5 + 7 batches at base 3
    reference = run_epoch(MultitaskLoader(sub, tasks, 3, seed=1), 2)
    options = dict(seed=1, num_workers=1, prefetch_factor=1, persistent_workers=True)

    before = shm.stats()
    kept = run_epoch(MultitaskLoader(sub, tasks, 3, **options), 2)
    after = shm.stats()
    for a, b in zip(reference, kept, strict=True):
        same_batch(a, b)
    assert after["fresh"] - before["fresh"] == (5 - 3) + (7 - 3)  # every batch past the 3 slots per worker
    assert after["recycled"] == before["recycled"]

    views, arrays = [], []
    loader = MultitaskLoader(sub, tasks, 3, **options)
    loader.set_epoch(2)
    for batch in loader:
        views.append(batch["vis_feats"][-1])  # the batch itself is dropped: only these keep its slot
        arrays.append(batch["vis_feats"].numpy()[0])
    for ref, v, a in zip(reference, views, arrays, strict=True):
        assert torch.equal(v, ref["vis_feats"][-1]) and np.array_equal(a, ref["vis_feats"][0].numpy())
    del views, arrays, kept

    before = shm.stats()
    loader.set_epoch(2)
    copies = [(b["task"], b["vis_feats"].clone()) for b in loader]
    after = shm.stats()
    assert [(t, c) for t, c in copies] and all(torch.equal(c, r["vis_feats"]) for (_, c), r in zip(copies, reference))
    assert after["fresh"] == before["fresh"]  # never short of a buffer: at most 2 per worker are referenced
    assert after["recycled"] - before["recycled"] >= (5 - 3) + (7 - 3)
    shm.collect()
    assert shm.stats()["held"] == 0  # everything went back


def test_persistent_workers_get_the_epoch_with_the_indices(setup):
    """Sampled VQA/GQA targets depend on (seed, epoch, index): persistent workers (the same processes every epoch,
    holding the dataset as it was when they started) must give each epoch's batches exactly."""
    _, _, tasks, datasets, _ = setup
    sub = {n: datasets[n] for n in ("vqa", "gqa")}
    plain = MultitaskLoader(sub, tasks, 3, seed=1)
    persistent = MultitaskLoader(sub, tasks, 3, seed=1, num_workers=1, persistent_workers=True)
    pids = []
    for epoch in (0, 1, 2):
        a, b = run_epoch(plain, epoch), run_epoch(persistent, epoch)
        for x, y in zip(a, b, strict=True):
            same_batch(x, y)
        pids.append({h["pid"] for y in b if (h := shm.slot_header(y["vis_feats"])) is not None})
        del a, b  # give the buffers back before the next epoch
    assert [x["targets"] for x in run_epoch(plain, 0)] != [x["targets"] for x in run_epoch(plain, 1)]
    assert len(pids[0]) == 2 and pids[0] == pids[1] == pids[2]  # one worker per task, kept across epochs
    resumed = MultitaskLoader(sub, tasks, 3, seed=1, num_workers=1, persistent_workers=True)
    resumed.load_state_dict({"epoch": 1, "consumed": 4})
    for x, y in zip(run_epoch(plain, 1)[4:], run_epoch(resumed, 1), strict=True):
        same_batch(x, y)
    persistent.close()
    resumed.close()


def test_pinning_copies_then_releases(setup):
    """The pin-memory thread's step (``SlotBatch.pin_memory`` = ``copy_out`` with ``Tensor.pin_memory``, which needs
    CUDA; a clone stands in here): the batch's tensors are replaced by copies and its buffer is released at once,
    so a later batch reuses it while the copy stays intact. (The DataLoader asks for batch i + 1 as soon as batch
    i arrives, before this loop copies it: with two buffers the worker never runs short.)"""
    _, _, tasks, datasets, _ = setup
    ds, task = datasets["vqa"], tasks["vqa"]
    batches = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=shm.SlotCollate(task.collate),
                                         worker_init_fn=shm.WorkerInit(2), num_workers=1, prefetch_factor=1)
    copies, slots = [], []
    shm.collect()  # what earlier tests left
    for wire in loader:
        assert isinstance(wire, shm.SlotBatch) and wire.slot_keys == ("vis_feats",)
        slots.append(shm.slot_header(wire.batch["vis_feats"]))
        released = shm.stats()["released"]
        copies.append(wire.copy_out(torch.clone).batch)
        assert shm.stats()["released"] == released + 1 and shm.slot_header(copies[-1]["vis_feats"]) is None
    fills = {(s["slot"], s["fills"]) for s in slots}  # 4 distinct fills of at most 2 buffers: refilled
    assert len(fills) == 4 and {slot for slot, _ in fills} <= {0, 1}
    for b, idx in zip(copies, batches):
        same_batch(b, task.collate([ds[i] for i in idx]))
