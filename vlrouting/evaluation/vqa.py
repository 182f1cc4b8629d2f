"""VQAv2 accuracy exactly as the official evaluation script defines it, plus VL-Adapter's extras.

Source of the definition: ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of GT-Vision-Lab/VQA (Antol et al.,
ICCV 2015; Goyal et al., CVPR 2017). Two revisions of that file give different numbers; ``version`` chooses:

``"2017"`` (the default) — the script as distributed with VQAv2 in 2017 (last changed in Oct. 2016, commit
``458a8b2``), which VL-Adapter's ``VQAEvaluator.evaluate_raw`` reproduces line for line (reference/vladapter_spec.md
§6) and with which the routing-functions paper's and VL-Adapter's numbers were computed. Per question:

1. the prediction is normalised (:func:`normalize_answer`): newlines/tabs become spaces, the string is stripped,
   punctuation is processed, then it is lower-cased, number words become digits, articles are dropped and
   apostrophe-less contractions are repaired;
2. the ground-truth answers are *punctuation-processed only*, and only when the annotators disagree (the set of
   raw answers has more than one element); unanimous answers are compared raw;
3. accuracy = mean over the leave-one-out subsets (10 subsets of 9 answers) of ``min(1, #matches / 3)``.

``"2021"`` — the revision of March 2021 (commit ``a013f00``, "Fixed processing answers bug"): prediction *and*
ground-truth answers get the newline/tab/strip treatment; then, only when the (stripped) answers disagree, both get
the full punctuation + digit/article processing; when all answers agree neither is processed beyond the stripping.
Step 3 is unchanged. E.g. the prediction ``"two"`` against ten ``"2"`` scores 1.0 by 2017 and 0.0 by 2021, and
disagreeing answers that differ only in case, number words or articles (``"Yes"``/``"yes"``) match each other by
2021, not by 2017. The revisions differ on a large share of the questions of real mixes; use ``"2021"`` only to
compare with numbers computed by the current script, and say so.

The official code's quirks are kept on purpose, because published numbers were computed with them:

* its period regex ``(?!<=\\d)(\\.)(?!\\d)`` contains a typo (a look-*ahead* for the text ``<=``, never true at a
  period), so the effective rule is "delete every period not followed by a digit": ``"5."`` → ``"5"``,
  ``"3.5"`` stays;
* it passes ``re.UNICODE`` (= 32) as the positional *count* argument of ``re.sub``, so at most 32 periods are
  deleted per string;
* if the *original* text contains a digit-comma-digit pattern anywhere, every listed punctuation mark is deleted
  instead of being turned into a space (``"1,000"`` → ``"1000"``); a mark written next to a space is deleted too;
* the capitalised contraction keys (``Im``, ``Ive``, ``Id've``, ``I'dve``) can never match lower-cased text and
  ``somebody'd`` maps to ``somebodyd``: kept as in the official table;
* leave-one-out removes one answer *by position* (the official code compares answer dicts that carry a unique
  ``answer_id``, which amounts to the same); we compute the mean with integer arithmetic, so 1/2/3 matches of 10
  give exactly 0.3/0.6/0.9 instead of a float sum of thirds.

Reported numbers (×100, two decimals, as the official ``setAccuracy``): ``overall``, ``per_answer_type``,
``per_question_type`` and the question groups of the routing-functions paper's Table 3 (appendix A lists the
VQAv2 question types of each group; a group's accuracy pools all its questions). ``topk_score`` is VL-Adapter's
Karpathy soft score ``Σ label[prediction] / N`` on the raw (un-normalised) prediction.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Sequence

from vlrouting.errors import DataError
from vlrouting.evaluation._common import (
    atomic_write_text,
    index_references,
    match_predictions,
    percent,
    question_records,
)

__all__ = [
    "ANSWER_TYPES",
    "VERSIONS",
    "QUESTION_GROUPS",
    "evaluate_vqa",
    "normalize_answer",
    "process_punctuation",
    "vqa_accuracy",
    "write_vqa_submission",
]

# --------------------------------------------------------------------------------------------------------------
# Normalisation tables of the official vqaEval.py
# --------------------------------------------------------------------------------------------------------------

#: Marks that processPunctuation removes or turns into a space (the period has its own rule, see _PERIOD).
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)

#: Number words → digits; only zero to ten (and "none" → "0") are mapped by the official script.
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The official contraction table, one ``written=repaired`` pair per token (no entry contains "=" or spaces).
_CONTRACTION_PAIRS = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd
howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've
it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've
mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've
oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've
shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've
somebodyll=somebody'll somebodys=somebody's someoned=someone'd someoned've=someone'd've
someone'dve=someone'd've someonell=someone'll someones=someone's somethingd=something'd
somethingd've=something'd've something'dve=something'd've somethingll=something'll thats=that's
thered=there'd thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas wasnt=wasn't
wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're whats=what's
whatve=what've whens=when's whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've
who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't
wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all
yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've
youd=you'd youd've=you'd've you'dve=you'd've youll=you'll youre=you're youve=you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split("=", 1) for pair in _CONTRACTION_PAIRS.split())

#: Effective behaviour of the official ``periodStrip`` (see the module docstring for the typo it contains).
_PERIOD = re.compile(r"\.(?!\d)")
#: ``re.UNICODE`` passed positionally as re.sub's ``count`` by the official code.
_PERIOD_MAX_DELETIONS = int(re.UNICODE)
#: Official ``commaStrip``: a comma between two digits anywhere in the text switches to "delete every mark".
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")

ANSWER_TYPES: tuple[str, ...] = ("yes/no", "number", "other")

#: Routing-functions paper, Table 3 / appendix A: the VQAv2 ``question_type`` values behind each column.
QUESTION_GROUPS: dict[str, tuple[str, ...]] = {
    "where": ("where is the", "where are the", "what is on the", "what is in the"),
    "color": ("what color", "what color is the", "what color is", "what color are the", "what is the color of the"),
    "time": ("what time",),
    "person": ("what is the man", "what is the woman", "is the man", "is the woman", "what is the person",
               "is the person", "is this person"),
}


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: delete or blank the listed marks, then delete periods not before digits.

    A mark is deleted (not replaced by a space) when it touches a space somewhere in the text, or when the text
    contains a digit-comma-digit sequence; otherwise it becomes a space.
    """
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if delete_all or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_DELETIONS)


