"""Helpers shared by the four evaluators: id matching, atomic writes, JSON/CSV reading.

Every evaluator follows the same contract (issue 5): a prediction whose id is not in the references is an error,
and a reference without a prediction is an error too unless ``allow_missing=True``, in which case it is scored as
wrong and listed under ``missing_ids``. Ids are matched by their string form, so ``1`` and ``"1"`` are the same
question (JSON object keys are always strings, annotation ids are often integers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Hashable, Iterable, Mapping, Sequence

from vlrouting.fileio import atomic_write_text  # noqa: F401  (re-exported)
from vlrouting.errors import DataError

#: How many offending ids an error message names before it says "and N more".
MAX_NAMED_IDS = 5


def id_key(value: Any) -> str:
    """The form under which an id is matched: its ``str``; ``True``/``False``/``None`` are not ids."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(f"id {value!r} is not a string or an integer; ids must be question ids, uids or image ids.")
    return str(value)


def name_ids(ids: list[Any]) -> str:
    """``"3 (e.g. 1, 2, 3)"``-style listing: up to :data:`MAX_NAMED_IDS` ids, then how many more."""
    shown = ", ".join(repr(i) if isinstance(i, str) else str(i) for i in ids[:MAX_NAMED_IDS])
    more = f" and {len(ids) - MAX_NAMED_IDS} more" if len(ids) > MAX_NAMED_IDS else ""
    return f"{shown}{more}"


def question_records(data: Any, empty_msg: str, record_msg: str) -> list[tuple[Any, Mapping]]:
    """``(question_id, record)`` pairs of a non-empty list of question records; DataErrors otherwise.

    ``record_msg`` is formatted with ``i``, the index of a record that is not a mapping with a ``question_id``.
    """
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)) or not data:
        raise DataError(empty_msg)
    records = []
    for i, record in enumerate(data):
        if not isinstance(record, Mapping) or "question_id" not in record:
            raise DataError(record_msg.format(i=i))
        records.append((record["question_id"], record))
    return records


def index_references(records: Iterable[tuple[Hashable, Any]], what: str, source: str) -> dict[str, tuple[Any, Any]]:
    """``{id_key: (original id, record)}`` in reference order; a duplicated id is an error."""
    out: dict[str, tuple[Any, Any]] = {}
    for raw_id, record in records:
        key = id_key(raw_id)
        if key in out:
            raise DataError(f"{source} lists {what} {raw_id!r} twice; each {what} must appear once.")
        out[key] = (raw_id, record)
    return out


def match_predictions(
    predictions: Mapping[Any, Any],
    references: Mapping[str, tuple[Any, Any]],
    what: str,
    allow_missing: bool,
) -> tuple[dict[str, Any], list[Any]]:
    """Check prediction ids against the references.

    Returns ``({id_key: prediction}, missing original ids in reference order)``. Raises :class:`DataError` for
    unknown ids, for two prediction keys that collide under :func:`id_key`, and (unless ``allow_missing``) for
    missing ids.
    """
    if not isinstance(predictions, Mapping):
        raise DataError(f"predictions must map each {what} to its prediction, got {type(predictions).__name__}.")
    by_key: dict[str, Any] = {}
    unknown: list[Any] = []
    for raw_id, value in predictions.items():
        key = id_key(raw_id)
        if key in by_key:
            raise DataError(f"the predictions hold {what} {raw_id!r} twice (as {raw_id!r} and as a "
                            f"{'string' if isinstance(raw_id, int) else 'number'}); keep one.")
        by_key[key] = value
        if key not in references:
            unknown.append(raw_id)
    if unknown:
        raise DataError(
            f"{len(unknown)} prediction(s) have a {what} that is not in the references ({name_ids(unknown)}); "
            f"score them against the references they were predicted for, or drop them.")
    missing = [raw_id for key, (raw_id, _) in references.items() if key not in by_key]
    if missing and not allow_missing:
        raise DataError(
            f"{len(missing)} {what}(s) of the references have no prediction ({name_ids(missing)}); predict them, "
            f"or pass allow_missing=True (--allow-missing) to score them as wrong.")
    return by_key, missing


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike, role: str) -> Any:
    """Load a JSON file; a missing, unreadable or malformed file is one :class:`DataError` sentence."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{role} file {path} does not exist; check the path.")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataError(f"{role} file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg}); regenerate or fix it.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{role} file {path} cannot be read ({exc}); check its permissions and encoding.") from exc


def percent(numerator: float, count: int, digits: int | None = None) -> float | None:
    """``100 * numerator / count`` (``None`` for an empty group), optionally rounded like the official scripts."""
    if count == 0:
        return None
    value = 100.0 * numerator / count
    return round(value, digits) if digits is not None else value
