"""``python -m feature_extraction extract-vit``: frozen-ViT features → one HDF5 file per dataset split.

What is stored (routing paper §4; reference/routing_official_spec.md §3.1, §5.2): each image is read by
:func:`vlrouting.models.vit.load_image` (RGB, 224×224 PIL bilinear, aspect ratio not kept, mean = std = 0.5 — the
in21k checkpoints' ``ViTImageProcessor``), run through Hugging Face ``ViTModel`` (default
``google/vit-base-patch16-224-in21k``), and

- the pooler output tanh(dense(LN(h_CLS))) is written as ``(1, d)`` float16 to ``<DS>/vit_features/<split>.h5``
  (feature kind ``vit``: x_R and the one-token prefix of the ViT families);
- with ``--tokens``, all last-hidden-state tokens ``(1 + patches, d)`` (197 for /16 at 224) go to
  ``<DS>/vit_tokens/<split>.h5`` as well (kind ``vit_tokens``, for Table 5's cross-attention ablations).

Paths come from :mod:`vlrouting.data.layout` (``preset_jobs(..., kind="vit")``); the file format and the crash-safe,
resumable writing are the CLIP extractor's (:mod:`feature_extraction.h5writer`: ``<split>.h5.partial`` renamed when
complete, per-image ``complete`` marks, a rerun extracts only what is missing and refuses other settings or another
network, identified by ``model_fingerprint``), with provenance attributes; ``python -m feature_extraction verify``
checks the files. ``--random-init`` builds the ViT from its config with seeded random weights (tests; a tiny
``save_pretrained`` folder is the usual choice for CPU demos).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vlrouting.data.layout import feature_file
from vlrouting.errors import ConfigError, DataError
from vlrouting.models.vit import load_image as load_vit_image

from .extract import _device, add_source_arguments, check_fingerprint
from .h5writer import H5Writer, finalize_partial, scan, settings_mismatch
from .images import ChunkDataset, Job, folder_job, preset_jobs, worker_init

FORMATS = {"vit": "vlrouting-vit-pooled-v1", "vit_tokens": "vlrouting-vit-tokens-v1"}
DEFAULT_MODEL = "google/vit-base-patch16-224-in21k"


@dataclass
class ViTExtractOptions:
    model: str = DEFAULT_MODEL
    random_init: bool = False
    seed: int = 0
    tokens: bool = False
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    threads: int = 0
    skip_bad: bool = False
    progress: bool = True
    verbose: bool = True


@dataclass
class ViTJobResult:
    name: str
    outputs: list[Path]
    extracted: int = 0
    skipped_done: int = 0
    bad: list = field(default_factory=list)
    seconds: float = 0.0
    finalized: bool = False


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over every weight and buffer (names, shapes, fp32 bytes): which network wrote a file."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def tokens_output(job: Job, root: Path | None, tokens_file: Path | None) -> Path:
    """Where a job's token file goes: ``<DS>/vit_tokens/<split>.h5`` for presets, ``--tokens-output`` otherwise."""
    if root is not None:
        folder, split = job.name.split("/", 1)
        return feature_file(root, folder, split, "vit_tokens")
    if tokens_file is None:
        raise ConfigError("--tokens with --images needs --tokens-output FILE.h5 for the token file.")
    return Path(tokens_file)


