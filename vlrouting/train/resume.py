"""What ``--resume latest`` accepts, and how a run directory is prepared for a run (DESIGN §7, runs and results).

A run directory holds one run: the resolved ``config.yaml``, the logs ``train_log.jsonl`` (one line per step) and
``metrics.jsonl`` (one line per evaluation of a task), ``training_state.pt`` (the last checkpoint) and, once the
run is over, ``results.json``. :func:`open_run` is called once per process before the model is built:

- **Resume** (:func:`resume_run`): a run whose ``results.json`` says ``completed`` is finished and is refused. The
  configuration must be the saved one, apart from the keys in :data:`MAY_CHANGE`; any other difference is refused
  with one sentence listing each key as ``old → new``. A checkpoint is only exact for the configuration that wrote
  it: another routing, learning rate or PEFT method would silently continue a different experiment from weights
  trained for this one (or, for another PEFT method, meet tensors the model does not have). The ``output`` section
  is not compared: it is how the run directory was found, whatever spelling of the path was used. The logs are
  then cut back to what the checkpoint covers (:func:`truncate_logs`), so that after the resumed run each step and
  each evaluation is logged once, as in an uninterrupted run.
- **Fresh start** (:func:`start_run`): a directory that already holds a checkpoint or results is refused (resume
  it or pick another ``output.run``); the logs of an earlier attempt that died before its first checkpoint are
  removed, so they are not merged into this run's.

Only the main process writes. Every process runs the checks (they only read), so all ranks fail together.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vlrouting.config import SECTIONS, ExperimentConfig, load_config
from vlrouting.errors import ConfigError, DataError
from vlrouting.fileio import atomic_write_text
from vlrouting.train.checkpoint import STATE_NAME, load_training_state

#: Keys that may differ from the saved configuration on ``--resume latest``, and why that is safe. Apart from
#: ``train.epochs``, which lengthens the schedule on purpose, none of them changes what a training step computes: a
#: resumed run with them changed takes the same steps as without.
MAY_CHANGE = {
    "train.epochs": "may only grow: it extends the run; the linear warm-up and decay are recomputed for the new "
                    "total number of steps from the resumed step on",
    "train.max_steps": "where a smoke run stops early; it does not enter the learning-rate schedule",
    "train.checkpoint_every": "when the state is saved; saving reads the RNG states but never advances them",
    "train.log_every": "console and log.txt output only",
    "train.tensorboard": "TensorBoard output only",
    "train.eval_batch_size": "evaluation batching only; evaluation runs without dropout and leaves the RNGs alone",
    "data.num_workers": "batches are the same for any number of workers (targets depend on seed, epoch and index, "
                        "worker seeds come from the loaders' own generators)",
    "data.persistent_workers": "how batches are loaded, not which (the epoch travels with the indices)",
    "data.prefetch_factor": "how far the workers read ahead, not what they read",
    "data.buffers_per_worker": "which shared buffers carry the batches, not their contents",
    "data.pin_memory": "whether batches are staged in page-locked memory, not their contents",
    "train.compile": "how the same forward is executed (compiled kernels may round differently)",
    "train.compile_backend": "how the same forward is executed (compiled kernels may round differently)",
    "train.compile_dynamic": "how the same forward is executed (compiled kernels may round differently)",
}
#: Keys of :data:`MAY_CHANGE` that may not decrease.
GROW_ONLY = ("train.epochs",)
#: Not compared: ``output`` locates the run directory; ``peft.tasks`` is always a copy of ``data.tasks``.
NOT_COMPARED = ("output", "peft.tasks")

#: The logs one run appends to, and what a failed first attempt leaves behind besides ``config.yaml``.
TRAIN_LOG, METRICS_LOG = "train_log.jsonl", "metrics.jsonl"
ATTEMPT_OUTPUTS = (TRAIN_LOG, METRICS_LOG, "log.txt", "predictions", "tensorboard")


def _flat(cfg: ExperimentConfig) -> dict:
    """``section.key → value`` (the override spelling); a ``null`` section (full fine-tuning) is one entry."""
    tree = cfg.to_dict()
    out = {"name": tree["name"], "paper_row": tree["paper_row"]}
    for section in SECTIONS:
        if tree[section] is None:
            out[section] = None
        else:
            out.update({f"{section}.{k}": v for k, v in tree[section].items()})
    return out


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def config_differences(saved: ExperimentConfig, current: ExperimentConfig) -> list[str]:
    """The refused differences between the saved and the current configuration, as ``key: old → new`` strings."""
    old, new = _flat(saved), _flat(current)
    diffs = []
    if (saved.peft is None) != (current.peft is None):  # full fine-tuning on one side: one entry for the section
        diffs.append("peft: " + " → ".join("null (full fine-tuning)" if c.peft is None else f"{c.peft.method} config"
                                           for c in (saved, current)))
        old = {k: v for k, v in old.items() if not k.startswith("peft")}
        new = {k: v for k, v in new.items() if not k.startswith("peft")}
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key), new.get(key)
        if a == b or key in NOT_COMPARED or key.split(".")[0] in NOT_COMPARED:
            continue
        if key in GROW_ONLY and a is not None and (b is None or b < a):
            diffs.append(f"{key}: {_show(a)} → {_show(b)} (may only grow)")
        elif key not in MAY_CHANGE:
            diffs.append(f"{key}: {_show(a)} → {_show(b)}")
    return diffs


def _completed(run_dir: Path) -> dict | None:
    """The results of a finished run (``results.json`` with status ``completed``), else ``None``."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DataError(f"{path} is not readable JSON; it is written only when a run finishes, so remove it if "
                        "the run did not finish, then resume again.") from None
    return results if isinstance(results, dict) and results.get("status") == "completed" else None


