"""The task abstraction: what differs between VQAv2, GQA, NLVR2 and COCO captioning lives in a :class:`Task`.

A task knows its prompt, its per-task batch-size ratio, where its annotation and feature files are for each split,
how to turn one annotation record into an encoder text, a target and a list of images, how to reduce its loss and
how to score predictions. The trainer only ever calls these methods (DESIGN §8: task differences live in task
objects, not in if-chains inside the trainer).

Behaviour reproduced from VL-Adapter (reference/vladapter_spec.md):
- §4.1 task prompts (``vqa: ``, ``gqa: `` or the original typo ``gpa: ``, ``nlvr: ``, ``caption: ``), switched off
  entirely in VL-Adapter's ``multiple_*`` scripts;
- §4.2 encoder texts and targets, each tokenized as ``<s> … </s>`` with the per-task maximum lengths;
- §3.4 labels with ``-100`` padding and the per-task loss reductions;
- §5.2 per-task batch sizes as fixed ratios of the base batch size;
- §4.3 decoding settings, set explicitly rather than inherited from a hub config (DESIGN §9).

The batch contract (what :meth:`Task.collate` returns, consumed by the model and the trainer)::

    {"task": str, "ids": list, "input_ids": (B, L) long, "attention_mask": (B, L) long,
     "vis_feats": (B, V, C) float, "img_order_ids": (B, V) long, "obj_order_ids": (B, V) long,
     "labels": (B, T) long with -100 pads, or None, "loss_weights": (B,) float, "targets": list[str]}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, Union

import numpy as np
import torch

from vlrouting.data.layout import ANNOTATIONS, AnnotationSource, DataSpec
from vlrouting.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
IGNORE_INDEX = -100  # labels at padded target positions (VL-Adapter collate_fn, reference §3.4)
DEFAULT_MAX_TEXT_POSITIONS = 1024  # bart-base's learned text positions; guards the untruncated NLVR2 sentences
DATA_HINT = (
    "place the VL-Adapter annotations there as described in the README's data section (or create the synthetic "
    "set with `python -m vlrouting synthetic --root DIR`), then extract features with "
    "`bash scripts/extract_features.sh {coco,vg,gqa,nlvr,synthetic} --root DIR`"
)

# ``features=`` of :meth:`Task.build_dataset`: None (open the packaged reader), a mapping from feature dataset name
# ("COCO", "VG", "GQA", "nlvr") to a store, or a callable that opens a store for such a name.
FeatureSource = Union[None, Mapping[str, Any], Callable[[str], Any]]


#: One annotation file of a split and the image collection (feature store) it reads; defined by the dataset layout.
Source = AnnotationSource


@dataclass(frozen=True)
class Column:
    """One column a task contributes to result tables: ``key`` (unique across tasks; the task's headline column is
    keyed by the task name), the printed ``title`` and the ``path`` of the number in the task's metric dict."""

    key: str
    title: str
    path: tuple[str, ...]

    def value(self, metrics: Mapping) -> float | None:
        node: Any = metrics
        for part in self.path:
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


@dataclass(frozen=True)
class LossTerm:
    """A task loss as the local mean ``value`` over ``weight`` units (examples or target tokens) of this process.

    The trainer all-reduces the weights so that N processes optimise exactly the mean over the global batch:
    ``Σ_r value_r · weight_r / Σ_r weight_r`` (a per-rank mean averaged by DDP equals it only for equal weights).
    """

    value: torch.Tensor
    weight: torch.Tensor


@dataclass(frozen=True)
class DecodeSpec:
    """How predictions are produced at evaluation (reference §4.3).

    ``strategy``: ``greedy`` and ``beam`` go through ``generate``; ``true_false`` compares the logits of the first
    tokens of ``true`` and ``false`` at the first decoder step (NLVR2, no generation). ``max_length`` counts decoder
    tokens including the decoder start token, as ``generate(max_length=...)`` does for encoder-decoder models.
    """

    strategy: Literal["greedy", "beam", "true_false"]
    num_beams: int = 1
    max_length: int = 20
    no_repeat_ngram_size: int = 0
    early_stopping: bool = False

    def generate_kwargs(self) -> dict:
        """Explicit keyword arguments for ``model.generate`` (empty for ``true_false``, which does not generate)."""
        if self.strategy == "true_false":
            return {}
        return {
            "num_beams": self.num_beams,
            "max_length": self.max_length,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "early_stopping": self.early_stopping,
            "do_sample": False,
        }