class ViTExtractor:
    """Builds the ViT lazily (a rerun with nothing to do never loads it) and runs the jobs."""

    def __init__(self, opts: ViTExtractOptions, jobs: list[Job], token_outputs: dict[str, Path] | None = None):
        if opts.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {opts.batch_size}.")
        if opts.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {opts.workers}.")
        if opts.threads < 0:
            raise ConfigError(f"--threads must be 0 (torch's default) or more, got {opts.threads}.")
        if opts.threads:
            torch.set_num_threads(opts.threads)
        self.opts = opts
        self.jobs = jobs
        self.token_outputs = token_outputs or {}
        self.device = _device(opts.device)
        self.vit = None
        self.fingerprint = None
        self._arch = None

    def arch(self) -> dict:
        """Width and token count of the ViT (from its config; no weights needed)."""
        if self._arch is None:
            from vlrouting.models.arch import arch_dict

            cfg = arch_dict(self.opts.model)
            side = int(cfg.get("image_size", 224)) // int(cfg.get("patch_size", 16))
            self._arch = {"d": int(cfg["hidden_size"]), "n_tokens": 1 + side * side}
        return self._arch

    def settings(self, kind: str) -> dict:
        o = self.opts
        return {"model": o.model, "pretrained": "none" if o.random_init else "hub-or-folder",
                "seed": o.seed if o.random_init else -1, "image_size": 224,
                "n_tokens": 1 if kind == "vit" else self.arch()["n_tokens"], "dtype": "float16"}

    def provenance(self, kind: str) -> dict:
        from vlrouting.models.vit import IMAGE_MEAN, IMAGE_STD

        attrs = dict(self.settings(kind))
        attrs.update({
            "format": FORMATS[kind],
            "layer": ("ViTModel pooler_output = tanh(dense(LN(h_CLS))), (1, d)" if kind == "vit" else
                      "ViTModel last_hidden_state, (1 + patches, d)"),
            "resize": "224x224 PIL bilinear, aspect ratio not kept",
            "normalize_mean": np.asarray(IMAGE_MEAN, np.float64),
            "normalize_std": np.asarray(IMAGE_STD, np.float64),
            "autocast": "none",
            "device": self.device.type,
            "versions": (f"torch {torch.__version__}; transformers {_version('transformers')}; h5py "
                         f"{_version('h5py')}; numpy {np.__version__}; pillow {_version('pillow')}; vlrouting "
                         f"{_version('vlrouting')}; python {platform.python_version()}"),
            "created_by": "python -m feature_extraction extract-vit",
            "feature_dim": self.arch()["d"],
        })
        if self.fingerprint:
            attrs["model_fingerprint"] = self.fingerprint
        return attrs

    def ensure_model(self) -> None:
        if self.vit is not None:
            return
        from vlrouting.models.vit import load_vit

        if self.opts.random_init:
            torch.manual_seed(self.opts.seed)
            vit = load_vit(self.opts.model, pretrained=False)
        else:
            vit = load_vit(self.opts.model)
        self.vit = vit.to(self.device).eval()
        self.fingerprint = fingerprint(self.vit)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """fp32 forward (the extracted vectors are the model's exact output, rounded once to float16)."""
        out = self.vit(pixel_values=x.to(self.device, non_blocking=True))
        pooled = out.pooler_output.unsqueeze(1).to(torch.float16).cpu().numpy()
        toks = out.last_hidden_state.to(torch.float16).cpu().numpy() if self.opts.tokens else None
        return pooled, toks

    def _plan(self, job: Job) -> dict:
        outputs = {"vit": job.output}
        if self.opts.tokens:
            outputs["vit_tokens"] = self.token_outputs[job.name]
        ids = list(job.images)
        states, todo_by_kind = {}, {}
        for kind, path in outputs.items():
            where, done, stored = scan(path)
            mismatch = settings_mismatch(stored, self.settings(kind)) if where else []
            if mismatch:
                name = path if where == "final" else f"{path}.partial"
                raise ConfigError(f"{name} was extracted with other settings ({'; '.join(mismatch)}); delete it or "
                                  "pass the same options.")
            states[kind] = (where, stored)
            todo_by_kind[kind] = {i for i in ids if i not in done}
        todo = set().union(*todo_by_kind.values())
        res = ViTJobResult(job.name, list(outputs.values()), skipped_done=len(ids) - len(todo))
        bs = self.opts.batch_size
        chunks = [[(i, job.images[i]) for i in ids[c:c + bs]] for c in range(0, len(ids), bs)]
        chunks = [ch for ch in chunks if any(i in todo for i, _ in ch)]
        report = job.output.with_name(job.output.stem + ".bad_images.txt")
        if not todo:
            for kind, path in outputs.items():
                if states[kind][0] == "partial":
                    finalize_partial(path, {"n_images": len(ids), "n_skipped": 0, "skipped_report": ""})
            if report.exists():
                report.unlink()
            res.finalized = True
            if self.opts.verbose:
                print(f"{job.name}: {len(ids)} images already in {', '.join(map(str, outputs.values()))}; "
                      "nothing to do")
        return {"job": job, "outputs": outputs, "states": states, "todo": todo_by_kind, "todo_any": todo,
                "ids": ids, "chunks": chunks, "result": res, "report": report, "writers": None}

    def run(self) -> list[ViTJobResult]:
        plans = [self._plan(job) for job in self.jobs]
        work = [(plan, chunk) for plan in plans if plan["todo_any"] for chunk in plan["chunks"]]
        if work:
            self.ensure_model()
            for plan in plans:
                for kind, (where, stored) in plan["states"].items() if plan["todo_any"] else ():
                    check_fingerprint(plan["outputs"][kind], stored, self.fingerprint, "model")
        from tqdm import tqdm

        total = sum(len(p["todo_any"]) for p in plans)
        bar = tqdm(total=total, unit="img", disable=not self.opts.progress or not total, dynamic_ncols=True)
        workers = self.opts.workers
        loader = torch.utils.data.DataLoader(
            ChunkDataset([chunk for _, chunk in work], load=load_vit_image), batch_size=None, shuffle=False,
            num_workers=workers,
            worker_init_fn=worker_init if workers else None, prefetch_factor=2 if workers else None)
        current = None
        try:
            for k, chunk_ids, x, bad in loader:
                plan = work[k][0]
                if plan is not current:
                    if current is not None:
                        self._finish(current)
                    current = plan
                    plan["t0"] = time.perf_counter()
                    plan["writers"] = {kind: H5Writer(path, plan["states"][kind][0], self.provenance(kind))
                                       for kind, path in plan["outputs"].items()}
                    bar.set_description(plan["job"].name)
                res = plan["result"]
                res.bad.extend(b for b in bad if b[0] in plan["todo_any"])
                if x is not None:
                    pooled, toks = self.forward(x)
                    for kind, arrays in (("vit", pooled), ("vit_tokens", toks)):
                        if kind in plan["writers"]:
                            todo = plan["todo"][kind]
                            plan["writers"][kind].put([(i, arrays[j]) for j, i in enumerate(chunk_ids) if i in todo])
                    res.extracted += sum(1 for i in chunk_ids if i in plan["todo_any"])
                bar.update(sum(1 for i in chunk_ids if i in plan["todo_any"])
                           + sum(1 for b in bad if b[0] in plan["todo_any"]))
            if current is not None:
                self._finish(current)
        except BaseException:
            for plan in plans:
                for writer in (plan.get("writers") or {}).values():
                    writer.abort()
            raise
        finally:
            bar.close()
        results = [p["result"] for p in plans]
        bad = [p for p in plans if p["result"].bad]
        if bad and not self.opts.skip_bad:
            n = sum(len(p["result"].bad) for p in bad)
            reports = ", ".join(str(p["report"]) for p in bad)
            raise DataError(f"{n} image(s) could not be read (listed in {reports}); fix or remove them and rerun, or "
                            "rerun with --skip-bad to accept the split(s) without them.")
        return results

    def _finish(self, plan: dict) -> None:
        res, report = plan["result"], plan["report"]
        final = {"n_images": len(plan["ids"]) - len(res.bad), "n_skipped": len(res.bad),
                 "skipped_report": report.name if res.bad else ""}
        if res.bad:
            lines = ["# image_id\tpath\treason"] + [f"{i}\t{p}\t{r}" for i, p, r in res.bad]
            from vlrouting.fileio import atomic_write_text

            atomic_write_text(report, "\n".join(lines) + "\n")
        elif report.exists():
            report.unlink()
        for writer in plan["writers"].values():
            if res.bad and not self.opts.skip_bad:
                writer.close()  # left as .partial: the bad images must be fixed first
            else:
                writer.finish(final)
        res.finalized = not (res.bad and not self.opts.skip_bad)
        plan["writers"] = None
        res.seconds = time.perf_counter() - plan["t0"]
        if self.opts.verbose:
            rate = res.extracted / res.seconds if res.seconds > 0 else 0.0
            where = ", ".join(str(p) if res.finalized else f"{p}.partial (incomplete)"
                              for p in plan["outputs"].values())
            print(f"{plan['job'].name}: extracted {res.extracted} images ({res.skipped_done} already done, "
                  f"{len(res.bad)} bad) -> {where} in {res.seconds:.1f}s ({rate:.1f} img/s)")


