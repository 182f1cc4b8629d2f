#!/usr/bin/env python
"""Feature input throughput: plain and batched reads, DataLoader with 0/1/2 workers, against numpy's raw byte rate.

Run by hand (not a test)::

    .venv/bin/python scripts/bench/bench_reader.py                  # 2,000 images (≈ 295 MB of pooled fp16)
    .venv/bin/python scripts/bench/bench_reader.py --images 8000 --samples 25600 --workers 0 1 2 4 --repeats 5

Writes one pooled file per split (36×2048 float16 per image) in the per-image layout into a temporary
``COCO/clip_features``, converts both with ``python -m feature_extraction convert`` into the contiguous layout, and
then measures, for each layout, each in a fresh subprocess (torch at 1 thread everywhere, so that one process is
one core), on "questions" that each point at a random image (VQA's access pattern, batches of 64 → float32):

* ``plain per-sample``: ``store[id]`` in a loop (the reference read path, no DataLoader);
* ``plain batched``: ``store.read_batch(ids)`` per batch into a new array (what a training loop gets), and the same
  with ``dtype=float16`` (no cast: what the cast to float32 costs);
* ``DataLoader k``: a DataLoader whose dataset reads each batch with ``__getitems__`` → ``read_batch`` (into
  shared memory inside workers, as :class:`~vlrouting.data.tasks.TaskDataset` does) — worker start-up and the first
  batch are outside the timing;
* ``DataLoader k, recycled buffers``: the same, with the training loader's recycled shared buffers
  (:mod:`vlrouting.data.shm`: ``prefetch_factor + 2`` buffers per worker, each handed back once the main process
  holds no reference to it; ``collect()`` before every batch, as the multitask loader does);
* ``DataLoader k, no transfer``: the same reads in k workers, but each batch stays in its worker (a 1-element tensor
  goes back): the read rate of the workers alone — the difference to ``DataLoader k`` is the cost of handing 19 MB
  float32 batches to the main process through fresh shared memory;
* ``DataLoader 1, per-sample``: the old path (``__getitem__`` per sample + ``default_collate``), for comparison;
* ``numpy raw``: the split files read start to end with ``readinto`` into one reused numpy buffer (one batch of
  bytes), bytes/s — the rate at which this machine moves these bytes from the page cache, the physical limit.

The files are in the page cache (just written), so this measures the read path, not the disk. Every measurement
is repeated ``--repeats`` times (rounds interleave layouts and measurements); the table shows the median and the
range, the load average before and after, and the ratios against the targets of the feature pipeline:
``DataLoader k ≥ 0.9 × k × plain batched`` (for k up to the cores) and ``plain ≥ 0.5 × numpy raw`` (bytes as
stored: 36×2048×2 per sample).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SPLITS = ("train2014", "val2014")


def _write(feature_dir: Path, n: int, dim: int) -> None:
    import h5py

    feature_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    block = rng.standard_normal((64, 36, dim)).astype(np.float16)
    k = 0
    for split, count in ((SPLITS[0], n - n // 3), (SPLITS[1], n // 3)):
        with h5py.File(feature_dir / f"{split}.h5", "w") as f:
            for _ in range(count):
                f.create_dataset(f"COCO_{split}_{k:012d}", data=block[k % 64] + np.float16(k % 7))
                k += 1


def _raw(feature_dir: str, bytes_per_batch: int, min_seconds: float = 1.0) -> dict:
    """numpy's rate over the same files: sequential readinto a reused buffer, repeated for min_seconds."""
    files = sorted(Path(feature_dir).glob("*.h5"))
    buf = np.empty(bytes_per_batch, np.uint8)
    total, t = 0, time.perf_counter()
    while time.perf_counter() - t < min_seconds:
        for path in files:
            with open(path, "rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    total += n
    return {"bytes_per_s": total / (time.perf_counter() - t)}


def _single(feature_dir: str, kind: str, workers: int, samples: int, batch: int) -> dict:
    import torch

    from vlrouting.data.features import FeatureStore
    from vlrouting.data.tasks.base import feature_buffer

    torch.set_num_threads(1)
    store = FeatureStore(feature_dir)
    ids = sorted(store.ids())
    rng = np.random.default_rng(1)
    questions = [ids[i] for i in rng.integers(0, len(ids), samples)]
    batches = [questions[i:i + batch] for i in range(0, samples, batch)]
    store.read_batch(batches[0])  # index and file handles outside the timing

    if kind == "plain-sample":
        t = time.perf_counter()
        for img_id in questions:
            store[img_id]
        return {"samples_per_s": samples / (time.perf_counter() - t)}
    if kind in ("plain-batch", "plain-batch16"):
        dtype = np.float16 if kind == "plain-batch16" else np.float32
        t = time.perf_counter()
        for ids_ in batches:
            store.read_batch(ids_, dtype=dtype)
        return {"samples_per_s": samples / (time.perf_counter() - t)}

    class PerSample(torch.utils.data.Dataset):
        def __len__(self):
            return len(questions)

        def __getitem__(self, i):
            return torch.from_numpy(store[questions[i]])

    class Batched(PerSample):
        def __getitems__(self, indices):
            held = []

            def allocate(shape):
                held.append(feature_buffer(shape))
                return held[-1].numpy()

            store.read_batch([questions[i] for i in indices], out=allocate)
            return held[0]

    class Recycled(Batched):
        def __getitems__(self, indices):
            return {"vis_feats": super().__getitems__(indices)}

    class Kept(PerSample):
        def __getitems__(self, indices):
            store.read_batch([questions[i] for i in indices])
            return torch.zeros(len(indices), 1)

    if kind == "loader-recycled":
        from vlrouting.data import shm

        loader = torch.utils.data.DataLoader(Recycled(), batch_size=batch, shuffle=True, num_workers=workers,
                                             collate_fn=shm.SlotCollate(lambda x: x), prefetch_factor=2,
                                             worker_init_fn=shm.WorkerInit(2 + 2),
                                             generator=torch.Generator().manual_seed(0))
        it = iter(loader)
        seen = first = next(it).batch["vis_feats"].shape[0]
        t = time.perf_counter()
        while True:
            shm.collect()
            try:
                wire = next(it)
            except StopIteration:
                break
            seen += wire.batch["vis_feats"].shape[0]
            del wire
        dt = time.perf_counter() - t
        st = shm.stats()
        return {"samples_per_s": (seen - first) / dt, "fresh": st["fresh"], "recycled": st["recycled"],
                "received": st["received"]}
    if kind in ("loader-batch", "loader-kept"):
        loader = torch.utils.data.DataLoader(Batched() if kind == "loader-batch" else Kept(), batch_size=batch,
                                             shuffle=True, num_workers=workers, collate_fn=lambda x: x,
                                             generator=torch.Generator().manual_seed(0))
    else:
        loader = torch.utils.data.DataLoader(PerSample(), batch_size=batch, shuffle=True, num_workers=workers,
                                             generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    seen = next(it).shape[0]  # start-up (workers, first file opens) outside the timing
    first = seen
    t = time.perf_counter()
    for x in it:
        seen += x.shape[0]
    dt = time.perf_counter() - t
    return {"samples_per_s": (seen - first) / dt}


def _measure(args, feature_dir: Path, kind: str, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--single", str(feature_dir), kind, str(workers), "--samples", str(args.samples),
           "--batch-size", str(args.batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--samples", type=int, default=12800)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    p.add_argument("--single", nargs=3, metavar=("FEATURE_DIR", "KIND", "WORKERS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.single:
        print(json.dumps(_single(args.single[0], args.single[1], int(args.single[2]), args.samples,
                                 args.batch_size)))
        return 0
    from feature_extraction.convert import convert

    sample_bytes = 36 * args.dim * 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="bench_reader_") as tmp:
        dirs = {"per-image": Path(tmp) / "per-image" / "COCO" / "clip_features",
                "contiguous": Path(tmp) / "contiguous" / "COCO" / "clip_features"}
        t = time.perf_counter()
        _write(dirs["per-image"], args.images, args.dim)
        t_write = time.perf_counter() - t
        t = time.perf_counter()
        for split in SPLITS:
            convert(dirs["per-image"] / f"{split}.h5", dirs["contiguous"] / f"{split}.h5", verbose=False)
        t_convert = time.perf_counter() - t
        sizes = {k: sum(f.stat().st_size for f in d.glob("*.h5")) / 2 ** 20 for k, d in dirs.items()}
        print(f"wrote {args.images} images ({sizes['per-image']:.0f} MB per-image in {t_write:.1f}s; converted to "
              f"{sizes['contiguous']:.0f} MB contiguous in {t_convert:.1f}s); {cores} cores; "
              f"{args.repeats} rounds", flush=True)
        plan = [("plain-sample", 0), ("plain-batch", 0), ("plain-batch16", 0)] + \
               [("loader-batch", w) for w in args.workers] + [("loader-recycled", w) for w in args.workers if w] + \
               [("loader-kept", w) for w in args.workers if w] + \
               [("loader-sample", 1), ("raw", 0)]
        results: dict[tuple, list[float]] = {}
        extra: dict[tuple, list[dict]] = {}
        loads = []
        for r in range(args.repeats):
            before = os.getloadavg()
            for layout, d in dirs.items():
                for kind, w in plan:
                    if kind == "raw":
                        value = _raw(str(d), args.batch_size * sample_bytes)["bytes_per_s"] / sample_bytes
                    else:
                        out = _measure(args, d, kind, w)
                        value = out.pop("samples_per_s")
                        extra.setdefault((layout, kind, w), []).append(out)
                    results.setdefault((layout, kind, w), []).append(value)
            loads.append((before, os.getloadavg()))
            print(f"round {r + 1}: load average before {before[0]:.2f}, after {loads[-1][1][0]:.2f}", flush=True)
    names = {"plain-sample": "plain per-sample", "plain-batch": "plain batched", "plain-batch16": "plain batched, "
             "float16 out", "loader-sample": "DataLoader {w}, per-sample", "loader-batch": "DataLoader {w}",
             "loader-kept": "DataLoader {w}, no transfer", "raw": "numpy raw",
             "loader-recycled": "DataLoader {w}, recycled buffers"}
    from vlrouting.machine import machine_info, provenance_line, source_commit

    machine = machine_info()
    print(f"\n{provenance_line(machine)}")
    print("\n| layout | measurement | samples/s (median) | range | MB/s as stored | ratio | target |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for (layout, kind, w), values in results.items():
        med = statistics.median(values)
        plain = statistics.median(results[(layout, "plain-batch", 0)])
        raw = statistics.median(results[(layout, "raw", 0)])
        ratio, target = "", ""
        if kind in ("loader-batch", "loader-kept", "loader-recycled") and w >= 1:
            ratio = f"{med / (w * plain):.2f} × {w} × plain batched"
            target = ("≥ 0.9" if w <= cores else "(> cores)") if kind != "loader-kept" else ""
            if kind == "loader-recycled":
                fresh = sum(e["fresh"] for e in extra[(layout, kind, w)])
                got = sum(e["received"] for e in extra[(layout, kind, w)])
                ratio += f" ({fresh} of {fresh + got} batches without a free buffer)"
        elif kind in ("plain-batch", "plain-sample", "plain-batch16"):
            ratio, target = f"{med / raw:.2f} × numpy raw", "≥ 0.5"
        elif kind == "loader-sample":
            ratio = f"{med / plain:.2f} × plain batched"
        print(f"| {layout} | {names[kind].format(w=w)} | {med:,.0f} | {min(values):,.0f}–{max(values):,.0f} | "
              f"{med * sample_bytes / 2 ** 20:,.0f} | {ratio} | {target} |")
        rows.append({"layout": layout, "kind": kind, "workers": w, "samples_per_s": values,
                     **({"details": extra[(layout, kind, w)]} if (layout, kind, w) in extra else {})})
    if args.out:
        Path(args.out).write_text(json.dumps({"commit": source_commit(), "machine": machine, "sizes_mb": sizes,
                                              "cores": cores, "loads": loads, "rows": rows, "args": vars(args)},
                                             indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
