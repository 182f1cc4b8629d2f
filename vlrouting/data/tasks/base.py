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

Batches are read whole: torch's DataLoader calls :meth:`TaskDataset.__getitems__` with a batch's indices, which
tokenizes the texts in one call and reads every feature block of the batch with one
:meth:`~vlrouting.data.features.FeatureStore.read_batch` per feature dataset into one ``(B, V, C)`` array (in shared
memory inside a DataLoader worker, so the batch reaches the main process without another copy); :meth:`Task.collate`
takes that array as it is (:class:`ExampleBatch`). ``dataset[i]`` + ``collate`` of a list of examples gives the same
batch, bit for bit.

The batch contract (what :meth:`Task.collate` returns, consumed by the model and the trainer)::

    {"task": str, "ids": list, "input_ids": (B, L) long, "attention_mask": (B, L) long,
     "vis_feats": (B, V, C) float, "img_order_ids": (B, V) long, "obj_order_ids": (B, V) long,
     "labels": (B, T) long with -100 pads, or None, "loss_weights": (B,) float, "targets": list[str]}
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, Union

import numpy as np
import torch

from vlrouting.data import shm
from vlrouting.data.layout import ANNOTATIONS, AnnotationSource, DataSpec
from vlrouting.errors import ConfigError, DataError
from vlrouting.fileio import is_plain_name

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


# ------------------------------------------------------------------------- record field checks (Task.check_record)


def _kind(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__}"


def id_problem(record: Mapping, field: str) -> str | None:
    """Ids (question ids, uids) must be strings or integers."""
    value = record.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return f"has {field} {value!r} ({_kind(value)}), but ids must be strings or integers"
    return None


def image_id_problem(record: Mapping, field: str) -> str | None:
    """An image id names one entry of a feature or image folder: a string or integer with no path in it."""
    problem = id_problem(record, field)
    if problem:
        return problem
    text = str(record[field])
    if not is_plain_name(text):
        return (f"has {field} {text!r}, which is not a plain image id (no '/', '\\' or '..': an id must not point "
                f"outside its image or feature folder)")
    return None


def text_problem(record: Mapping, *fields: str) -> str | None:
    """Questions and sentences, when present, are strings."""
    for field in fields:
        if field in record and not isinstance(record[field], str):
            return f"has {field} {record[field]!r} ({_kind(record[field])}), but it must be a string"
    return None


