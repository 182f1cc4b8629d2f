"""``python -m vlrouting eval``: score a prediction file against references, print the metrics, save them as JSON.

Accepted formats (VL-Adapter's ``datasets/`` layout, reference/vladapter_spec.md §1.2):

=========  =====================================================  ===============================================
task       predictions                                            references
=========  =====================================================  ===============================================
vqa        ``[{"question_id", "answer"}]`` or ``{qid: answer}``    ``vqa/karpathy_test.json`` (list with ``answers``
                                                                  and ``label``) or the official annotation file
                                                                  ``{"annotations": [...]}``
gqa        ``[{"question_id", "answer"}]``, ``{qid: answer}`` or   ``GQA/testdev.json`` (list with ``label``)
           GQA's ``[{"questionId", "prediction"}]``
nlvr       ``[{"uid", "answer"}]``, ``{uid: answer}`` or the        ``nlvr/test.json`` (list with ``uid``,
           leaderboard CSV ``identifier,True|False``              ``identifier``, ``label``)
caption    COCO results ``[{"image_id", "caption"}]`` or          ``COCO/dataset_coco.json`` (Karpathy; ``--split``,
           ``{img_id: caption}``                                   default test) or ``{img_id: [captions]}``
=========  =====================================================  ===============================================

Every task also reads the trainer's own files, ``snap/<exp>/<run>/predictions/<split>_<task>_epoch<k>.json``:
``[{"id", "prediction"}]`` with the task's id (question id, NLVR2 uid, caption image id). ``--vqa-version`` chooses
the revision of the official VQA script (2017, the default, or 2021; :mod:`vlrouting.evaluation.vqa`).

Caption image ids are Karpathy file stems (``COCO_val2014_000000391895``); integer COCO ids are mapped through the
Karpathy file's ``cocoid``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Mapping

from vlrouting.errors import ConfigError, DataError
from vlrouting.evaluation._common import id_key, name_ids, read_json, write_json
from vlrouting.evaluation.vqa import VERSIONS as VQA_VERSIONS

KARPATHY_SPLITS = ("train", "val", "test", "restval")


# --------------------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------------------

def _records_to_mapping(rows: Any, id_fields: tuple[str, ...], value_fields: tuple[str, ...], path: Path) -> dict:
    """``[{id, value}]`` records (or an already-made ``{id: value}`` object) → ``{id: value}``.

    The first field name of each tuple is the documented one; the others are accepted spellings (e.g. GQA's
    official submission format ``{"questionId", "prediction"}``).
    """
    if isinstance(rows, Mapping):
        return dict(rows)
    if not isinstance(rows, list):
        raise DataError(f"predictions file {path} must hold a JSON list of {{{id_fields[0]!r}, {value_fields[0]!r}}} "
                        f"records or an {{id: {value_fields[0]}}} object.")
    out: dict = {}
    seen: set[str] = set()
    for i, row in enumerate(rows):
        id_field = next((f for f in id_fields if isinstance(row, Mapping) and f in row), None)
        field = next((f for f in value_fields if isinstance(row, Mapping) and f in row), None)
        if id_field is None or field is None:
            raise DataError(f"record {i} of predictions file {path} lacks {id_fields[0]!r} or {value_fields[0]!r}; "
                            f"write one {{{id_fields[0]!r}: ..., {value_fields[0]!r}: ...}} record per example.")
        key = id_key(row[id_field])
        if key in seen:
            raise DataError(f"predictions file {path} holds {id_fields[0]} {row[id_field]!r} twice; keep one "
                            f"prediction per example.")
        seen.add(key)
        out[row[id_field]] = row[field]
    return out


def _load_vqa_references(path: Path) -> list[dict]:
    data = read_json(path, "references")
    if isinstance(data, Mapping) and isinstance(data.get("annotations"), list):
        return data["annotations"]
    if isinstance(data, list):
        return data
    raise DataError(f"references file {path} is neither a VL-Adapter Karpathy list nor an official VQAv2 "
                    f"annotation file with 'annotations'; pass vqa/karpathy_test.json or "
                    f"v2_mscoco_val2014_annotations.json.")


def _load_list(path: Path, example: str) -> list[dict]:
    data = read_json(path, "references")
    if not isinstance(data, list):
        raise DataError(f"references file {path} must hold a JSON list of records like {example}.")
    return data


def _load_nlvr_predictions(path: Path, references: list[dict]) -> dict:
    """JSON ``[{"uid", "answer"}]`` / ``{uid: answer}``, or the leaderboard CSV keyed by identifier."""
    if not path.is_file():
        raise DataError(f"predictions file {path} does not exist; check the path.")
    head = path.read_text(encoding="utf-8", errors="replace").lstrip()[:1]
    if path.suffix.lower() != ".csv" and head in ("[", "{"):
        return _records_to_mapping(read_json(path, "predictions"), ("uid", "id"), ("answer", "prediction"), path)
    by_identifier: dict[str, Any] = {}
    for record in references:
        if isinstance(record, Mapping) and "identifier" in record and "uid" in record:
            if record["identifier"] in by_identifier:
                raise DataError(f"the NLVR2 references list identifier {record['identifier']!r} twice, so a CSV "
                                f"keyed by identifier is ambiguous; use a JSON [{{uid, answer}}] file instead.")
            by_identifier[record["identifier"]] = record["uid"]
    out: dict = {}
    unknown: list[str] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for lineno, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue
            if lineno == 1 and row[0].strip().lower() == "identifier":
                continue  # optional header
            if len(row) != 2:
                raise DataError(f"line {lineno} of predictions file {path} is {','.join(row)!r}; the NLVR2 CSV has "
                                f"one 'identifier,True|False' pair per line.")
            identifier, answer = row[0].strip(), row[1].strip()
            if identifier not in by_identifier:
                unknown.append(identifier)
                continue
            uid = by_identifier[identifier]
            if uid in out:
                raise DataError(f"predictions file {path} lists identifier {identifier!r} twice; keep one line.")
            out[uid] = answer
    if unknown:
        raise DataError(f"{len(unknown)} line(s) of predictions file {path} have an identifier that is not in the "
                        f"references ({name_ids(unknown)}); score them against the split they were predicted for.")
    return out


def _load_caption_references(path: Path, split: str, explicit_split: bool = False,
                             ) -> tuple[dict[str, list[str]], dict[int, str]]:
    """``({img_id: [raw captions]}, {cocoid: img_id})`` from Karpathy's dataset_coco.json or a plain mapping."""
    data = read_json(path, "references")
    if isinstance(data, Mapping) and isinstance(data.get("images"), list):
        wanted = {"train", "restval"} if split == "train" else {split}  # VL-Adapter merges restval into train
        refs: dict[str, list[str]] = {}
        cocoids: dict[int, str] = {}
        splits_seen: set[str] = set()
        for i, image in enumerate(data["images"]):
            if not isinstance(image, Mapping) or "filename" not in image or "sentences" not in image:
                raise DataError(f"image {i} of {path} lacks 'filename' or 'sentences'; pass Karpathy's "
                                f"dataset_coco.json.")
            splits_seen.add(str(image.get("split")))
            if image.get("split") not in wanted:
                continue
            img_id = Path(image["filename"]).stem
            try:
                refs[img_id] = [s["raw"].strip() for s in image["sentences"]]
            except (TypeError, KeyError, AttributeError) as exc:
                raise DataError(f"the sentences of image {image['filename']} in {path} lack a 'raw' string; "
                                f"pass Karpathy's dataset_coco.json.") from exc
            if isinstance(image.get("cocoid"), int):
                cocoids[image["cocoid"]] = img_id
        if not refs:
            raise DataError(f"{path} has no image in split {split!r} (it has {', '.join(sorted(splits_seen))}); "
                            f"choose one of those with --split.")
        return refs, cocoids
    if isinstance(data, Mapping) and all(isinstance(v, list) for v in data.values()):
        if explicit_split:
            raise ConfigError(f"--split {split} selects a split of Karpathy's dataset_coco.json, but {path} is a "
                              f"plain {{img_id: [captions]}} file; drop --split.")
        return {k: v for k, v in data.items()}, {}
    raise DataError(f"references file {path} is neither Karpathy's dataset_coco.json (with 'images') nor an "
                    f"{{img_id: [captions]}} object.")


