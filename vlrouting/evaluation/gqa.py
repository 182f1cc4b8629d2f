"""GQA accuracy as VL-Adapter computes it (``GQAEvaluator.evaluate``; reference/vladapter_spec.md §6).

Score of a question = ``label.get(prediction, 0)`` where ``label`` is the datum's answer → score dict of the
LXMERT-format files (``GQA/testdev.json``: ``{img_id, sent, question_id, label}``; GQA labels are ``{answer: 1}``),
so by default it is an **exact string match with no normalisation**: ``"Yes"`` or ``" yes"`` score 0 against
``"yes"``. That is the rule behind the published GQA testdev numbers, and the default here.

``normalize=True`` applies the VQAv2 answer normaliser (:func:`vlrouting.evaluation.vqa.normalize_answer`) to the
prediction and to every label key (keeping the best score per normalised key) — a more forgiving variant that is
*not* comparable with the papers' numbers. Note GQA's official ``eval.py`` uses exact match on balanced test-dev
too; its consistency/validity/plausibility/grounding metrics need scene graphs and are not computed here.
"""

from __future__ import annotations

from typing import Any, Mapping

from vlrouting.errors import DataError
from vlrouting.evaluation._common import index_references, match_predictions, percent, question_records
from vlrouting.evaluation.vqa import normalize_answer

__all__ = ["evaluate_gqa"]


def _label(record: Mapping, qid: Any, normalize: bool) -> dict[str, float]:
    label = record.get("label")
    if not isinstance(label, Mapping):
        raise DataError(f"GQA question {qid!r} has no 'label' dict (answer → score); pass a VL-Adapter/LXMERT GQA "
                        f"file such as GQA/testdev.json.")
    try:
        scores = {str(answer): float(score) for answer, score in label.items()}
    except (TypeError, ValueError) as exc:
        raise DataError(f"the label of GQA question {qid!r} has a non-numeric score ({exc}); fix the file.") from exc
    if not normalize:
        return scores
    out: dict[str, float] = {}
    for answer, score in scores.items():
        key = normalize_answer(answer)
        out[key] = max(score, out.get(key, float("-inf")))
    return out


def evaluate_gqa(predictions: dict, data: list[dict], allow_missing: bool = False, normalize: bool = False) -> dict:
    """GQA accuracy ×100: ``Σ label[prediction] / N`` over the reference questions (VL-Adapter's rule).

    Args:
        predictions: question_id → predicted answer string.
        data: the reference records, each with ``question_id`` and ``label`` (answer → score).
        allow_missing: count questions without a prediction as wrong and list them in ``missing_ids``.
        normalize: apply the VQAv2 normaliser to predictions and label keys (not the published rule).

    Returns:
        ``{"accuracy": float, "n": int}`` (+ ``missing_ids`` with ``allow_missing``).
    """
    records = question_records(
        data, "the GQA references must be a non-empty list of {question_id, label} records; pass a file such as "
        "GQA/testdev.json.", "GQA record {i} has no 'question_id'; pass a VL-Adapter/LXMERT GQA file.")
    refs = index_references(records, "question_id", "the GQA references")
    preds, missing = match_predictions(predictions, refs, "question_id", allow_missing)

    total = 0.0
    for key, (qid, record) in refs.items():
        label = _label(record, qid, normalize)
        prediction = preds.get(key)
        if prediction is None:
            continue
        if not isinstance(prediction, str):
            raise DataError(f"the prediction for GQA question {qid!r} is {prediction!r}, not a string; "
                            f"predictions must be answer strings.")
        total += label.get(normalize_answer(prediction) if normalize else prediction, 0.0)
    result: dict[str, Any] = {"accuracy": percent(total, len(refs)), "n": len(refs)}
    if allow_missing:
        result["missing_ids"] = missing
    return result
