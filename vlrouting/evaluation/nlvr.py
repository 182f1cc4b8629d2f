"""NLVR2 accuracy and consistency (Suhr et al., ACL 2019; lil-lab/nlvr ``nlvr2/eval/metrics.py``).

An NLVR2 identifier is ``<split>-<set id>-<pair id>-<sentence id>``, e.g. ``dev-850-0-0``: the third field is the
image pair (``dev-850-0-img0.png`` / ``-img1.png``), so one sentence is judged against several image pairs.
**Consistency** is the fraction of unique sentences whose examples are *all* predicted correctly; the sentence
key is the identifier with its third field removed (``dev-850-0-0`` → ``dev-850-0``). VL-Adapter's
``NLVR2Evaluator.evaluate`` blanks the same field (``dev-850--0``), which yields the same groups.

**Accuracy** is the fraction of examples predicted correctly. Examples are keyed by VL-Adapter's ``uid`` (e.g.
``nlvr2_dev_0``); the submission CSV of the NLVR2 leaderboard is keyed by ``identifier`` with ``True``/``False``.
VL-Adapter exits when a prediction is missing; here that is a :class:`~vlrouting.errors.DataError`, or, with
``allow_missing=True``, a wrong answer that also breaks its sentence's consistency.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from vlrouting.errors import DataError
from vlrouting.evaluation._common import atomic_write_text, index_references, match_predictions, percent

__all__ = ["evaluate_nlvr", "parse_nlvr_bool", "sentence_key", "write_nlvr_submission"]

_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


def parse_nlvr_bool(value: Any, what: str) -> bool:
    """``True``/``False``, ``1``/``0`` or the strings ``"true"``/``"false"``/``"1"``/``"0"`` (any case) → bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, float) and value in (0.0, 1.0):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise DataError(f"{what} is {value!r}; NLVR2 answers must be true/false (a bool, 0/1 or the strings "
                    f"'true'/'false').")


def sentence_key(identifier: str) -> str:
    """The consistency group of an NLVR2 identifier: drop the third (image-pair) field."""
    if not isinstance(identifier, str):
        raise DataError(f"NLVR2 identifier {identifier!r} is not a string like 'dev-850-0-0'; fix the file.")
    fields = identifier.split("-")
    if len(fields) < 4:
        raise DataError(f"NLVR2 identifier {identifier!r} does not have the form split-set-pair-sentence "
                        f"(e.g. 'dev-850-0-0'); fix the references file.")
    return "-".join(fields[:2] + fields[3:])


def _records(data: Any) -> dict[str, tuple[Any, Mapping]]:
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)) or not data:
        raise DataError("the NLVR2 references must be a non-empty list of {uid, identifier, label} records; pass a "
                        "file such as nlvr/test.json.")
    records = []
    for i, record in enumerate(data):
        if not isinstance(record, Mapping) or "uid" not in record or "identifier" not in record:
            raise DataError(f"NLVR2 record {i} lacks 'uid' or 'identifier'; pass a VL-Adapter NLVR2 file "
                            f"(nlvr/{{train,valid,test}}.json).")
        records.append((record["uid"], record))
    return index_references(records, "uid", "the NLVR2 references")


def evaluate_nlvr(predictions: dict, data: list[dict], allow_missing: bool = False) -> dict:
    """NLVR2 accuracy and consistency, both ×100.

    Args:
        predictions: uid → answer (bool, 0/1 or ``"true"``/``"false"``).
        data: records with ``uid``, ``identifier`` and ``label`` (0/1, bool or ``"True"``/``"False"``).
        allow_missing: count examples without a prediction as wrong and list them in ``missing_ids``.

    Returns:
        ``{"accuracy", "consistency", "n", "n_sentences"}`` (+ ``missing_ids`` with ``allow_missing``).
    """
    refs = _records(data)
    preds, missing = match_predictions(predictions, refs, "uid", allow_missing)
    correct = 0
    consistent: dict[str, bool] = {}
    for key, (uid, record) in refs.items():
        if "label" not in record:
            raise DataError(f"NLVR2 example {uid!r} has no 'label'; pass a labelled split (train/valid/test).")
        label = parse_nlvr_bool(record["label"], f"the label of NLVR2 example {uid!r}")
        group = sentence_key(record["identifier"])
        ok = key in preds and parse_nlvr_bool(preds[key], f"the prediction for NLVR2 example {uid!r}") == label
        correct += ok
        consistent[group] = consistent.get(group, True) and ok
    result: dict[str, Any] = {
        "accuracy": percent(correct, len(refs)),
        "consistency": percent(sum(consistent.values()), len(consistent)),
        "n": len(refs),
        "n_sentences": len(consistent),
    }
    if allow_missing:
        result["missing_ids"] = missing
    return result


def write_nlvr_submission(predictions: Mapping[Any, Any], data: list[dict], path: str | os.PathLike) -> None:
    """Atomically write the NLVR2 leaderboard CSV: one ``identifier,True|False`` line per prediction, no header.

    Rows follow the reference order; every prediction's uid must be in ``data``.
    """
    refs = _records(data)
    preds, _ = match_predictions(predictions, refs, "uid", allow_missing=True)
    if not preds:
        raise DataError(f"no NLVR2 predictions to write to {path}; pass a non-empty uid → answer mapping.")
    lines = []
    for key, (uid, record) in refs.items():
        if key in preds:
            answer = parse_nlvr_bool(preds[key], f"the prediction for NLVR2 example {uid!r}")
            lines.append(f"{record['identifier']},{answer}\n")
    atomic_write_text(path, "".join(lines))
