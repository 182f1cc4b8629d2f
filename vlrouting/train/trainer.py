"""The multitask training loop (VL-Adapter's schedule, reference §5; DESIGN §5, §7).

``torchrun --nproc_per_node=N -m vlrouting.train --config NAME [key=value ...] [--resume latest]``

AdamW (eps 1e-6, weight decay 0.01 on everything but biases — VL-Adapter's grouping, §3.10), linear warm-up over
10 % of the steps (``train.warmup_ratio``, or ``train.warmup_steps`` steps) then linear decay, gradient clipping 5
(``train.clip_grad_norm``, 0 = off), one task per batch from the multitask loader, DDP with
``find_unused_parameters`` (per-task modules leave the other tasks' parameters unused), evaluation every epoch on
the validation splits and the test splits after the last epoch.

The loop names no model family, task or PEFT method: the model comes from the family registry and returns its
logits and targets aligned plus any auxiliary losses (:class:`vlrouting.models.ModelOutput`); the task turns them
into its loss as a local mean over a number of units (:class:`vlrouting.data.tasks.LossTerm`), whose count is
summed over processes so that N processes optimise exactly the loss of one process with the same global batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from vlrouting.config import ExperimentConfig, dump_config, load_config
from vlrouting.errors import VLRoutingError
from vlrouting.machine import machine_info
from vlrouting.peft import save_peft, save_peft_init
from vlrouting.fileio import atomic_write_bytes, make_folder, remove_created, remove_orphans
from vlrouting.train.accel import LoaderTimer, adamw, configure_backends, maybe_compile
from vlrouting.train.checkpoint import (
    STATE_NAME, gather_rng_states, rng_state, rng_state_for_rank, save_training_state, set_rng_state,
)
from vlrouting.train.dist import (
    DistInfo, agree_on_errors, agreed, all_reduce_mean, all_reduce_sum, any_rank, barrier, cleanup, init_distributed,
    reports,
)
from vlrouting.train.predict import evaluate_split
from vlrouting.train.resume import open_run


class TrainingDiverged(VLRoutingError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def log(info: DistInfo, run_dir: Path | None, msg: str) -> None:
    if not info.is_main:
        return
    print(msg, flush=True)
    if run_dir is not None:
        with open(run_dir / "log.txt", "a") as fh:
            fh.write(msg + "\n")


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def build_optimizer(model: torch.nn.Module, cfg: ExperimentConfig, device: torch.device | None = None):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if "bias" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return adamw(groups, lr=cfg.train.lr, eps=cfg.train.adam_eps, device=device or torch.device("cpu"))


def linear_schedule(optimizer, total_steps: int, warmup_ratio: float, warmup_steps: int | None = None):
    """Linear warm-up then linear decay to 0 at ``total_steps``; the warm-up lasts ``warmup_steps`` steps when
    given (e.g. the GPT-2 captioning recipe's 5,000), else ``warmup_ratio`` of all steps."""
    warmup = int(warmup_steps) if warmup_steps is not None else int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on ``device``; from pinned memory (``data.pin_memory`` on CUDA) the copies are
    asynchronous and overlap with the work queued before them."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def versions() -> dict:
    import transformers

    import vlrouting

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "vlrouting": vlrouting.__version__}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Trainer:
    def __init__(self, cfg: ExperimentConfig, info: DistInfo, resume: bool = False):
        from vlrouting.data.multitask import MultitaskLoader
        from vlrouting.models.registry import build_model, load_tokenizer
        from vlrouting.train.tasks_setup import build_tasks, preflight

        self.cfg, self.info = cfg, info
        self.run_dir = cfg.run_dir
        self.tasks = build_tasks(cfg)
        preflight(cfg, self.tasks)  # every path and image id checked before anything is written
        saved = open_run(cfg, info.is_main, resume)  # refuses a finished, changed or occupied run (train.resume)
        seed_everything(cfg.train.seed)
        self.tokenizer = load_tokenizer(cfg.model)
        self.model = build_model(cfg.model, cfg.peft, pretrained=True, tokenizer=self.tokenizer)
        self.model.to(info.device)
        self.params = self.model.parameter_report()
        self.data_spec = cfg.model.data_spec()
        root = cfg.data.root
        self.train_sets = {
            name: task.build_dataset(root, "train", self.tokenizer, limit=cfg.data.limit_train, seed=cfg.train.seed,
                                     spec=self.data_spec)
            for name, task in self.tasks.items()
        }
        data = cfg.data
        self.loader = MultitaskLoader(self.train_sets, self.tasks, cfg.train.batch_size, world_size=info.world_size,
                                      rank=info.rank, seed=cfg.train.seed, num_workers=data.num_workers,
                                      pin_memory=data.pin_memory and info.device.type == "cuda",
                                      persistent_workers=data.persistent_workers,
                                      prefetch_factor=data.prefetch_factor,
                                      buffers_per_worker=data.buffers_per_worker)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        configure_backends(info.device, cfg.train.allow_tf32)
        self.optimizer = build_optimizer(self.model, cfg, info.device)
        self.scheduler = linear_schedule(self.optimizer, self.total_steps, cfg.train.warmup_ratio,
                                         cfg.train.warmup_steps)
        self.ddp = (DDP(self.model, device_ids=[info.local_rank] if info.device.type == "cuda" else None,
                        find_unused_parameters=True) if info.distributed else self.model)
        self.forward = maybe_compile(self.ddp, cfg.train.compile, cfg.train.compile_backend, cfg.train.compile_dynamic)
        self.scaler = torch.amp.GradScaler("cuda") if (cfg.train.precision == "fp16" and info.device.type == "cuda") else None
        self.step, self.epoch = 0, 0
        self.start_time = time.time()
        self.elapsed_before = 0.0
        self.resumed = resume
        self.created: list[Path] = []  # folders this run created (removed again if it fails before a checkpoint)
        if saved is not None:
            self._restore(saved)
        self._open_run_dir()
        self.tb = None
        if cfg.train.tensorboard and info.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                log(info, self.run_dir, "tensorboard is not installed; continuing without it (pip install tensorboard)")

    # ------------------------------------------------------------------ run directory
    @agree_on_errors
    def _open_run_dir(self) -> None:
        if not self.info.is_main:
            return
        # (open_run has already refused an occupied directory without --resume)
        self.created = make_folder(self.run_dir)
        for folder in (self.run_dir, self.run_dir / "predictions"):
            remove_orphans(folder)  # temporary files of a writer that was killed
        atomic_write_bytes(self.run_dir / "config.yaml", dump_config(self.cfg).encode())
        if not self.resumed:  # the PEFT weights at step 0 of a fresh run (ΔW analyses, Fig. B2)
            save_peft_init(self.model, self.run_dir)

    def discard_unfinished(self) -> None:
        """After an error: remove the run directory of a fresh run that has no checkpoint yet (nothing in it can be
        resumed or reported); a resumed run or one with a checkpoint is kept for --resume latest."""
        if self.info.is_main and not self.resumed and self.created and not (self.run_dir / STATE_NAME).exists():
            if self.tb is not None:
                self.tb.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)
            remove_created(self.created)

    # ------------------------------------------------------------------ state
    def _trainable_state(self) -> dict:
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def _state(self) -> dict:
        return {"model": self._trainable_state(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng_state(), "step": self.step,
                "epoch": self.epoch, "loader": self.loader.state_dict(),
                "elapsed": self.elapsed_before + time.time() - self.start_time}

    def _restore(self, state: dict) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, t in state["model"].items():
                params[name].copy_(t)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(rng_state_for_rank(state, self.info.rank, self.info.world_size))
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.loader.load_state_dict(state["loader"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        log(self.info, None, f"resumed from {self.run_dir / 'training_state.pt'} at epoch {self.epoch}, step {self.step}")

    @agree_on_errors
    def save_checkpoint(self) -> None:
        rngs = gather_rng_states(self.info.world_size)
        if self.info.is_main:
            save_training_state(self.run_dir, {**self._state(), "rng_ranks": rngs})
            save_peft(self.model, self.run_dir, {"model": self.cfg.to_dict()["model"],
                                                 "peft": self.cfg.to_dict()["peft"]})

    # ------------------------------------------------------------------ loop
    def autocast(self):
        if self.cfg.train.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.train.precision == "bf16" else torch.float16
        return torch.autocast(self.info.device.type, dtype=dtype)

    def train_step(self, batch: dict) -> dict[str, float]:
        """One optimisation step; returns the logged losses (``loss`` = task loss, then each auxiliary loss)."""
        task = self.tasks[batch["task"]]
        batch = to_device(batch, self.info.device)
        with self.autocast():
            output = self.forward(batch)
            term = task.loss_term(output, batch)
        # the task loss over the global batch: each rank's mean weighted by its share of the summed units (exactly
        # 1.0 with one process), times the world size because DDP averages the ranks' gradients
        total = all_reduce_sum(term.weight.detach().float(), self.info).clamp_min(1.0)
        scale = term.weight * self.info.world_size / total
        task_loss = term.value * scale
        aux = {name: value.float() for name, value in output.aux_losses.items()}
        loss = task_loss + sum(aux.values()) if aux else task_loss
        bad = not bool(torch.isfinite(loss).item())
        if any_rank(bad, self.info):
            kept = (f"the last checkpoint in {self.run_dir} is kept for --resume latest"
                    if (self.run_dir / STATE_NAME).exists() else "no checkpoint had been written yet")
            raise TrainingDiverged(f"the loss became NaN/Inf at step {self.step + 1} on task '{batch['task']}' "
                                   f"({kept}); try a lower train.lr or train.precision=fp32.")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.cfg.train.clip_grad_norm > 0:  # 0: no clipping (the routing paper's released recipes)
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           self.cfg.train.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        logged = {"loss": float(all_reduce_mean(task_loss.detach(), self.info).item())}
        logged.update({name: float(all_reduce_mean(v.detach(), self.info).item()) for name, v in aux.items()})
        return logged

    def run(self) -> dict:
        cfg, info = self.cfg, self.info
        log(info, self.run_dir, f"{cfg.name}: {self.params['trainable']:,} trainable of {self.params['total']:,} "
                                f"({self.params['percent']:.2f} %), {self.steps_per_epoch} steps/epoch × "
                                f"{cfg.train.epochs} epochs, world size {info.world_size}")
        kill_at = int(os.environ.get("VLROUTING_FAULT_KILL_AT_STEP", "0"))  # fault injection (resume tests)
        max_steps = cfg.train.max_steps
        stop = False
        while self.epoch < cfg.train.epochs and not stop:
            self.loader.set_epoch(self.epoch)
            for ds in self.train_sets.values():
                if hasattr(ds, "set_epoch"):
                    ds.set_epoch(self.epoch)
            self.ddp.train()
            bar = None
            if info.is_main:
                from tqdm import tqdm

                bar = tqdm(total=self.steps_per_epoch, initial=self.loader.position, desc=f"epoch {self.epoch}",
                           leave=False, disable=not sys.stderr.isatty())
            timer = LoaderTimer(self.loader)
            for batch in agreed(timer, info):  # a worker's data error stops every rank together
                losses = self.train_step(batch)
                loss = losses["loss"]
                self.step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(task=batch["task"], loss=f"{loss:.4f}")
                if info.is_main:
                    append_jsonl(self.run_dir / "train_log.jsonl", {"step": self.step, "epoch": self.epoch,
                                                                     "task": batch["task"], **losses,
                                                                     "lr": self.scheduler.get_last_lr()[0]})
                    if self.tb is not None:
                        for name, value in losses.items():
                            self.tb.add_scalar(f"{name}/{batch['task']}", value, self.step)
                if cfg.train.log_every and self.step % cfg.train.log_every == 0:
                    log(info, self.run_dir, f"step {self.step} epoch {self.epoch} task {batch['task']} loss {loss:.4f}")
                if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                    self.save_checkpoint()
                if kill_at and self.step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                if max_steps and self.step >= max_steps:
                    stop = True
                    break
            if bar is not None:
                bar.close()
            self.throughput = timer.summary()
            log(info, self.run_dir, f"epoch {self.epoch}: {self.throughput['samples_per_s']} samples/s on rank 0, "
                                    f"data wait {100 * (self.throughput['data_wait_fraction'] or 0):.1f} % of the "
                                    "step time")
            if stop and self.loader.position < self.steps_per_epoch:
                break
            self.epoch += 1
            self.loader.set_epoch(self.epoch)  # position 0 of the next epoch, for the checkpoint
            if cfg.train.eval_every and self.epoch % cfg.train.eval_every == 0:
                self.evaluate("val")
            self.save_checkpoint()
        self.loader.close()  # the training workers (and their feature buffers) are not needed any more
        results = self.evaluate("test") if cfg.train.test_after else {}
        return self.finish(results)

    @agree_on_errors
    def evaluate(self, split: str) -> dict:
        out = {}
        if self.info.is_main:
            self.model.eval()
            for name, task in self.tasks.items():
                metrics = evaluate_split(self, task, split)
                out[name] = metrics
                record = {"epoch": self.epoch, "step": self.step, "split": split, "task": name,
                          "headline": task.headline(metrics), "metrics": metrics}
                append_jsonl(self.run_dir / "metrics.jsonl", record)
                if self.tb is not None:
                    self.tb.add_scalar(f"{split}/{name}", task.headline(metrics), self.epoch)
                log(self.info, self.run_dir, f"[{split}] epoch {self.epoch} {name}: {task.headline(metrics):.2f}")
            self.model.train()
        return out

    @agree_on_errors
    def finish(self, test: dict) -> dict:
        results = {}
        if self.info.is_main:
            from vlrouting.data.tasks import table_values, task_set_of

            summary = {name: self.tasks[name].headline(m) for name, m in test.items()}
            task_set = task_set_of(self.tasks)
            if task_set is not None and task_set.average_key in (values := table_values(test)):
                summary[task_set.average_key] = values[task_set.average_key]
            results = {
                "experiment": self.cfg.output.experiment or self.cfg.name, "run": self.run_dir.name,
                "config_name": self.cfg.name, "paper_row": self.cfg.paper_row, "seed": self.cfg.train.seed,
                "family": self.cfg.model.family, "tasks": list(self.tasks),
                "status": "completed", "summary": summary, "test": test,
                "params": self.params, "steps": self.step, "epochs": self.epoch,
                "world_size": self.info.world_size, "git_commit": git_commit(), "versions": versions(),
                "machine": machine_info(),  # what CPU results are bit-identical across (README, Determinism)
                "wall_time_s": round(self.elapsed_before + time.time() - self.start_time, 2),
                "peak_memory_mb": round(peak_memory_mb(self.info.device), 1),
                "throughput": getattr(self, "throughput", None),
            }
            save_peft(self.model, self.run_dir, {"model": self.cfg.to_dict()["model"],
                                                 "peft": self.cfg.to_dict()["peft"]})
            atomic_write_bytes(self.run_dir / "results.json", json.dumps(results, indent=2).encode())
            if self.tb is not None:
                self.tb.close()
        return results


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(prog="python -m vlrouting.train",
                                 description="Multitask CLIP-BART training with routing (torchrun-native).")
    ap.add_argument("--config", required=True, help="packaged config name or YAML path")
    ap.add_argument("--resume", choices=["latest"], help="continue the run in the configured run directory")
    ap.add_argument("--check", action="store_true", help="validate config, data and features, then exit")
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides")
    return ap.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = DistInfo()
    try:
        cfg = load_config(args.config, args.overrides)
        if args.check:
            from vlrouting.train.tasks_setup import build_tasks, preflight

            preflight(cfg, build_tasks(cfg))
            print(f"ok: {cfg.name} — config, datasets under {cfg.data.root} and features are in place")
            return 0
        info = init_distributed()
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        trainer = Trainer(cfg, info, resume=args.resume == "latest")
        try:
            trainer.run()
        except VLRoutingError:
            trainer.discard_unfinished()
            raise
        finally:
            del trainer  # before cleanup(info): see there
        return 0
    except VLRoutingError as exc:
        if reports(exc, int(os.environ.get("RANK", "0"))):  # once: rank 0, or the rank whose error it is
            print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup(info)


def entry() -> None:
    sys.exit(main())