def label_problem(record: Mapping, task: str, field: str = "label") -> str | None:
    """A soft label (VQA, GQA), when present, maps answer strings to finite non-negative scores."""
    label = record.get(field)
    if label is None:
        return None
    example = '{"yes": 1.0}'
    if not isinstance(label, dict):  # JSON objects load as dicts
        return (f"has {field} {label!r} ({_kind(label)}), but a {task} label maps answer strings to scores, "
                f"e.g. {example}")
    for answer, score in label.items():  # exact type checks: this runs for every record of every split (fast)
        if (type(answer) is not str or type(score) not in (int, float) or not math.isfinite(score)
                or score < 0):
            return (f"has {field} entry {answer!r}: {score!r}, but a {task} label maps answer strings to "
                    f"non-negative scores, e.g. {example}")
    return None


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
            path = root / source.annotation
            for i, rec in enumerate(read_records(path, self.required_fields)):
                problem = self.check_record(rec)
                if problem:
                    raise DataError(f"Record {i} of {path} {problem}; fix the file or re-download the data.")
                records.append({**rec, "_features": source.features})
        return records

    def check_record(self, record: dict) -> str | None:
        """What is wrong with the field types of one annotation record (``"has label 'yes' (a str), ..."``), or None.

        Called for every record as it is loaded, so a malformed file fails at the pre-flight check, not mid-epoch.
        Each task checks its own fields with the ``*_problem`` helpers of this module.
        """
        return None

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
                           max_text_positions=spec.max_text_positions, datasets_root=root)

    def collate(self, examples: Sequence[dict]) -> dict:
        """Stack examples into the batch contract (module docstring); right-pads text with the tokenizer's pad id.

        An :class:`ExampleBatch` (from :meth:`TaskDataset.__getitems__`) brings its visual arrays already batched:
        they are used as they are, without a per-example copy.
        """
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
        if isinstance(examples, ExampleBatch):
            vis_feats, img_order, obj_order = examples.vis_feats, examples.img_order_ids, examples.obj_order_ids
        else:
            check_block_shapes(self.name, [e["vis_feats"].shape for e in examples])
            vis_feats = torch.from_numpy(np.stack([e["vis_feats"] for e in examples]))
            img_order = torch.from_numpy(np.stack([e["img_order_ids"] for e in examples]))
            obj_order = torch.from_numpy(np.stack([e["obj_order_ids"] for e in examples]))
        return {
            "task": self.name,
            "ids": [e["id"] for e in examples],
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "vis_feats": vis_feats,
            "img_order_ids": img_order,
            "obj_order_ids": obj_order,
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


def check_block_shapes(task_name: str, shapes) -> None:
    """One visual block shape per batch, or a DataError saying how to make it so."""
    shapes = set(shapes)
    if len(shapes) != 1:
        raise DataError(
            f"Visual features of one {task_name} batch differ in shape ({sorted(shapes)}); "
            "re-extract the features with one n_boxes and feature size."
        )


class ExampleBatch(list):
    """The examples of one batch as :meth:`TaskDataset.__getitems__` reads them.

    A list of the per-example dicts ``dataset[i]`` returns — their ``vis_feats`` / ``img_order_ids`` /
    ``obj_order_ids`` are views into the batch arrays — plus those arrays as tensors: ``vis_feats`` (B, V, C) float32
    and ``img_order_ids`` / ``obj_order_ids`` (B, V) long, which :meth:`Task.collate` puts into the batch as they are.
    """

    def __init__(self, examples: list[dict], vis_feats: torch.Tensor, img_order_ids: torch.Tensor,
                 obj_order_ids: torch.Tensor):
        super().__init__(examples)
        self.vis_feats, self.img_order_ids, self.obj_order_ids = vis_feats, img_order_ids, obj_order_ids


def feature_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor for a batch's features (:func:`vlrouting.data.shm.batch_buffer`).

    Inside a DataLoader worker it lives in shared memory (as torch's ``default_collate`` allocates its stacked
    tensors), so the batch travels to the main process as a handle, not as a copy of its bytes; in a worker started
    with a slot pool (:class:`vlrouting.data.shm.WorkerInit`, as the multitask loader starts its workers) it is one
    of the worker's recycled buffers.
    """
    return shm.batch_buffer(tuple(shape), torch.float32)


# --------------------------------------------------------------------------------------------------- the dataset


class TaskDataset(torch.utils.data.Dataset):
    """The examples of one task split. Picklable; features are read through the stores at access time.

    ``records`` keeps the annotation records (with the references ``Task.evaluate`` needs). Training targets that are
    sampled (VQA, GQA) draw from ``np.random.default_rng((seed, epoch, index))``: reproducible for a seed, fresh
    each epoch (:meth:`set_epoch`, or the ``epoch`` a batch of indices carries: :meth:`__getitems__`), and
    independent across indices, hence across DDP ranks and DataLoader workers.
    """

    #: :meth:`__getitems__` takes the epoch from the indices when they carry one (persistent workers may serve it).
    epoch_from_indices = True

    def __init__(self, task: Task, split: str, records: list[dict], tokenizer, stores: Mapping[str, Any], *,
                 seed: int = 0, max_text_positions: int = DEFAULT_MAX_TEXT_POSITIONS,
                 datasets_root: str | Path | None = None):
        self.task = task
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

    def _limit(self, max_length: int | None) -> int:
        return self.max_text_positions if max_length is None else min(max_length, self.max_text_positions)

    def _encode(self, text: str, max_length: int | None) -> list[int]:
        return list(self.tokenizer(text, max_length=self._limit(max_length), truncation=True)["input_ids"])

    def _encode_many(self, texts: list[str], max_length: int | None) -> list[list[int]]:
        """Token ids of each text: one tokenizer call for the batch, the same ids as :meth:`_encode` text by text."""
        ids = self.tokenizer(texts, max_length=self._limit(max_length), truncation=True)["input_ids"]
        return [list(x) for x in ids]

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

    def __getitems__(self, indices: Sequence[int]) -> ExampleBatch:
        """The examples of ``indices`` (what ``[self[i] for i in indices]`` gives), read as one batch.

        torch's DataLoader calls this with each batch's indices. Texts go through the tokenizer in one call; the
        feature blocks of all images of the batch are read with one ``read_batch`` per feature dataset into one
        (B · images, n_boxes, C) buffer that is already the (B, V, C) batch array (NLVR2: img0 then img1 of each
        example, 72 tokens).

        ``indices`` may carry the epoch they belong to (an ``epoch`` attribute, as the multitask loader's batches
        do): it then wins over :meth:`set_epoch`'s, so that workers that live across epochs (persistent DataLoader
        workers, which hold a copy of the dataset made when they started) sample the targets of the right epoch.
        """
        task = self.task
        epoch = int(getattr(indices, "epoch", self.epoch))
        indices = [int(i) for i in indices]
        records = [self.records[i] for i in indices]
        drawn = [task.target(rec, self.train, np.random.default_rng((self.seed, epoch, i)) if self.train else None)
                 for i, rec in zip(indices, records)]
        keys = [task.image_keys(rec) for rec in records]
        per_example = {len(k) for k in keys}
        if len(per_example) != 1:
            raise DataError(f"{task.name} examples of one batch have different numbers of images "
                            f"({sorted(per_example)}); check the annotation records of indices {indices}.")
        n_img = per_example.pop()
        feats = self._batch_features([key for k in keys for key in k])  # (B · n_img, V1, C)
        try:
            b, v1 = len(indices), feats.shape[1]
            vis = feats.view(b, n_img * v1, feats.shape[2])
            img_order = torch.arange(n_img, dtype=torch.long).repeat_interleave(v1).repeat(b, 1)
            obj_order = torch.arange(v1, dtype=torch.long).repeat(n_img).repeat(b, 1)
            input_ids = self._encode_many([task.text(rec) for rec in records], task.max_input_length)
            with_labels = task.has_labels(self.train)
            target_ids = self._encode_many([t for t, _ in drawn], task.max_target_length) if with_labels else None
        except BaseException:
            shm.give_back(feats)  # the batch never leaves this process: its buffer may be refilled
            raise
        vis_np, img_np, obj_np = vis.numpy(), img_order.numpy(), obj_order.numpy()
        examples = [{
            "task": task.name,
            "id": task.example_id(rec),
            "input_ids": input_ids[k],
            "target_ids": target_ids[k] if with_labels else None,
            "target": drawn[k][0],
            "loss_weight": float(drawn[k][1]),
            "vis_feats": vis_np[k],
            "img_order_ids": img_np[k],
            "obj_order_ids": obj_np[k],
            "pad_token_id": self.pad_token_id,
        } for k, rec in enumerate(records)]
        return ExampleBatch(examples, vis, img_order, obj_order)

    def _batch_features(self, keys: list[tuple[str, str]]) -> torch.Tensor:
        """(len(keys), n_boxes, C) float32 features of (feature dataset, image id) keys, in order."""
        groups: dict[str, list[int]] = {}
        for k, (ds, _) in enumerate(keys):
            groups.setdefault(ds, []).append(k)
        held: list[torch.Tensor] = []

        def allocate(shape):
            held.append(feature_buffer(shape))
            return held[-1].numpy()

        try:
            if len(groups) == 1:  # the usual case: straight into the batch buffer
                self._read_group(self.stores[keys[0][0]], [i for _, i in keys], allocate)
                return held[-1]
            parts = {ds: self._read_group(self.stores[ds], [keys[k][1] for k in pos],
                                          lambda shape: np.empty(shape, np.float32))
                     for ds, pos in groups.items()}
            check_block_shapes(self.task.name, [p.shape[1:] for p in parts.values()])
            out = allocate((len(keys), *next(iter(parts.values())).shape[1:]))
            for ds, pos in groups.items():
                out[pos] = parts[ds]
            return held[-1]
        except BaseException:
            for t in held:  # a failed read: the buffer never leaves this process
                shm.give_back(t)
            raise

    @staticmethod
    def _read_group(store, ids: list[str], allocate) -> np.ndarray:
        """``store.read_batch(ids)`` into ``allocate(shape)``; stores without ``read_batch`` are read id by id."""
        if hasattr(store, "read_batch"):
            return store.read_batch(ids, out=allocate)
        first = np.asarray(store[ids[0]], dtype=np.float32)
        out = allocate((len(ids), *first.shape))
        out[0] = first
        for k, img_id in enumerate(ids[1:], start=1):
            block = np.asarray(store[img_id], dtype=np.float32)
            if block.shape != first.shape:
                raise DataError(f"Visual features of one batch differ in shape ({sorted({first.shape, block.shape})}"
                                f", image '{img_id}'); re-extract the features with one n_boxes and feature size.")
            out[k] = block
        return out

    def __repr__(self) -> str:
        return f"TaskDataset(task={self.task.name!r}, split={self.split!r}, n={len(self)})"


__all__ = [
    "SPLITS", "IGNORE_INDEX", "Source", "Column", "LossTerm", "DecodeSpec", "Task", "TaskDataset", "ExampleBatch",
    "FeatureSource",
    "sample_answer", "best_answer", "token_losses", "example_mean_loss", "read_json", "read_records",
    "id_problem", "image_id_problem", "text_problem", "label_problem",
]
