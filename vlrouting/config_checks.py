"""Values a config can be typed with but a run cannot use, refused with one sentence before anything starts.

Type coercion (:mod:`vlrouting.config`) turns ``train.batch_size=0`` into a valid int and ``data.tasks=vqa`` into
a string; without these checks the first would train nothing and still write a "completed" run, the second would be
read letter by letter. :func:`check_config` is called once, from :func:`vlrouting.config.build_config`.
"""

from __future__ import annotations

import math
from typing import Any

from vlrouting.errors import ConfigError
from vlrouting.fileio import is_plain_name


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at_least(where: str, value: Any, low: float, hint: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not _number(value) or value < low:
        raise ConfigError(f"{where} must be {hint}, got {value!r}.")


def _check_tasks(tasks: Any) -> None:
    from vlrouting.data.tasks import TASKS, get_task

    example = ",".join(TASKS)
    if isinstance(tasks, str):
        raise ConfigError(f"data.tasks must be a list of task names, got the string {tasks!r}; write "
                          f"data.tasks=[{tasks.strip('[] ')}] (one task) or data.tasks=[{example}].")
    if not isinstance(tasks, (list, tuple)) or not tasks:
        raise ConfigError(f"data.tasks must be a non-empty list of task names such as [{example}], got {tasks!r}.")
    for task in tasks:
        if not isinstance(task, str):
            raise ConfigError(f"data.tasks holds {task!r}, which is not a task name; valid tasks: "
                              f"{', '.join(TASKS)}.")
        get_task(task)
    twice = sorted({t for t in tasks if list(tasks).count(t) > 1})
    if twice:
        raise ConfigError(f"data.tasks names {', '.join(twice)} twice; list each task once.")


def _check_folder_name(option: str, value: Any) -> None:
    """``output.experiment`` / ``output.run`` become one folder level under ``output.snap_dir``: no escaping it."""
    text = str(value)
    if not is_plain_name(text) or text != text.strip():
        raise ConfigError(f"{option} {text!r} must be a plain folder name (no '/', '\\' or '..', not empty); it "
                          f"names one folder under output.snap_dir — use output.snap_dir to choose where runs go.")


def check_config(cfg) -> None:
    """Raise a one-sentence ConfigError for a value no run can use (``cfg`` is an ExperimentConfig)."""
    from vlrouting.evaluation.vqa import VERSIONS

    _check_tasks(cfg.data.tasks)
    t, d = cfg.train, cfg.data
    _at_least("train.batch_size", t.batch_size, 1, "a positive number of examples per batch")
    _at_least("train.eval_batch_size", t.eval_batch_size, 1, "a positive number or null", optional=True)
    _at_least("train.epochs", t.epochs, 1, "at least 1 (a run with no epoch trains nothing)")
    _at_least("train.max_steps", t.max_steps, 1, "a positive number of steps or null", optional=True)
    if not _number(t.lr) or t.lr <= 0:
        raise ConfigError(f"train.lr must be a positive learning rate, got {t.lr!r}; set e.g. train.lr=1e-3.")
    if not _number(t.adam_eps) or t.adam_eps <= 0:
        raise ConfigError(f"train.adam_eps must be positive, got {t.adam_eps!r}; the default is 1e-6.")
    if not _number(t.warmup_ratio) or not 0 <= t.warmup_ratio < 1:
        raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio!r}; the default is 0.1.")
    _at_least("train.warmup_steps", t.warmup_steps, 0, "0 or more steps, or null to use train.warmup_ratio",
              optional=True)
    # 0 or .inf is "no clipping" (.inf: the routing paper's ViT+RoBERTa recipe; clip_grad_norm_ then never scales)
    no_clip = isinstance(t.clip_grad_norm, float) and t.clip_grad_norm == math.inf
    if not no_clip and (not _number(t.clip_grad_norm) or t.clip_grad_norm < 0):
        raise ConfigError(f"train.clip_grad_norm must be 0 or .inf (no clipping) or positive, got "
                          f"{t.clip_grad_norm!r}; the default is 5.")
    _at_least("train.weight_decay", t.weight_decay, 0, "0 or more")
    _at_least("train.eval_every", t.eval_every, 0, "0 (no validation) or a number of epochs")
    _at_least("train.checkpoint_every", t.checkpoint_every, 0, "0 (end of epoch only) or a number of steps")
    _at_least("train.log_every", t.log_every, 0, "0 (off) or a number of steps")
    _at_least("train.num_beams", t.num_beams, 1, "at least 1")
    _at_least("train.caption_max_length", t.caption_max_length, 2, "at least 2 tokens")
    if str(t.vqa_eval_version) not in VERSIONS:
        raise ConfigError(f"train.vqa_eval_version must be {' or '.join(VERSIONS)} (the official vqaEval.py "
                          f"revision), got {t.vqa_eval_version!r}.")
    _at_least("data.num_workers", d.num_workers, 0, "0 or more DataLoader processes")
    _at_least("data.limit_train", d.limit_train, 1, "a positive number of examples or null", optional=True)
    _at_least("data.limit_eval", d.limit_eval, 1, "a positive number of examples or null", optional=True)
    if cfg.output.experiment is None:
        _check_folder_name("name (the default output.experiment)", cfg.name)
    else:
        _check_folder_name("output.experiment", cfg.output.experiment)
    if cfg.output.run is not None:
        _check_folder_name("output.run", cfg.output.run)