def extract_vit_dataset(root, dataset: str, split: str | None = None, all_images: bool = False,
                        **options) -> list[ViTJobResult]:
    """``extract-vit --dataset``: e.g. ``extract_vit_dataset(root, "coco", model=TINY_DIR, tokens=True)``."""
    opts = ViTExtractOptions(**options)
    jobs = preset_jobs(Path(root), dataset, split, all_images, kind="vit")
    tok = {job.name: tokens_output(job, Path(root), None) for job in jobs} if opts.tokens else {}
    return ViTExtractor(opts, jobs, tok).run()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m feature_extraction extract-vit",
        description="Frozen ViT pooler output (1×d float16; optionally all tokens), one HDF5 file per dataset "
                    "split under <DS>/vit_features/ (and <DS>/vit_tokens/); resumable.")
    src = add_source_arguments(p, "with --images: the pooled-feature .h5 file to write")
    src.add_argument("--tokens-output", help="with --images --tokens: the token .h5 file to write")
    net = p.add_argument_group("network")
    net.add_argument("--model", default=DEFAULT_MODEL,
                     help=f"hub name or save_pretrained folder of a ViTModel (default {DEFAULT_MODEL}; "
                          "google/vit-large-patch16-224-in21k for Table B4)")
    net.add_argument("--random-init", action="store_true", help="random weights from the model's config (tests)")
    net.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    run = p.add_argument_group("run")
    run.add_argument("--tokens", action="store_true", help="also write all last-hidden-state tokens (vit_tokens)")
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--workers", type=int, default=2, help="DataLoader processes decoding images")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads for the forward (0: torch's choice)")
    run.add_argument("--skip-bad", action="store_true", help="finish a split without its unreadable/missing images")
    run.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = ViTExtractOptions(model=args.model, random_init=args.random_init, seed=args.seed, tokens=args.tokens,
                             batch_size=args.batch_size, workers=args.workers, device=args.device,
                             threads=args.threads, skip_bad=args.skip_bad,
                             progress=not args.no_progress and sys.stderr.isatty())
    if args.images:
        if args.dataset:
            raise ConfigError("--images and --dataset exclude each other; pass one of them.")
        needed = [("--output", args.output)] + ([("--tokens-output", args.tokens_output)] if args.tokens else [])
        for flag, value in needed:
            if not value:
                raise ConfigError(f"--images needs {flag} FILE.h5 naming the file to write.")
            if not value.endswith(".h5"):
                raise ConfigError(f"{flag} {value} must end in .h5 (the reader looks for *.h5 files).")
        jobs = [folder_job(Path(args.images), Path(args.output), [Path(a) for a in args.annotations or []])]
        tok = {jobs[0].name: tokens_output(jobs[0], None, Path(args.tokens_output))} if args.tokens else {}
    elif args.dataset:
        if args.output or args.annotations or args.tokens_output:
            raise ConfigError("--output/--tokens-output/--annotations go with --images; --dataset writes "
                              "<root>/<DS>/vit_features/ (and vit_tokens/).")
        if not Path(args.root).is_dir():
            raise DataError(f"--root {args.root} is not a folder; pass the datasets root (e.g. --root datasets).")
        jobs = preset_jobs(Path(args.root), args.dataset, args.split, args.all_images, kind="vit")
        tok = {job.name: tokens_output(job, Path(args.root), None) for job in jobs} if args.tokens else {}
    else:
        raise ConfigError("say what to extract: --dataset {coco,vg,gqa,nlvr,synthetic} [--root DIR] or "
                          "--images DIR --output FILE.h5.")
    t0 = time.perf_counter()
    results = ViTExtractor(opts, jobs, tok).run()
    n = sum(r.extracted for r in results)
    print(f"done: {n} images extracted in {time.perf_counter() - t0:.1f}s over {len(results)} split(s)")
    return 0