def _map_coco_ids(predictions: dict, refs: Mapping[str, list[str]], cocoids: Mapping[int, str]) -> dict:
    """Accept integer COCO ids (the COCO results format) for Karpathy-keyed references."""
    if not cocoids:
        return predictions
    out: dict = {}
    for img_id, caption in predictions.items():
        key = img_id
        if str(img_id) not in refs:
            try:
                key = cocoids.get(int(img_id), img_id)
            except (TypeError, ValueError):
                pass
        if key in out:
            raise DataError(f"the predictions hold image {key!r} twice (once by its COCO id); keep one caption.")
        out[key] = caption
    return out


def _only_predicted(field: str | None, references: Any, predictions: Mapping) -> Any:
    """Restrict the references to the predicted ids (VL-Adapter scores only what it predicted); ``field`` names
    the id of each reference record, ``None`` for an ``{id: captions}`` mapping."""
    keys = {id_key(k) for k in predictions}
    if field is None:
        kept: Any = {k: v for k, v in references.items() if id_key(k) in keys}
    else:
        kept = [r for r in references if isinstance(r, Mapping) and field in r and id_key(r[field]) in keys]
    if not kept:
        raise DataError(f"--only-predicted left no reference: none of the {len(keys)} predicted ids is in the "
                        f"references file; check that both files belong to the same split.")
    return kept


