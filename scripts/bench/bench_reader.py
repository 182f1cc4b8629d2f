#!/usr/bin/env python
"""FeatureStore read throughput for VQA-style random-access batches, with 0/1/2 DataLoader workers, and peak RSS.

Run by hand (not a test)::

    .venv/bin/python scripts/bench/bench_reader.py                  # 2,000 images (≈ 295 MB of pooled fp16)
    .venv/bin/python scripts/bench/bench_reader.py --images 8000 --samples 20000 --workers 0 1 2 4

Writes one pooled file per split (36×2048 float16 per image, our layout) into a temporary ``COCO/clip_features``,
then, for each worker count in a fresh subprocess, iterates a DataLoader over "questions" that each point at a
random image (several questions per image, shuffled, batch 64 — VQA's access pattern) and collates
(B, 36, 2048) float32 batches. Reported: samples/s, and the peak RSS of the main process and of the largest worker
(``ru_maxrss``), beside the file size — the reader must never load a whole file. The files are in the page cache
(just written), so this measures the reader, not the disk. A first row reads with a plain ``store[id]`` loop (no
DataLoader), the reader's own cost.

Reading the RSS column: with 0 workers the main process collates 19 MB batches itself, and glibc's dynamic mmap
threshold then lets its heap fragment — peak RSS varies between runs (≈ +130 to +700 MB over the baseline here)
and stays at ≈ +80 MB with ``MALLOC_MMAP_THRESHOLD_=262144``. That is the allocator, not the reader: the plain
loop stays flat. The baseline (≈ 520 MB) is ``import torch``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _write(feature_dir: Path, n: int, dim: int) -> list[str]:
    import h5py

    feature_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = []
    block = rng.standard_normal((64, 36, dim)).astype(np.float16)
    for split, count in (("train2014", n - n // 3), ("val2014", n // 3)):
        with h5py.File(feature_dir / f"{split}.h5", "w") as f:
            for k in range(count):
                img_id = f"COCO_{split}_{len(ids):012d}"
                f.create_dataset(img_id, data=block[k % 64] + np.float16(k % 7))
                ids.append(img_id)
    return ids


def _single(feature_dir: str, workers: int, samples: int, batch: int, threads: int) -> dict:
    import torch

    from vlrouting.data.features import FeatureStore

    if threads:
        torch.set_num_threads(threads)

    store = FeatureStore(feature_dir)
    ids = sorted(store.ids())
    rng = np.random.default_rng(1)
    questions = [ids[i] for i in rng.integers(0, len(ids), samples)]

    class Questions(torch.utils.data.Dataset):
        def __len__(self):
            return len(questions)

        def __getitem__(self, i):
            return torch.from_numpy(store[questions[i]])

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if workers < 0:  # the reader alone: store[id] in a loop, no DataLoader, no collation
        t = time.perf_counter()
        for img_id in questions:
            store[img_id]
        dt = time.perf_counter() - t
        return {"workers": "none (plain loop)", "torch_threads": torch.get_num_threads(),
                "samples_per_s": len(questions) / dt, "samples": len(questions), "rss_before_mb": rss0 / 1024,
                "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_rss_worker_mb": 0.0}
    loader = torch.utils.data.DataLoader(Questions(), batch_size=batch, shuffle=True, num_workers=workers,
                                         generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)  # start-up (workers, first file opens) outside the timing
    t = time.perf_counter()
    seen = batch
    for x in it:
        seen += x.shape[0]
    dt = time.perf_counter() - t
    del it, loader
    return {"workers": workers, "torch_threads": torch.get_num_threads(), "samples_per_s": (seen - batch) / dt, "samples": seen - batch,
            "rss_before_mb": rss0 / 1024, "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if workers else 0.0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--samples", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out")
    p.add_argument("--single", nargs=3, metavar=("FEATURE_DIR", "WORKERS", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.single:
        print(json.dumps(_single(args.single[0], int(args.single[1]), args.samples, args.batch_size,
                                 int(args.single[2]))))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_reader_") as tmp:
        feature_dir = Path(tmp) / "COCO" / "clip_features"
        t = time.perf_counter()
        _write(feature_dir, args.images, args.dim)
        size_mb = sum(f.stat().st_size for f in feature_dir.glob("*.h5")) / 2 ** 20
        print(f"wrote {args.images} images ({size_mb:.0f} MB in 2 files) in {time.perf_counter() - t:.1f}s")
        rows = []
        # workers=0 collates in the main process with torch's default thread count; on a small, shared machine
        # OpenMP threads spinning in torch.stack can dominate, so that case also runs with 1 thread.
        runs = [(-1, 1)] + [(w, 0) for w in args.workers] + ([(0, 1)] if 0 in args.workers else [])
        for w, threads in runs:
            out = subprocess.run([sys.executable, __file__, "--single", str(feature_dir), str(w), str(threads), "--samples",
                                  str(args.samples), "--batch-size", str(args.batch_size)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    from vlrouting.machine import machine_info, provenance_line, source_commit

    machine = machine_info()
    print(f"\n{provenance_line(machine)}")
    print(f"| workers | main torch threads | samples/s | peak RSS main (MB) | peak RSS worker (MB) | "
          f"RSS before reading (MB) | file size (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['torch_threads']} | {r['samples_per_s']:.0f} | {r['peak_rss_main_mb']:.0f} | {r['peak_rss_worker_mb']:.0f} "
              f"| {r['rss_before_mb']:.0f} | {size_mb:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"commit": source_commit(), "machine": machine, "file_mb": size_mb,
                                              "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