def check_resumable(cfg: ExperimentConfig) -> None:
    """Refuse to resume a finished run, a directory without a checkpoint or a changed configuration."""
    run_dir = cfg.run_dir
    done = _completed(run_dir)
    if done is not None:
        raise ConfigError(
            f"--resume latest: the run in {run_dir} is finished (results.json says completed after "
            f"{done.get('steps')} steps, {done.get('epochs')} epochs), so there is nothing to resume; start a new "
            "run with another output.run to train again.")
    if not (run_dir / STATE_NAME).is_file():
        load_training_state(run_dir)  # raises its one-sentence DataError (no checkpoint: start without --resume)
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise DataError(f"--resume latest: {run_dir} has a {STATE_NAME} but no config.yaml, so the configuration "
                        "cannot be checked; restore config.yaml or start a new run with another output.run.")
    try:
        saved = load_config(str(saved_path))
    except ConfigError as exc:
        raise ConfigError(f"--resume latest: the saved configuration {saved_path} no longer loads ({exc}); start "
                          "a new run with another output.run.") from None
    diffs = config_differences(saved, cfg)
    if diffs:
        raise ConfigError(
            f"--resume latest: the configuration differs from the one {run_dir} was trained with "
            f"({'; '.join(diffs)}); resume with the saved settings (config.yaml there) or start a new run with "
            f"another output.run (only {', '.join(MAY_CHANGE)} may change on resume, train.epochs only upward).")


def _covered(record: dict, log: str, step: int, epoch: int) -> bool:
    """Whether ``record`` was written before the checkpoint taken at ``step`` in ``epoch`` (trainer order)."""
    if log == TRAIN_LOG:  # appended right after its step, before that step's checkpoint
        return int(record["step"]) <= step
    # validation after epoch k is logged with epoch k (counted after the increment) before the end-of-epoch
    # checkpoint, which also has epoch k; the test evaluation comes after the last checkpoint
    return record.get("split") != "test" and int(record["step"]) <= step and int(record["epoch"]) <= epoch


def truncate_logs(run_dir: Path, step: int, epoch: int) -> None:
    """Drop the log lines written after the checkpoint at (``step``, ``epoch``); the resumed run writes them again.

    A line cut short by a kill (only ever the last one) is dropped as well."""
    for name in (TRAIN_LOG, METRICS_LOG):
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        lines = path.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if line.endswith("\n") and _covered(record, name, step, epoch):
                kept.append(line)
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(kept))


def clear_failed_attempt(run_dir: Path) -> list[str]:
    """Remove what an attempt that died before its first checkpoint wrote (logs, predictions, TensorBoard events)."""
    removed = []
    for name in ATTEMPT_OUTPUTS:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def resume_run(cfg: ExperimentConfig, is_main: bool) -> dict:
    """Check that the run may be resumed, load its training state and (main process) cut the logs back to it."""
    check_resumable(cfg)
    state = load_training_state(cfg.run_dir)
    if is_main:
        truncate_logs(cfg.run_dir, int(state["step"]), int(state["epoch"]))
    return state


def start_run(cfg: ExperimentConfig, is_main: bool) -> None:
    """Refuse a directory that holds a run; (main process) remove the outputs of an attempt without a checkpoint."""
    run_dir = cfg.run_dir
    if (run_dir / STATE_NAME).exists() or (run_dir / "results.json").exists():
        raise ConfigError(f"run directory {run_dir} already holds a run; pass --resume latest to continue it or "
                          "choose another output.run.")
    if is_main:
        removed = clear_failed_attempt(run_dir)
        if removed:
            print(f"removed {', '.join(removed)} of an earlier attempt in {run_dir} that died before its first "
                  "checkpoint", flush=True)


def open_run(cfg: ExperimentConfig, is_main: bool, resume: bool) -> dict | None:
    """Prepare the run directory: the training state to continue from with ``resume``, else ``None``."""
    return resume_run(cfg, is_main) if resume else start_run(cfg, is_main)


__all__ = ["MAY_CHANGE", "GROW_ONLY", "config_differences", "check_resumable", "truncate_logs",
           "clear_failed_attempt", "resume_run", "start_run", "open_run"]