# --------------------------------------------------------------------------------------------------------------
# Command
# --------------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vlrouting eval",
        description="Score VQAv2 / GQA / NLVR2 / COCO-caption predictions with the benchmarks' own metrics.")
    from vlrouting.data.tasks import list_tasks

    parser.add_argument("--task", required=True, choices=list_tasks())
    parser.add_argument("--predictions", required=True, type=Path, help="prediction file (JSON; NLVR2 also CSV)")
    parser.add_argument("--references", required=True, type=Path, help="annotation / reference file")
    parser.add_argument("--split", default=None, choices=KARPATHY_SPLITS,
                        help="caption only: Karpathy split of dataset_coco.json (default: test)")
    parser.add_argument("--out", type=Path, default=None, help="write the metrics as JSON here (atomic)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score references without a prediction as wrong instead of failing")
    parser.add_argument("--only-predicted", action="store_true",
                        help="score only the references that have a prediction (e.g. Karpathy-test predictions "
                             "against the full official VQAv2 val annotation file)")
    parser.add_argument("--spice", default="auto", choices=("auto", "on", "off"),
                        help="caption only: SPICE when installed (auto), required (on) or skipped (off)")
    parser.add_argument("--vqa-version", default=None, choices=VQA_VERSIONS,
                        help="vqa only: revision of the official vqaEval.py, 2017 (default; VL-Adapter and the "
                             "paper) or 2021 (also normalises the ground-truth answers)")
    parser.add_argument("--normalize", action="store_true",
                        help="gqa only: apply the VQAv2 answer normaliser (not VL-Adapter's published rule)")
    parser.add_argument("--submission", type=Path, default=None,
                        help="vqa/nlvr only: also write the test-server file (VQA JSON / NLVR2 CSV)")
    return parser


def _check_task_options(args: argparse.Namespace, kind: str) -> None:
    if args.split is not None and kind != "caption":
        raise ConfigError(f"--split selects a Karpathy split of dataset_coco.json and only applies to caption tasks; "
                          f"pass the {args.task} split file itself as --references.")
    if args.spice != "auto" and kind != "caption":
        raise ConfigError(f"--spice only applies to caption tasks, not {args.task}.")
    if args.vqa_version is not None and kind != "vqa":
        raise ConfigError(f"--vqa-version only applies to VQA tasks, not {args.task}.")
    if args.normalize and kind != "gqa":
        raise ConfigError(f"--normalize only applies to --task gqa; VQA is always normalised officially.")
    if args.submission is not None and kind not in ("vqa", "nlvr"):
        raise ConfigError(f"--submission writes a test-server file for VQA or NLVR2 tasks only, not {args.task}.")
    if args.only_predicted and args.allow_missing:
        raise ConfigError("--only-predicted and --allow-missing contradict each other; choose one.")


