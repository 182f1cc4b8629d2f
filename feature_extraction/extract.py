"""``python -m feature_extraction extract``: CLIP ResNet grid features → one HDF5 file per dataset split.

What is stored (DESIGN.md §3, reference/vladapter_spec.md §1.4–§1.5, §2.1): images squashed to 224×224 (bicubic,
aspect ratio not kept), CLIP-normalised, through ``stem`` + ``layer1..4`` of an open_clip ResNet's ``visual``
(default ``RN101`` with ``openai`` weights); the layer4 grid (B, C, 7, 7) — before attention pooling — is adaptive-
max-pooled to 6×6 and flattened row-major (token = row·6 + col) into 36×C float16. VL-Adapter stored the 49-token
grid and pooled 7×7 → 6×6 inside the model; pooling offline gives the same tensor (max commutes with the monotone
fp16 rounding) at 36/49 of the disk. ``--keep-grid`` stores the 7×7 grid (49 tokens) instead.

Pipeline: JPEG decoding in DataLoader workers (one fixed chunk of ``--batch-size`` images per item), the model
forward in the main thread (fp16 autocast on GPU), HDF5 writing in a background thread (:mod:`.h5writer`), so the
three overlap and the run goes close to the bare forward speed. Chunks are fixed positions in the sorted id list
and a resumed chunk is recomputed whole, so a resumed run writes exactly what an uninterrupted one would (same
batch composition; keep the same ``--batch-size``).

Random-init towers (``--pretrained none``): ``--recalibrate-bn N`` first re-estimates BatchNorm statistics on a
seeded sample of N of the images being extracted (or of ``--recalibrate-images DIR``); the sample, N and the
network fingerprint are recorded, and a rerun must match them. Extract every split that will be used together in
one run (``--dataset synthetic`` does), so that all files come from the same network. ``--standardize`` then
measures each channel's mean/std over the pooled tokens of the same sample and writes standardised tokens
(:func:`feature_extraction.model.calibrate_standardizer`; on by default for ``--dataset synthetic``, where it makes
the tiny CLIP-BART read the visual tokens several times sooner; real RN101 features are never standardised unless
asked).

``--layout contiguous`` writes each split as one ``(N, tokens, C)`` dataset chunked per image plus an id index
(:mod:`.h5writer`), which :meth:`vlrouting.data.features.FeatureStore.read_batch` reads about twice as fast as
one dataset per image; resumable the same way. ``python -m feature_extraction convert`` turns a per-image file into
it.

Unreadable or missing images go to ``<split>.bad_images.txt`` next to the output and never get an entry; the run
fails (exit 2, the split left as ``.partial``) unless ``--skip-bad`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vlrouting.data.features import LAYOUTS, PER_IMAGE
from vlrouting.errors import ConfigError, DataError
from vlrouting.fileio import atomic_write_text, check_writable, remove_orphans

from . import model as M
from .h5writer import H5Writer, finalize_partial, partial_path, scan, settings_mismatch, stored_layout
from .images import DATASETS, ChunkDataset, Job, folder_job, list_images, preset_jobs, worker_init

SYNTHETIC_DEFAULTS = {"model": "RN-tiny", "pretrained": "none", "recalibrate_bn": 256, "standardize": True}
REAL_DEFAULTS = {"model": "RN101", "pretrained": "openai", "recalibrate_bn": 0, "standardize": False}
FORMAT = "vlrouting-clip-grid-v1"


@dataclass
class ExtractOptions:
    model: str = "RN101"
    pretrained: str | None = "openai"
    seed: int = 0
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    threads: int = 0  # torch intra-op threads of the forward (0: torch's default); 1 can win on a busy CPU
    keep_grid: bool = False
    image_size: int = 224
    recalibrate_bn: int = 0
    recalibrate_images: str | None = None
    standardize: bool = False  # per-channel token standardisation measured on the recalibration sample
    layout: str = PER_IMAGE  # or "contiguous": one (N, tokens, C) dataset per split file
    skip_bad: bool = False
    progress: bool = True
    verbose: bool = True  # one summary line per file on stdout


@dataclass
class JobResult:
    name: str
    output: Path
    extracted: int = 0
    skipped_done: int = 0
    bad: list = field(default_factory=list)
    seconds: float = 0.0
    forward_seconds: float = 0.0
    finalized: bool = False
    report: Path | None = None


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def check_fingerprint(output, stored: dict, fingerprint: str, same: str) -> None:
    """Refuse to add to ``output`` when its stored ``model_fingerprint`` names another network (``same``: what to
    keep equal, for the sentence)."""
    fp = stored.get("model_fingerprint")
    if fp and fp != fingerprint:
        raise ConfigError(f"{output} was written by a network with another fingerprint ({fp[:12]}… vs "
                          f"{fingerprint[:12]}…); delete it or extract with the same {same}.")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name} is not a torch device; use auto, cpu or cuda[:N].") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but CUDA is not available; use --device cpu.")
    return dev


class Extractor:
    """Builds the network once (lazily: a rerun with nothing left to do never loads it) and runs jobs."""

    def __init__(self, opts: ExtractOptions, jobs: list[Job]):
        if opts.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {opts.batch_size}.")
        if opts.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {opts.workers}.")
        if opts.image_size % 32:
            raise ConfigError(f"--image-size must be a multiple of 32 (the ResNet stride), got {opts.image_size}.")
        if opts.threads < 0:
            raise ConfigError(f"--threads must be 0 (torch's default) or more, got {opts.threads}.")
        M.check_model(opts.model)
        if opts.layout not in LAYOUTS:
            raise ConfigError(f"--layout {opts.layout} is unknown; choose {' or '.join(LAYOUTS)}.")
        if opts.standardize and opts.recalibrate_bn <= 0:
            raise ConfigError("--standardize measures its statistics on the --recalibrate-bn sample; pass "
                              "--recalibrate-bn N (e.g. 256) too, or drop --standardize.")
        if opts.threads:
            torch.set_num_threads(opts.threads)
        self.opts = opts
        self.jobs = jobs
        self.device = _device(opts.device)
        self.random_init = M.is_random_init(opts.pretrained)
        grid = opts.image_size // 32
        self.side = None if opts.keep_grid else min(6, grid)
        self.n_tokens = grid * grid if opts.keep_grid else self.side * self.side
        self.recal_ids = self._recalibration_sample()
        self.visual = None
        self.fingerprint = None

    # ---- settings / provenance
    def _recalibration_sample(self) -> list[tuple[str, Path]]:
        n = self.opts.recalibrate_bn
        if n <= 0:
            return []
        if self.opts.recalibrate_images:
            d = Path(self.opts.recalibrate_images)
            if not d.is_dir():
                raise DataError(f"--recalibrate-images {d} is not a folder; pass a folder of images.")
            pool = dict(list_images([d]))
        else:
            pool = {i: p for job in self.jobs for i, p in job.images.items() if p is not None}
        if not pool:
            raise DataError("--recalibrate-bn needs images, but none were found; check the image folders.")
        keys = sorted(pool)
        sample = sorted(random.Random(f"recalibrate:{self.opts.seed}").sample(keys, min(n, len(keys))))
        return [(k, pool[k]) for k in sample]

    def settings(self) -> dict:
        o = self.opts
        grid = o.image_size // 32
        recal_sha = hashlib.sha256("\n".join(k for k, _ in self.recal_ids).encode()).hexdigest() if self.recal_ids else ""
        return {
            "model": o.model,
            "pretrained": "none" if self.random_init else str(o.pretrained),
            "seed": o.seed if self.random_init else -1,
            "image_size": o.image_size,
            "n_tokens": self.n_tokens,
            "grid": f"{grid}x{grid}" if o.keep_grid else f"{self.side}x{self.side}",
            "dtype": "float16",
            "recalibrate_bn": len(self.recal_ids),
            "recalibration_ids_sha256": recal_sha,
            "standardize_tokens": int(bool(o.standardize)),
        }

    def provenance(self) -> dict:
        o = self.opts
        grid = o.image_size // 32
        attrs = dict(self.settings())
        attrs.update({
            "format": FORMAT,
            "layer": "open_clip model.visual: stem + layer1..4 output (before attention pooling)",
            "pooling": ("none (full grid)" if o.keep_grid else
                        f"adaptive_max_pool2d {grid}x{grid} -> {self.side}x{self.side}") + ", tokens row-major",
            "resize": f"{o.image_size}x{o.image_size} bicubic, aspect ratio not kept",
            "normalize_mean": np.asarray(M.CLIP_MEAN, np.float64),
            "normalize_std": np.asarray(M.CLIP_STD, np.float64),
            "recalibration_images": (f"{len(self.recal_ids)} images sampled (seed {o.seed}) from "
                                     f"{o.recalibrate_images or 'the images of this run'}") if self.recal_ids else "",
            "autocast": "float16" if self.device.type == "cuda" else "none",
            "device": self.device.type,
            "versions": (f"torch {torch.__version__}; open_clip_torch {_version('open_clip_torch')}; h5py "
                         f"{_version('h5py')}; numpy {np.__version__}; pillow {_version('pillow')}; vlrouting "
                         f"{_version('vlrouting')}; python {platform.python_version()}"),
            "created_by": "python -m feature_extraction extract",
        })
        if self.fingerprint:
            attrs["model_fingerprint"] = self.fingerprint
            attrs["feature_dim"] = M.feature_dim(self.visual)
        return attrs

    # ---- model
    def _loader(self, chunks, workers=None):
        workers = self.opts.workers if workers is None else workers
        return torch.utils.data.DataLoader(
            ChunkDataset(chunks, self.opts.image_size), batch_size=None, shuffle=False, num_workers=workers,
            pin_memory=self.device.type == "cuda", worker_init_fn=worker_init if workers else None,
            prefetch_factor=2 if workers else None)

    def ensure_model(self) -> None:
        if self.visual is not None:
            return
        o = self.opts
        visual = M.build_visual(o.model, o.pretrained, o.seed)
        visual = visual.to(self.device)
        if self.device.type == "cuda":
            visual = visual.to(memory_format=torch.channels_last)
        if self.recal_ids:
            bs = o.batch_size
            chunks = [self.recal_ids[i:i + bs] for i in range(0, len(self.recal_ids), bs)]
            batches = (x for _, _, x, _ in self._loader(chunks) if x is not None)
            seen = M.recalibrate_bn(visual, batches, self.device)
            if seen == 0:
                raise DataError("--recalibrate-bn: none of the sampled images could be read; check the image folder.")
            if o.standardize:
                batches = (x for _, _, x, _ in self._loader(chunks) if x is not None)
                M.calibrate_standardizer(visual, batches, self.side, self.device)
        self.visual = visual
        self.fingerprint = M.fingerprint(visual)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16):
                out = M.tokens(self.visual, x, self.side)
        else:
            out = M.tokens(self.visual, x, self.side)
        return out.to(torch.float16).cpu().numpy()

    # ---- jobs
    def run(self) -> list[JobResult]:
        """Plans every job, then streams all their chunks through one DataLoader (workers start once)."""
        plans = [self._plan(job) for job in self.jobs]
        work = [(plan, chunk) for plan in plans if plan["todo"] for chunk in plan["chunks"]]
        if work:
            self.ensure_model()
            for plan in plans:
                if plan["todo"]:
                    check_fingerprint(plan["job"].output, plan["stored"], self.fingerprint,
                                      "model, weights, seed and recalibration")
        from tqdm import tqdm

        total = sum(len(plan["todo"]) for plan in plans)
        bar = tqdm(total=total, unit="img", disable=not self.opts.progress or not total, dynamic_ncols=True)
        current = None
        try:
            for k, chunk_ids, x, bad in self._loader([chunk for _, chunk in work]):
                plan = work[k][0]
                if plan is not current:
                    if current is not None:
                        self._finish(current)
                    current = plan
                    plan["t0"] = time.perf_counter()
                    plan["writer"] = H5Writer(plan["job"].output, plan["where"], self.provenance(),
                                              layout=self.opts.layout)
                    bar.set_description(plan["job"].name)
                res, todo_set = plan["result"], plan["todo_set"]
                res.bad.extend(b for b in bad if b[0] in todo_set)
                if x is not None:
                    tf = time.perf_counter()
                    feats = self.forward(x)
                    res.forward_seconds += time.perf_counter() - tf
                    items = [(i, feats[j]) for j, i in enumerate(chunk_ids) if i in todo_set]
                    plan["writer"].put(items)
                    res.extracted += len(items)
                bar.update(sum(1 for i in chunk_ids if i in todo_set) + sum(1 for b in bad if b[0] in todo_set))
            if current is not None:
                self._finish(current)
        except BaseException:
            for plan in plans:
                if plan.get("writer") is not None:
                    plan["writer"].abort()
            raise
        finally:
            bar.close()
        results = [plan["result"] for plan in plans]
        bad = [r for r in results if r.bad]
        if bad and not self.opts.skip_bad:
            n = sum(len(r.bad) for r in bad)
            reports = ", ".join(str(r.report) for r in bad)
            raise DataError(f"{n} image(s) could not be read (listed in {reports}); fix or remove them and rerun, or "
                            f"rerun with --skip-bad to accept the split(s) without them.")
        return results

    def _plan(self, job: Job) -> dict:
        report = job.output.with_name(job.output.stem + ".bad_images.txt")
        # temporary files a killed run of this job left (only this job's: other splits may be extracting now)
        remove_orphans(job.output.parent, [job.output.name, partial_path(job.output).name, report.name])
        where, done, stored = scan(job.output)
        mismatch = settings_mismatch(stored, self.settings()) if where else []
        if mismatch:
            name = job.output if where == "final" else f"{job.output}.partial"
            raise ConfigError(f"{name} was extracted with other settings ({'; '.join(mismatch)}); delete it or pass "
                              f"the same options.")
        if where and stored_layout(stored) != self.opts.layout:
            name = job.output if where == "final" else f"{job.output}.partial"
            raise ConfigError(f"{name} has the {stored_layout(stored)} layout but this run asks for --layout "
                              f"{self.opts.layout}; pass --layout {stored_layout(stored)}, delete the file, or "
                              f"convert a finished per-image file with `python -m feature_extraction convert`.")
        ids = list(job.images)
        todo = [i for i in ids if i not in done]
        res = JobResult(job.name, job.output, skipped_done=len(ids) - len(todo))
        todo_set = set(todo)
        bs = self.opts.batch_size
        # Fixed chunk positions over the full sorted id list: a resumed chunk is recomputed whole, so the batch
        # composition (and hence every number) equals the uninterrupted run's.
        chunks = [[(i, job.images[i]) for i in ids[c:c + bs]] for c in range(0, len(ids), bs)]
        chunks = [ch for ch in chunks if any(i in todo_set for i, _ in ch)]
        if not todo:
            if report.exists():
                report.unlink()
            if where == "partial":  # e.g. the bad images of an earlier run were removed since
                finalize_partial(job.output, {"n_images": len(ids), "n_skipped": 0, "skipped_report": ""})
            res.finalized = True
            if self.opts.verbose:
                print(f"{job.name}: {len(ids)} images already in {job.output}; nothing to do")
        return {"job": job, "where": where, "stored": stored, "ids": ids, "todo": todo, "todo_set": todo_set,
                "chunks": chunks, "result": res, "report": report, "writer": None}

    def _finish(self, plan: dict) -> None:
        job, res, report, writer = plan["job"], plan["result"], plan["report"], plan["writer"]
        final_attrs = {"n_images": len(plan["ids"]) - len(res.bad), "n_skipped": len(res.bad),
                       "skipped_report": report.name if res.bad else ""}
        if res.bad:
            _write_report(report, res.bad)
            res.report = report
        elif report.exists():
            report.unlink()
        if res.bad and not self.opts.skip_bad:
            writer.close()
        else:
            writer.finish(final_attrs)
            res.finalized = True
        plan["writer"] = None
        res.seconds = time.perf_counter() - plan["t0"]
        rate = res.extracted / res.seconds if res.seconds > 0 else 0.0
        state = str(job.output) if res.finalized else f"{job.output}.partial (incomplete)"
        if self.opts.verbose:
            print(f"{job.name}: extracted {res.extracted} images ({res.skipped_done} already done, "
                  f"{len(res.bad)} bad) -> {state} in {res.seconds:.1f}s ({rate:.1f} img/s)")


def _write_report(path: Path, bad: list) -> None:
    lines = ["# image_id\tpath\treason"] + [f"{i}\t{p}\t{r}" for i, p, r in bad]
    atomic_write_text(path, "\n".join(lines) + "\n")


def extract(jobs: list[Job], opts: ExtractOptions | None = None) -> list[JobResult]:
    """Runs extraction jobs (see :func:`feature_extraction.images.preset_jobs` / ``folder_job``)."""
    return Extractor(opts or ExtractOptions(), jobs).run()


def extract_dataset(root, dataset: str, split: str | None = None, all_images: bool = False, **options) -> list[JobResult]:
    """``extract --dataset``: e.g. ``extract_dataset(root, "synthetic", model="RN-tiny-w16", pretrained="none")``."""
    defaults = SYNTHETIC_DEFAULTS if dataset.lower() == "synthetic" else REAL_DEFAULTS
    opts = ExtractOptions(**{**defaults, **options})
    return extract(preset_jobs(Path(root), dataset, split, all_images), opts)


# --------------------------------------------------------------------------------------------------- CLI
def add_source_arguments(p: argparse.ArgumentParser, output_help: str) -> argparse._ArgumentGroup:
    """The "what to extract" options every extractor shares (a dataset preset, or a folder of images)."""
    src = p.add_argument_group("what to extract")
    src.add_argument("--dataset", choices=DATASETS, help="a preset under --root (synthetic = all four datasets)")
    src.add_argument("--root", default="datasets", help="datasets root for --dataset (default: datasets)")
    src.add_argument("--split", default=None, help="one split of the preset (default: all)")
    src.add_argument("--all-images", action="store_true",
                     help="vg/gqa: every image of the folder, not only the ids referenced by the GQA files")
    src.add_argument("--images", help="a folder of images (recursive) instead of --dataset")
    src.add_argument("--output", help=output_help)
    src.add_argument("--annotations", nargs="+", help="with --images: only the ids these annotation files reference")
    return src


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m feature_extraction extract",
        description="CLIP ResNet layer4 grid features (36×C float16 after 7×7→6×6 adaptive max pooling), one HDF5 "
                    "file per dataset split; resumable.")
    add_source_arguments(p, "with --images: the .h5 file to write")
    net = p.add_argument_group("network (defaults: RN101/openai; for --dataset synthetic: RN-tiny/none/"
                                "recalibrate 256/standardize)")
    net.add_argument("--model", default=None, help="an open_clip ResNet config (RN50, RN101, RN50x4, RN-tiny, ...)")
    net.add_argument("--pretrained", default=None, help="open_clip weights tag or checkpoint path; none = random init")
    net.add_argument("--seed", type=int, default=0, help="seed of a random-init tower and of the recalibration sample")
    net.add_argument("--recalibrate-bn", type=int, default=None, metavar="N",
                     help="re-estimate BatchNorm statistics on N images first (for random-init towers)")
    net.add_argument("--recalibrate-images", default=None, metavar="DIR",
                     help="sample the recalibration images from DIR instead of the images being extracted")
    net.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                     help="standardise each channel of the pooled tokens with its mean/std on the recalibration "
                          "sample (default: on for --dataset synthetic, off otherwise)")
    run = p.add_argument_group("run")
    run.add_argument("--keep-grid", action="store_true", help="store the full 7×7 grid (49 tokens), no pooling")
    run.add_argument("--layout", choices=LAYOUTS, default=PER_IMAGE,
                     help="per-image: one dataset per image id (default); contiguous: one (N, tokens, C) dataset "
                          "chunked per image plus an id index, faster to read by the batch")
    run.add_argument("--image-size", type=int, default=224)
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--workers", type=int, default=2, help="DataLoader processes decoding images")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    run.add_argument("--threads", type=int, default=0,
                     help="torch CPU threads for the forward (default: torch's choice; 1 is often faster on a "
                          "busy machine)")
    run.add_argument("--skip-bad", action="store_true", help="finish a split without its unreadable/missing images")
    run.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.images:
        if args.dataset:
            raise ConfigError("--images and --dataset exclude each other; pass one of them.")
        if not args.output:
            raise ConfigError("--images needs --output FILE.h5 naming the file to write.")
        if not args.output.endswith(".h5"):
            raise ConfigError(f"--output {args.output} must end in .h5 (the reader looks for *.h5 files).")
        jobs = [folder_job(Path(args.images), Path(args.output), [Path(a) for a in args.annotations or []])]
        check_writable(Path(args.output).parent, "--output")  # now, not after the forward passes
        defaults = REAL_DEFAULTS
    elif args.dataset:
        if args.output or args.annotations:
            raise ConfigError("--output/--annotations go with --images; --dataset writes <root>/<DS>/clip_features/.")
        if not Path(args.root).is_dir():
            raise DataError(f"--root {args.root} is not a folder; pass the datasets root (e.g. --root datasets).")
        jobs = preset_jobs(Path(args.root), args.dataset, args.split, args.all_images)
        for job in jobs:
            check_writable(job.output.parent, "--root")
        defaults = SYNTHETIC_DEFAULTS if args.dataset == "synthetic" else REAL_DEFAULTS
    else:
        raise ConfigError("say what to extract: --dataset {coco,vg,gqa,nlvr,synthetic} [--root DIR] or "
                          "--images DIR --output FILE.h5.")
    opts = ExtractOptions(
        model=args.model or defaults["model"],
        pretrained=args.pretrained if args.pretrained is not None else defaults["pretrained"],
        seed=args.seed,
        recalibrate_bn=args.recalibrate_bn if args.recalibrate_bn is not None else defaults["recalibrate_bn"],
        recalibrate_images=args.recalibrate_images,
        standardize=args.standardize if args.standardize is not None else defaults["standardize"],
        keep_grid=args.keep_grid, image_size=args.image_size, layout=args.layout,
        batch_size=args.batch_size, workers=args.workers, device=args.device, threads=args.threads,
        skip_bad=args.skip_bad,
        progress=not args.no_progress and sys.stderr.isatty())
    if opts.recalibrate_bn and not M.is_random_init(opts.pretrained):
        print(f"note: --recalibrate-bn {opts.recalibrate_bn} also changes the pretrained '{opts.pretrained}' tower's "
              f"BatchNorm statistics", file=sys.stderr)
    t0 = time.perf_counter()
    results = extract(jobs, opts)
    n = sum(r.extracted for r in results)
    print(f"done: {n} images extracted in {time.perf_counter() - t0:.1f}s over {len(results)} file(s)")
    return 0
