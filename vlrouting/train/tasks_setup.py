"""Tasks of a run and the pre-flight check that runs before anything is written to ``snap/``.

The pre-flight check loads every annotation file the run will read (each record's field types checked by its task),
checks that no split the run uses is empty, that every referenced image id is present in its feature files, that
every feature file has ``model.feat_dim`` channels and that the run directory can be created, so a bad input fails in
seconds with one sentence, not hours into a run. Feature *values* are checked where they are read
(:func:`vlrouting.data.features.check_finite`): reading every feature here would take minutes on real data.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

from vlrouting.config import ExperimentConfig
from vlrouting.data.tasks import build_tasks as _build_tasks
from vlrouting.data.features import channel_dims
from vlrouting.data.tasks.base import check_root, open_stores
from vlrouting.data.tasks.vqa import VQATask
from vlrouting.errors import ConfigError, DataError, MissingFeatureError
from vlrouting.fileio import check_writable


def build_tasks(cfg: ExperimentConfig) -> dict:
    """The run's tasks, with the run's beam settings (train.num_beams, train.caption_max_length), batch ratio
    overrides (data.batch_ratios) and VQA evaluator revision (train.vqa_eval_version) applied."""
    tasks = _build_tasks(cfg.data.tasks, use_task_prompts=cfg.data.use_task_prompts,
                         vladapter_prompt_typo=cfg.data.gqa_prompt_typo)
    ratios = cfg.data.batch_ratios or {}
    if not isinstance(ratios, dict):
        raise ConfigError(f"data.batch_ratios must map task names to numbers (e.g. data.batch_ratios.nlvr=1), got "
                          f"{ratios!r}.")
    for name, ratio in ratios.items():
        if name not in tasks:
            raise ConfigError(f"data.batch_ratios.{name}: '{name}' is not a task of this run; tasks: "
                              f"{', '.join(tasks)}.")
        try:
            value = Fraction(str(ratio)).limit_denominator(1000)
        except (ValueError, ZeroDivisionError):
            value = Fraction(0)
        if value <= 0:
            raise ConfigError(f"data.batch_ratios.{name} must be a positive number, got {ratio!r}.")
        tasks[name] = dataclasses.replace(tasks[name], batch_ratio=value)
    for name, task in tasks.items():
        if isinstance(task, VQATask):
            tasks[name] = task = dataclasses.replace(task, eval_version=str(cfg.train.vqa_eval_version))
        if task.decode.strategy == "beam":
            decode = dataclasses.replace(task.decode, num_beams=cfg.train.num_beams,
                                         max_length=cfg.train.caption_max_length)
            tasks[name] = dataclasses.replace(task, decode=decode)
    return tasks


def splits_used(cfg: ExperimentConfig) -> list[str]:
    splits = ["train"]
    if cfg.train.eval_every:
        splits.append("val")
    if cfg.train.test_after:
        splits.append("test")
    return splits


def preflight(cfg: ExperimentConfig, tasks: dict) -> None:
    """Raise a one-sentence VLRoutingError if the run could not finish: an annotation file, a feature file or an
    image id is missing, a split the run uses is empty, a record has the wrong field types (each task's
    ``check_record``), feature files disagree with ``model.feat_dim``, or the run directory cannot be written."""
    root = check_root(cfg.data.root)
    spec = cfg.model.data_spec()  # the one source of the data shapes the model needs
    check_writable(cfg.run_dir, "output.snap_dir")
    stores: dict = {}
    for name, task in tasks.items():
        for split in splits_used(cfg):
            records = task.load_records(root, split)
            if not records:
                files = ", ".join(str(root / s.annotation) for s in task.sources(split))
                raise DataError(f"{name} {split}: {files} hold(s) no {split} examples; add them (see the README's data "
                                f"section), {_SKIP_SPLIT[split].format(task=name)}.")
            limit = cfg.data.limit_train if split == "train" else cfg.data.limit_eval
            if limit is not None:
                records = records[:limit]
            needed = [n for n in task.feature_datasets(split) if n not in stores]
            stores.update(open_stores(root, needed, None, spec))
            for n in needed:
                _check_feature_dims(spec, stores[n])
            known = {n: stores[n].ids() for n in task.feature_datasets(split)}
            for rec in records:
                for ds, img_id in task.image_keys(rec):
                    if img_id not in known[ds]:
                        raise MissingFeatureError(
                            f"{name} {split}: image id '{img_id}' has no features in {stores[ds].path}; "
                            f"extract them with `bash scripts/extract_features.sh {ds.lower()}` "
                            f"(or `python -m feature_extraction verify` to list every missing id)."
                        )


_SKIP_SPLIT = {
    "train": "or remove {task} from data.tasks",
    "val": "set train.eval_every=0 to train without validation, or remove {task} from data.tasks",
    "test": "set train.test_after=false to skip the test evaluation, or remove {task} from data.tasks",
}


def _check_feature_dims(spec, store) -> None:
    """Every .h5 file of the folder (first dataset of each) must have the data spec's ``feat_dim`` channels."""
    dims = channel_dims(store)
    if len(set(dims.values())) > 1:
        listing = ", ".join(f"{Path(p).name}: {d}" for p, d in sorted(dims.items()))
        raise DataError(f"feature files in {store.path} differ in their number of channels ({listing}); re-extract "
                        f"them with one CLIP model so that every file has model.feat_dim={spec.feat_dim} "
                        f"channels.")
    for path, dim in dims.items():
        if dim != spec.feat_dim:
            raise ConfigError(f"features in {path} have {dim} channels but model.feat_dim is {spec.feat_dim}; "
                              f"set model.feat_dim={dim} (or extract features with the intended CLIP model).")