def _process_digits_articles(text: str) -> str:
    """The official ``processDigitArticle``: lower-case, number words → digits, drop articles, fix contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(s: str) -> str:
    """Normalise a predicted answer exactly as the official VQAv2 evaluation does before matching.

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    >>> normalize_answer("1,000")
    '1000'
    """
    if not isinstance(s, str):
        raise DataError(f"VQA answer {s!r} is not a string; predictions must be answer strings.")
    text = s.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_articles(process_punctuation(text))


def _answer_strings(answers: Sequence[Any], question: Any = None) -> list[str]:
    """Accept the 10 answers as strings or as official ``{"answer": ...}`` dicts."""
    where = f" of question {question!r}" if question is not None else ""
    if isinstance(answers, (str, bytes)) or not isinstance(answers, Sequence) or len(answers) == 0:
        raise DataError(f"the answers{where} must be a non-empty list of strings or {{'answer': ...}} dicts; "
                        f"use the official VQAv2 annotation file or a Karpathy file with 'answers'.")
    out = []
    for item in answers:
        value = item.get("answer") if isinstance(item, Mapping) else item
        if not isinstance(value, str):
            raise DataError(f"an answer{where} is {item!r}, not a string or an {{'answer': str}} dict; "
                            f"fix the annotation file.")
        out.append(value)
    return out


#: Revisions of the official vqaEval.py (see the module docstring); the first is the default.
VERSIONS: tuple[str, ...] = ("2017", "2021")


def _ground_truth(answers: list[str]) -> list[str]:
    """2017 rule: punctuation-process the answers only when the annotators disagree."""
    return [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)


def _strip_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _score(prediction: str, answers: list[str], version: str) -> float:
    """Accuracy in [0, 1] of one prediction against the raw answer strings, by the chosen revision."""
    if version == "2017":
        return _leave_one_out(normalize_answer(prediction), _ground_truth(answers))
    if version != "2021":
        raise DataError(f"VQA evaluator version {version!r} is unknown; choose {' or '.join(VERSIONS)}.")
    truth = [_strip_whitespace(a) for a in answers]
    prediction = _strip_whitespace(prediction)
    if len(set(truth)) > 1:  # only when the annotators disagree, and then on both sides
        truth = [_process_digits_articles(process_punctuation(a)) for a in truth]
        prediction = _process_digits_articles(process_punctuation(prediction))
    return _leave_one_out(prediction, truth)


def _leave_one_out(prediction: str, ground_truth: list[str]) -> float:
    """Mean over leave-one-out subsets of ``min(1, matches/3)``, computed exactly as ``Σ min(3, m_i) / (3n)``."""
    matches = sum(answer == prediction for answer in ground_truth)
    total = sum(min(3, matches - (answer == prediction)) for answer in ground_truth)
    return total / (3 * len(ground_truth))


def vqa_accuracy(prediction: str, answers: list[str], version: str = "2017") -> float:
    """Official VQAv2 accuracy in [0, 1] of one predicted answer against the annotators' answers.

    ``answers`` are the raw human answers (normally 10), as strings or ``{"answer": ...}`` dicts. With 10
    answers, 1/2/3/≥4 matches give 0.3/0.6/0.9/1.0. ``version``: the vqaEval.py revision, ``"2017"`` or ``"2021"``.
    """
    if not isinstance(prediction, str):
        raise DataError(f"VQA answer {prediction!r} is not a string; predictions must be answer strings.")
    return _score(prediction, _answer_strings(answers), version)


# --------------------------------------------------------------------------------------------------------------
# Whole-split evaluation
# --------------------------------------------------------------------------------------------------------------

def _group_of(question_type: str | None) -> list[str]:
    return [g for g, types in QUESTION_GROUPS.items() if question_type in types]


def evaluate_vqa(predictions: dict, annotations: list[dict], allow_missing: bool = False,
                 version: str = "2017") -> dict:
    """Score VQAv2 predictions with the official accuracy and VL-Adapter's Karpathy soft score.

    Args:
        predictions: question_id → predicted answer string (ids as int or str).
        annotations: one record per question with ``question_id`` and ``answers`` (10 strings or official
            ``{"answer": ...}`` dicts); optional ``answer_type``, ``question_type`` (breakdowns), ``label``
            (answer → soft score, VL-Adapter Karpathy files) and ``is_topk_optimal``.
        allow_missing: score questions without a prediction as wrong (listed in ``missing_ids``) instead of
            raising :class:`~vlrouting.errors.DataError`.
        version: the official vqaEval.py revision, ``"2017"`` (default; VL-Adapter and the paper) or ``"2021"``.

    Returns:
        A JSON-able dict: ``overall``, ``per_answer_type`` (always the three official types, ``None`` when a type
        has no question), ``per_question_type``, ``question_groups`` (paper Table 3) with
        ``question_group_counts``, ``topk_score`` (only when every record has ``label``), ``is_topk_optimal``
        (overall on each subset, when the field exists), ``n``, ``version`` and, with ``allow_missing``,
        ``missing_ids``.
        Accuracies are ×100 rounded to two decimals, as the official script reports them.
    """
    if version not in VERSIONS:
        raise DataError(f"VQA evaluator version {version!r} is unknown; choose {' or '.join(VERSIONS)}.")
    if isinstance(annotations, Mapping) and "annotations" in annotations:
        annotations = annotations["annotations"]
    records = question_records(
        annotations, "the VQA annotations must be a non-empty list of question records; pass the Karpathy split "
        "file or the official annotation file.",
        "VQA annotation record {i} has no 'question_id'; pass a VQAv2 annotation file.")
    refs = index_references(records, "question_id", "the VQA annotations")
    preds, missing = match_predictions(predictions, refs, "question_id", allow_missing)

    with_labels = all(isinstance(r.get("label"), Mapping) for _, r in refs.values())
    total = 0.0
    soft_total = 0.0
    by_answer_type: dict[str, list[float]] = {t: [] for t in ANSWER_TYPES}
    by_question_type: dict[str, list[float]] = {}
    by_group: dict[str, list[float]] = {g: [] for g in QUESTION_GROUPS}
    by_topk: dict[str, list[float]] = {}
    for key, (qid, record) in refs.items():
        answers = _answer_strings(record.get("answers"), qid)
        prediction = preds.get(key)
        if prediction is None:
            acc, soft = 0.0, 0.0
        else:
            if not isinstance(prediction, str):
                raise DataError(f"the prediction for question {qid!r} is {prediction!r}, not a string; "
                                f"predictions must be answer strings.")
            acc = _score(prediction, answers, version)
            soft = float(record["label"].get(prediction, 0.0)) if with_labels else 0.0
        total += acc
        soft_total += soft
        answer_type = record.get("answer_type")
        if answer_type is not None:
            by_answer_type.setdefault(str(answer_type), []).append(acc)
        question_type = record.get("question_type")
        if question_type is not None:
            by_question_type.setdefault(str(question_type), []).append(acc)
        for group in _group_of(question_type):
            by_group[group].append(acc)
        if "is_topk_optimal" in record:
            by_topk.setdefault("true" if record["is_topk_optimal"] else "false", []).append(acc)

    n = len(refs)
    result: dict[str, Any] = {
        "overall": percent(total, n, 2),
        "per_answer_type": {t: percent(sum(v), len(v), 2) for t, v in by_answer_type.items()},
        "per_question_type": {t: percent(sum(v), len(v), 2) for t, v in sorted(by_question_type.items())},
        "question_groups": {g: percent(sum(v), len(v), 2) for g, v in by_group.items()},
        "question_group_counts": {g: len(v) for g, v in by_group.items()},
    }
    if with_labels:
        result["topk_score"] = percent(soft_total, n, 2)
    if by_topk:
        result["is_topk_optimal"] = {k: {"overall": percent(sum(v), len(v), 2), "n": len(v)}
                                     for k, v in sorted(by_topk.items(), reverse=True)}
    result["n"] = n
    result["version"] = version
    if allow_missing:
        result["missing_ids"] = missing
    return result


def _submission_id(qid: Any) -> Any:
    """The test server wants integer question ids; JSON object keys come back as digit strings."""
    if isinstance(qid, str) and qid.isdigit():
        return int(qid)
    return qid


def write_vqa_submission(predictions: Mapping[Any, str], path: str | os.PathLike) -> None:
    """Atomically write the VQAv2 test-server results file ``[{"question_id": int, "answer": str}, ...]``."""
    if not isinstance(predictions, Mapping) or not predictions:
        raise DataError(f"no VQA predictions to write to {path}; pass a non-empty question_id → answer mapping.")
    rows = []
    for qid, answer in predictions.items():
        if not isinstance(answer, str):
            raise DataError(f"the prediction for question {qid!r} is {answer!r}, not a string; "
                            f"the VQA submission needs answer strings.")
        rows.append({"question_id": _submission_id(qid), "answer": answer})
    atomic_write_text(path, json.dumps(rows) + "\n")