def _eval_vqa(args: argparse.Namespace) -> dict:
    from vlrouting.evaluation.vqa import evaluate_vqa, write_vqa_submission

    references = _load_vqa_references(args.references)
    predictions = _records_to_mapping(read_json(args.predictions, "predictions"), ("question_id", "id"),
                                      ("answer", "prediction"), args.predictions)
    if args.only_predicted:
        references = _only_predicted("question_id", references, predictions)
    metrics = evaluate_vqa(predictions, references, allow_missing=args.allow_missing,
                           version=args.vqa_version or VQA_VERSIONS[0])
    if args.submission is not None:
        write_vqa_submission(predictions, args.submission)
    return metrics


def _eval_gqa(args: argparse.Namespace) -> dict:
    from vlrouting.evaluation.gqa import evaluate_gqa

    references = _load_list(args.references, "{img_id, sent, question_id, label} (GQA/testdev.json)")
    predictions = _records_to_mapping(read_json(args.predictions, "predictions"),
                                      ("question_id", "questionId", "id"), ("answer", "prediction"), args.predictions)
    if args.only_predicted:
        references = _only_predicted("question_id", references, predictions)
    return evaluate_gqa(predictions, references, allow_missing=args.allow_missing, normalize=args.normalize)


def _eval_nlvr(args: argparse.Namespace) -> dict:
    from vlrouting.evaluation.nlvr import evaluate_nlvr, write_nlvr_submission

    references = _load_list(args.references, "{uid, identifier, img0, img1, sent, label} (nlvr/test.json)")
    predictions = _load_nlvr_predictions(args.predictions, references)
    if args.only_predicted:
        references = _only_predicted("uid", references, predictions)
    metrics = evaluate_nlvr(predictions, references, allow_missing=args.allow_missing)
    if args.submission is not None:
        write_nlvr_submission(predictions, references, args.submission)
    return metrics


def _eval_caption(args: argparse.Namespace) -> dict:
    from vlrouting.evaluation.caption import evaluate_caption

    references, cocoids = _load_caption_references(args.references, args.split or "test",
                                                     explicit_split=args.split is not None)
    raw = read_json(args.predictions, "predictions")
    predictions = _map_coco_ids(_records_to_mapping(raw, ("image_id", "id"), ("caption", "prediction"),
                                                    args.predictions), references, cocoids)
    if args.only_predicted:
        references = _only_predicted(None, references, predictions)
    from vlrouting.data.tasks import get_task

    # a task may average the caption metrics that exist (SPICE can be unavailable); Avg_metrics then names them
    average_available = bool(getattr(get_task(args.task), "average_available_metrics", False))
    return evaluate_caption(predictions, references, spice=args.spice, allow_missing=args.allow_missing,
                            average_available=average_available)


#: One scoring function per evaluator; a task names its evaluator (``Task.evaluator``), so a new task that is
#: scored like an existing one (``vqa_cls`` like ``vqa``) needs no code here.
EVALUATORS = {"vqa": _eval_vqa, "gqa": _eval_gqa, "nlvr": _eval_nlvr, "caption": _eval_caption}


def run(args: argparse.Namespace) -> dict:
    """Load the files named by ``args``, evaluate, write the optional outputs; return the metrics."""
    from vlrouting.data.tasks import get_task

    kind = get_task(args.task).evaluator
    _check_task_options(args, kind)
    metrics = EVALUATORS[kind](args)
    if args.out is not None:
        write_json(args.out, metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    metrics = run(args)
    print(json.dumps(metrics, indent=2, ensure_ascii=False))
    if args.out is not None:
        print(f"metrics written to {args.out}", file=sys.stderr)
    return 0