# --------------------------------------------------------------------------------------------------- file helpers


def check_root(datasets_root: str | Path) -> Path:
    """The datasets root as a Path; a DataError naming it when it does not exist."""
    root = Path(datasets_root).expanduser()
    if not root.is_dir():
        raise DataError(f"Datasets root {root} does not exist; {DATA_HINT}.")
    return root


def read_json(path: Path) -> Any:
    """Load one annotation JSON; missing or malformed files become one-sentence DataErrors naming the path."""
    if not path.is_file():
        raise DataError(f"Annotation file {path} does not exist; {DATA_HINT}.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"Annotation file {path} is not valid JSON ({exc}); re-create it or re-download the data.")


def read_records(path: Path, required: Sequence[str]) -> list[dict]:
    """A VL-Adapter annotation file: a JSON list of dicts, each holding the ``required`` fields."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"Annotation file {path} must hold a JSON list of records; re-create it or re-download the data.")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(f"Record {i} of {path} is not a JSON object; re-create the file or re-download the data.")
        missing = [k for k in required if k not in rec]
        if missing:
            raise DataError(
                f"Record {i} of {path} lacks the field(s) {', '.join(missing)}; re-create the file or re-download the data."
            )
    return data


def check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigError(f"limit={limit!r} is invalid; pass a non-negative integer or None.")
    return limit


def sample_answer(label: Mapping[str, float], rng: np.random.Generator) -> tuple[str, float]:
    """Draw one answer with probability ∝ its soft score; return it with its score.

    VL-Adapter (``vqa_clip_data.__getitem__``, reference §4.2) resamples the target on every access this way; a label
    that is empty or scores 0 in total gives the answer ``''`` with score 0 (the example then weighs nothing in the
    VQA loss).
    """
    answers = list(label.keys())
    scores = np.asarray([float(label[a]) for a in answers], dtype=np.float64)
    total = float(scores.sum()) if len(scores) else 0.0
    if total <= 0:
        return "", 0.0
    k = int(rng.choice(len(answers), p=scores / total))
    return answers[k], float(scores[k])


def best_answer(label: Mapping[str, float]) -> tuple[str, float]:
    """The highest-scoring answer (first one on ties), ``('', 0.0)`` for an empty label; deterministic."""
    if not label:
        return "", 0.0
    answer = max(label, key=lambda a: float(label[a]))
    return answer, float(label[answer])


# --------------------------------------------------------------------------------------------------- losses


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy (B, T) over the full vocabulary, and the float mask of non-ignored positions."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"expected logits (B, T, V) and labels (B, T), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    b, t, v = logits.shape
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(b * t, v), labels.reshape(b * t), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(b, t)
    mask = (labels != IGNORE_INDEX).to(loss.dtype)
    return loss * mask, mask


def example_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean token loss of each example over its own valid target tokens (VL-Adapter ``lm_mask`` reduction)."""
    loss, mask = token_losses(logits, labels)
    return loss.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


# --------------------------------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class Task:
    """One VL-Adapter task. Subclasses fill the fields and override the record hooks.

    Fields: ``name``; ``prompt`` (prepended to the encoder text; ``""`` when prompts are off); ``batch_ratio``
    (per-task batch = ``int(base * ratio)``, at least 1; reference §5.2); ``splits`` (split → annotation sources,
    from :data:`vlrouting.data.layout.ANNOTATIONS`); ``max_input_length`` / ``max_target_length`` (tokens including
    ``<s>``/``</s>``; None = no task limit, only the model's ``max_text_positions`` guard); ``decode``;
    ``headline_metric``; ``vladapter_prompt`` (the prompt of VL-Adapter's scripts where it differs: GQA's typo
    ``gpa: ``); ``title`` (the headline column's printed name); ``objective`` — what the model must produce for it:
    ``seq2seq`` (a target string decoded by an encoder-decoder), ``classify`` (scores over an answer vocabulary) or
    ``prefix_lm`` (a caption continued after a visual prefix). A model family serves a set of objectives.
    """

    name: str
    prompt: str
    batch_ratio: Fraction
    splits: Mapping[str, tuple[Source, ...]]
    max_input_length: int | None
    max_target_length: int | None
    decode: DecodeSpec
    headline_metric: str
    vladapter_prompt: str | None = None
    required_fields: tuple[str, ...] = field(default=())
    title: str = ""
    objective: str = "seq2seq"
    evaluator: str = ""  # the scoring function of ``vlrouting eval`` (evaluation.cli.EVALUATORS); "" = the name

    # ----------------------------------------------------------------------------------------- reporting

    def __post_init__(self) -> None:
        if not self.evaluator:
            object.__setattr__(self, "evaluator", self.name)

    def columns(self) -> tuple[Column, ...]:
        """The columns this task reports in result tables; the first is its headline number."""
        return (Column(self.name, self.title or self.name, (self.headline_metric,)),)

    # ----------------------------------------------------------------------------------------- configuration

    def configured(self, *, use_task_prompts: bool = True, vladapter_prompt_typo: bool = False) -> "Task":
        """A copy with the prompt switched off (``multiple_*`` scripts, reference §4.1) or set to VL-Adapter's
        exact string (``gpa: `` for GQA) for exact reproduction of the ``single_*`` rows."""
        if not use_task_prompts:
            prompt = ""
        elif vladapter_prompt_typo and self.vladapter_prompt is not None:
            prompt = self.vladapter_prompt
        else:
            prompt = type(self)().prompt  # every registered subclass has all-default fields: its canonical prompt
        return dataclasses.replace(self, prompt=prompt)

    def batch_size(self, base_batch_size: int) -> int:
        """``int(base · ratio)``, at least 1: 500 / 833 / 166 / 416 for a base of 500 (reference §5.2)."""
        if base_batch_size < 1:
            raise ConfigError(f"batch size {base_batch_size} is invalid; pass a positive base batch size.")
        return max(1, int(base_batch_size * self.batch_ratio))

    def generate_kwargs(self) -> dict:
        return self.decode.generate_kwargs()

    # ----------------------------------------------------------------------------------------- record hooks

    def load_records(self, root: Path, split: str) -> list[dict]:
        """All records of ``split``, each tagged with ``_features`` (the feature dataset its images come from)."""
        records: list[dict] = []
        for source in self.sources(split):
            for rec in read_records(root / source.annotation, self.required_fields):
                records.append({**rec, "_features": source.features})
        return records

    def sources(self, split: str) -> tuple[Source, ...]:
        if split not in self.splits:
            raise ConfigError(f"Unknown split '{split}' for task {self.name}; valid splits: {', '.join(self.splits)}.")
        return self.splits[split]

    def example_id(self, record: dict):
        return record["question_id"]

    def text(self, record: dict) -> str:
        """The encoder text: prompt directly followed by the question/sentence (VL-Adapter ``f'{prefix}{sent}'``)."""
        return self.prompt + str(record.get("sent", record.get("question", ""))).strip()

    def image_keys(self, record: dict) -> list[tuple[str, str]]:
        """(feature dataset, image id) of each image of the example, in image order."""
        return [(record["_features"], str(record["img_id"]))]

    def target(self, record: dict, train: bool, rng: np.random.Generator | None) -> tuple[str, float]:
        """The target string and its loss weight. ``rng`` is only given for training examples."""
        raise NotImplementedError

    def has_labels(self, train: bool) -> bool:
        """Whether batches of this split carry ``labels`` (eval splits only when they have a single target)."""
        return train

    def feature_datasets(self, split: str) -> list[str]:
        return sorted({s.features for s in self.sources(split)})

    # ----------------------------------------------------------------------------------------- datasets

    def build_dataset(
        self,
        datasets_root: str | Path,
        split: str,
        tokenizer,
        features: FeatureSource = None,
        limit: int | None = None,
        *,
        seed: int = 0,
        spec: DataSpec | None = None,
    ) -> "TaskDataset":
        """The torch Dataset of one split (``train`` / ``val`` / ``test``).

        ``features``: None opens :func:`vlrouting.data.features.open_feature_store` for each feature dataset the
        split reads (lazy per-process HDF5 handles); a mapping or callable supplies stores instead (tests, custom
        readers). ``limit`` keeps the first ``limit`` examples (for captions' val/test: images). ``seed`` seeds the
        per-access target sampling together with the epoch and the index. ``spec``: the model family's data shapes
        (feature kind, tokens per image, text positions; :meth:`vlrouting.models.FamilyConfig.data_spec`); the
        default is CLIP-BART's.
        """
        spec = spec or DataSpec()
        self.sources(split)  # unknown split -> ConfigError before touching the disk
        limit = check_limit(limit)
        root = check_root(datasets_root)
        records = self.load_records(root, split)
        if limit is not None:
            records = records[:limit]
        stores = open_stores(root, self.feature_datasets(split), features, spec)
        return TaskDataset(self, split, records, tokenizer, stores, seed=seed,
                           max_text_positions=spec.max_text_positions, datasets_root=root, spec=spec)

    def check_data(self, root: Path, spec: DataSpec) -> None:
        """Pre-flight check of task files that depend on the model's data spec (e.g. an answer vocabulary against
        the classifier's width); a one-sentence error when they do not fit. Nothing to check by default."""

    def collate(self, examples: Sequence[dict]) -> dict:
        """Stack examples into the batch contract (module docstring); right-pads text with the tokenizer's pad id."""
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        pad_id = examples[0]["pad_token_id"]
        b = len(examples)
        lengths = [len(e["input_ids"]) for e in examples]
        input_ids = torch.full((b, max(lengths)), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((b, max(lengths)), dtype=torch.long)
        for i, e in enumerate(examples):
            input_ids[i, : lengths[i]] = torch.as_tensor(e["input_ids"], dtype=torch.long)
            attention_mask[i, : lengths[i]] = 1
        labels = None
        if examples[0]["target_ids"] is not None:
            t = max(len(e["target_ids"]) for e in examples)
            labels = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)
            for i, e in enumerate(examples):
                labels[i, : len(e["target_ids"])] = torch.as_tensor(e["target_ids"], dtype=torch.long)
        shapes = {e["vis_feats"].shape for e in examples}
        if len(shapes) != 1:
            raise DataError(
                f"Visual features of one {self.name} batch differ in shape ({sorted(shapes)}); "
                "re-extract the features with one n_boxes and feature size."
            )
        return {
            "task": self.name,
            "ids": [e["id"] for e in examples],
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "vis_feats": torch.from_numpy(np.stack([e["vis_feats"] for e in examples])),
            "img_order_ids": torch.from_numpy(np.stack([e["img_order_ids"] for e in examples])),
            "obj_order_ids": torch.from_numpy(np.stack([e["obj_order_ids"] for e in examples])),
            "labels": labels,
            "loss_weights": torch.tensor([e["loss_weight"] for e in examples], dtype=torch.float32),
            "targets": [e["target"] for e in examples],
        }

    # ----------------------------------------------------------------------------------------- loss / metrics

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example token mean, then batch mean (VL-Adapter GQA and NLVR2 ``train_step``, reference §3.4)."""
        return example_mean_loss(logits, labels).mean()

    def loss_weight(self, labels: torch.Tensor) -> torch.Tensor:
        """The units :meth:`loss` averages over on this process (examples; tokens for a batch-level token mean)."""
        return torch.tensor(float(labels.shape[0]), device=labels.device)

    def loss_term(self, output, batch: Mapping) -> LossTerm:
        """The training loss of one batch from the model's aligned ``output.logits`` / ``output.targets``."""
        return LossTerm(self.loss(output.logits.float(), output.targets, batch.get("loss_weights")),
                        self.loss_weight(output.targets))

    def evaluate(self, predictions: Mapping, dataset: "TaskDataset") -> dict:
        raise NotImplementedError

    def headline(self, metrics: Mapping[str, float]) -> float:
        """The number the paper's tables report for this task."""
        if self.headline_metric not in metrics:
            raise KeyError(f"{self.name} metrics lack '{self.headline_metric}' (have {sorted(metrics)})")
        return float(metrics[self.headline_metric])


def open_stores(root: Path, names: Sequence[str], features: FeatureSource, spec: DataSpec | None = None
                ) -> dict[str, Any]:
    """Feature stores for the feature datasets ``names`` (see ``FeatureSource``) of the spec's feature kind."""
    spec = spec or DataSpec()
    if features is None:
        from vlrouting.data.features import open_feature_store

        return {n: open_feature_store(root, n, n_boxes=spec.n_boxes, kind=spec.feature_kind) for n in names}
    if isinstance(features, Mapping):
        missing = [n for n in names if n not in features]
        if missing:
            raise ConfigError(
                f"features= lacks a store for {', '.join(missing)}; pass one per feature dataset or features=None."
            )
        return {n: features[n] for n in names}
    if callable(features):
        return {n: features(n) for n in names}
    raise ConfigError(f"features={features!r} is invalid; pass None, a mapping of stores or a callable.")


# --------------------------------------------------------------------------------------------------- the dataset


class TaskDataset(torch.utils.data.Dataset):
    """The examples of one task split. Picklable; features are read through the stores at access time.

    ``records`` keeps the annotation records (with the references ``Task.evaluate`` needs); ``spec`` the model's
    data spec it was built for (tasks read its data-side choices, e.g. the headline score). Training targets that are
    sampled (VQA, GQA) draw from ``np.random.default_rng((seed, epoch, index))``: reproducible for a seed, fresh
    each epoch (:meth:`set_epoch`), and independent across indices, hence across DDP ranks and DataLoader workers.
    """

    def __init__(self, task: Task, split: str, records: list[dict], tokenizer, stores: Mapping[str, Any], *,
                 seed: int = 0, max_text_positions: int = DEFAULT_MAX_TEXT_POSITIONS,
                 datasets_root: str | Path | None = None, spec: DataSpec | None = None):
        self.task = task
        self.spec = spec or DataSpec()
        self.datasets_root = Path(datasets_root) if datasets_root is not None else None
        self.split = split
        self.records = records
        self.tokenizer = tokenizer
        self.stores = dict(stores)
        self.seed = int(seed) % 2**64
        self.epoch = 0
        self.train = split == "train"
        self.max_text_positions = int(max_text_positions)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def _encode(self, text: str, max_length: int | None) -> list[int]:
        limit = self.max_text_positions if max_length is None else min(max_length, self.max_text_positions)
        return list(self.tokenizer(text, max_length=limit, truncation=True)["input_ids"])

    def __getitem__(self, index: int) -> dict:
        task, rec = self.task, self.records[index]
        rng = np.random.default_rng((self.seed, self.epoch, int(index))) if self.train else None
        target, weight = task.target(rec, self.train, rng)
        feats = [np.asarray(self.stores[ds][img_id], dtype=np.float32) for ds, img_id in task.image_keys(rec)]
        img_order = np.concatenate([np.full(len(f), k, dtype=np.int64) for k, f in enumerate(feats)])
        obj_order = np.concatenate([np.arange(len(f), dtype=np.int64) for f in feats])
        return {
            "task": task.name,
            "id": task.example_id(rec),
            "input_ids": self._encode(task.text(rec), task.max_input_length),
            "target_ids": self._encode(target, task.max_target_length) if task.has_labels(self.train) else None,
            "target": target,
            "loss_weight": float(weight),
            "vis_feats": feats[0] if len(feats) == 1 else np.concatenate(feats, axis=0),
            "img_order_ids": img_order,
            "obj_order_ids": obj_order,
            "pad_token_id": self.pad_token_id,
        }

    def length_order(self) -> list[int]:
        """Indices sorted by encoder-text length (stable): evaluation batches then pad little."""
        texts = [self.task.text(rec) for rec in self.records]
        if not texts:
            return []
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        return sorted(range(len(texts)), key=lambda i: lengths[i])

    def __repr__(self) -> str:
        return f"TaskDataset(task={self.task.name!r}, split={self.split!r}, n={len(self)})"


__all__ = [
    "SPLITS", "IGNORE_INDEX", "Source", "Column", "LossTerm", "DecodeSpec", "Task", "TaskDataset", "FeatureSource",
    "sample_answer", "best_answer", "token_losses", "example_mean_loss", "read_json", "read_records",
]
