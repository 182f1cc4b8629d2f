"""COCO caption metrics via the coco-caption toolkit (``pycocoevalcap``), as VL-Adapter and the paper report them.

Definition (Chen et al., "Microsoft COCO Captions: Data Collection and Evaluation Server", 2015; the code of
``pycocoevalcap.eval.COCOEvalCap``): references and predictions are tokenised by the Stanford PTB tokenizer (Java;
lower-cased, punctuation tokens removed), then scored with BLEU-1..4 (``closest`` reference length), METEOR 1.5,
ROUGE-L, CIDEr-D (document frequencies from the evaluated reference set) and SPICE. All values are ×100.
``Avg`` is the routing-functions paper's Table 4 average of BLEU-4, METEOR, ROUGE-L, CIDEr and SPICE, reported only
when all five exist — or, with ``average_available=True`` (task ``coco_lm``), over those that exist (SPICE may be
unavailable); ``Avg_metrics`` then names the metrics averaged, so a four-metric mean is never mistaken for Table 4's.

SPICE needs Stanford CoreNLP 3.6.0 jars that ``pycocoevalcap`` downloads on first use (``spice/lib``). We check
for them *without* triggering the download: when they are absent (or SPICE's Java run fails), ``SPICE`` is
``None`` and ``spice_unavailable`` says why — never a crash and never a silent zero. ``spice="on"`` turns that into
an error, ``spice="off"`` skips SPICE (it is slow: CoreNLP parses every caption).

The METEOR scorer keeps one JVM per process (starting it costs ~10 s, mostly loading the paraphrase table), so
per-epoch evaluation pays that once; scores do not depend on which JVM computes them.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from vlrouting.errors import ConfigError, DataError
from vlrouting.evaluation._common import index_references, match_predictions

__all__ = [
    "CAPTION_METRICS",
    "JavaNotFoundError",
    "averaged_metrics",
    "caption_average",
    "evaluate_caption",
    "spice_unavailable_reason",
]

#: Output keys, in the order of the paper's Table 4 (BLEU-1..3 first).
CAPTION_METRICS: tuple[str, ...] = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
#: The five metrics whose mean is Table 4's "Avg.".
AVERAGED_METRICS: tuple[str, ...] = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")

#: Files SPICE needs inside pycocoevalcap's ``spice`` folder; the CoreNLP pair is what get_stanford_models fetches.
SPICE_REQUIRED_FILES: tuple[str, ...] = (
    "spice-1.0.jar",
    "lib/stanford-corenlp-3.6.0.jar",
    "lib/stanford-corenlp-3.6.0-models.jar",
)

_JAVA_HINT = "install a Java runtime (e.g. `apt-get install default-jre-headless`) and make sure `java` is on PATH"


class JavaNotFoundError(DataError):
    """The caption metrics need ``java`` (PTB tokenizer, METEOR, SPICE) and none is on PATH."""


def _java() -> str | None:
    return shutil.which("java")


def _pycocoevalcap_dir() -> Path:
    import pycocoevalcap

    return Path(next(iter(pycocoevalcap.__path__)))


#: Where SPICE's jars are looked for; tests point it elsewhere to simulate a missing download.
SPICE_DIR: Path | None = None


def spice_unavailable_reason() -> str | None:
    """``None`` when SPICE can run, else one sentence saying what is missing and how to get it (no download)."""
    if _java() is None:
        return f"SPICE is unavailable because Java is missing: {_JAVA_HINT}."
    spice_dir = SPICE_DIR if SPICE_DIR is not None else _pycocoevalcap_dir() / "spice"
    absent = [name for name in SPICE_REQUIRED_FILES if not (spice_dir / name).is_file()]
    if absent:
        return (f"SPICE is unavailable because {', '.join(absent)} {'is' if len(absent) == 1 else 'are'} missing "
                f"in {spice_dir}: run "
                f"`python -m pycocoevalcap.spice.get_stanford_models` once with internet access (it fetches "
                f"Stanford CoreNLP 3.6.0) to enable it.")
    return None


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def caption_average(metrics: Mapping[str, float | None]) -> float | None:
    """Table 4's ``Avg.``: mean of BLEU-4, METEOR, ROUGE-L, CIDEr and SPICE (×100), ``None`` unless all five exist."""
    values = [metrics.get(name) for name in AVERAGED_METRICS]
    if not all(_present(v) for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def averaged_metrics(metrics: Mapping[str, float | None], average_available: bool = False) -> list[str]:
    """The metrics ``Avg`` averages: all five of Table 4, or (``average_available``) those of them that exist;
    empty when there is no average."""
    present = [name for name in AVERAGED_METRICS if _present(metrics.get(name))]
    if len(present) == len(AVERAGED_METRICS) or (average_available and present):
        return present
    return []


# --------------------------------------------------------------------------------------------------------------
# pycocoevalcap plumbing
# --------------------------------------------------------------------------------------------------------------

_METEOR_LOCK = threading.Lock()
_METEOR: Any = None
_METEOR_PID: int | None = None


def _discard_meteor(meteor: Any) -> None:
    """Stop a METEOR JVM whose state is unknown (a failed call leaves its internal lock held)."""
    try:
        if meteor.lock.locked():
            meteor.lock.release()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait(timeout=10)
    except Exception:  # best effort: the process may already be gone
        pass


class _Inherited:
    """Stand-in class for a METEOR object inherited through ``fork``: its ``__del__`` would kill the parent's JVM."""


def shared_meteor() -> Any:
    """The process-wide ``pycocoevalcap`` METEOR scorer, started on first use (and again after a fork)."""
    global _METEOR, _METEOR_PID
    if _METEOR is not None and _METEOR_PID != os.getpid():
        _METEOR.__class__ = _Inherited
        _METEOR = None
    if _METEOR is None:
        from pycocoevalcap.meteor.meteor import Meteor

        _METEOR = Meteor()
        _METEOR_PID = os.getpid()
    return _METEOR


def _meteor_score(gts: dict, res: dict) -> float:
    global _METEOR
    with _METEOR_LOCK:
        meteor = shared_meteor()
        try:
            score, _ = meteor.compute_score(gts, res)
        except Exception as exc:
            _discard_meteor(meteor)
            _METEOR = None
            raise DataError(f"the METEOR scorer (Java, pycocoevalcap/meteor/meteor-1.5.jar) failed ({exc!r}); "
                            f"check that `java -Xmx2G -version` works on this machine.") from exc
    return float(score)


def _one_line(text: str) -> str:
    """The PTB tokenizer runs with -preserveLines: any line break inside a caption would shift every later one."""
    return " ".join(text.splitlines())


def _tokenize(captions: dict[str, list[str]], role: str) -> dict[str, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    wrapped = {key: [{"caption": _one_line(c)} for c in caps] for key, caps in captions.items()}
    try:
        tokenized = PTBTokenizer().tokenize(wrapped)
    except PermissionError as exc:
        raise DataError(f"the PTB tokenizer could not write its temporary file next to its jar ({exc.filename}); "
                        f"install pycocoevalcap in a writable environment (e.g. a virtualenv).") from exc
    except OSError as exc:
        raise DataError(f"the PTB tokenizer (Java) could not run ({exc}); {_JAVA_HINT}.") from exc
    for key, caps in captions.items():
        if len(tokenized.get(key, ())) != len(caps):
            raise DataError(f"the PTB tokenizer (Java, pycocoevalcap/tokenizer/stanford-corenlp-3.4.1.jar) returned "
                            f"too few lines for the {role}; check that `java -version` works and see its stderr.")
    return tokenized


def _run_spice(gts: dict, res: dict) -> float:
    """SPICE F-score (fraction) via pycocoevalcap; only called after :func:`spice_unavailable_reason` said yes."""
    from pycocoevalcap.spice.spice import Spice

    score, _ = Spice().compute_score(gts, res)
    return float(score)


# --------------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------------

_SPICE_MODES = {"auto": "auto", "on": "on", "off": "off", True: "on", False: "off"}


def evaluate_caption(predictions: dict, references: dict, spice: str = "auto", allow_missing: bool = False,
                     average_available: bool = False) -> dict:
    """COCO caption metrics ×100 of ``predictions`` (img_id → caption) vs ``references`` (img_id → raw captions).

    Args:
        predictions: image id → generated caption (raw text; tokenised here).
        references: image id → list of raw reference captions (e.g. the 5 Karpathy ``sentences[].raw``).
        spice: ``"auto"`` (compute SPICE when its jars are installed), ``"on"`` (require it), ``"off"`` (skip it).
        allow_missing: score images without a prediction with an empty caption (all metrics 0 for that image)
            and list them in ``missing_ids``.
        average_available: without SPICE, ``Avg`` is the mean of the other four instead of ``None``.

    Returns:
        ``BLEU-1``..``BLEU-4``, ``METEOR``, ``ROUGE-L``, ``CIDEr``, ``SPICE`` (``None`` when unavailable, with
        ``spice_unavailable``), ``Avg`` (Table 4, ``None`` without SPICE unless ``average_available``) with
        ``Avg_metrics`` (the metrics it averages, whenever there is an average), ``n`` (+ ``missing_ids``).
    """
    try:
        mode = _SPICE_MODES[spice]
    except (KeyError, TypeError):
        raise ConfigError(f"spice={spice!r} is not a valid SPICE mode; use 'auto', 'on' or 'off'.") from None
    if not isinstance(references, Mapping) or not references:
        raise DataError("the caption references must be a non-empty mapping img_id → list of reference captions; "
                        "pass COCO/dataset_coco.json (Karpathy) or an {img_id: [captions]} file.")
    refs = index_references(references.items(), "image id", "the caption references")
    preds, missing = match_predictions(predictions, refs, "image id", allow_missing)

    gts: dict[str, list[str]] = {}
    res: dict[str, list[str]] = {}
    for key, (img_id, captions) in refs.items():
        if isinstance(captions, str) or not isinstance(captions, Sequence) or not captions \
                or not all(isinstance(c, str) for c in captions):
            raise DataError(f"the references of image {img_id!r} must be a non-empty list of caption strings; "
                            f"fix the references file.")
        prediction = preds.get(key, "")
        if not isinstance(prediction, str):
            raise DataError(f"the prediction for image {img_id!r} is {prediction!r}, not a caption string.")
        gts[key] = list(captions)
        res[key] = [prediction]

    if _java() is None:
        raise JavaNotFoundError(f"the COCO caption metrics need Java for the PTB tokenizer and METEOR; {_JAVA_HINT}.")
    spice_reason = spice_unavailable_reason() if mode != "off" else "SPICE was not computed because spice='off'."
    if spice_reason is not None and mode == "on":
        raise DataError(f"{spice_reason[:-1]}, or use spice='auto' (--spice auto) to report the other metrics.")

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts_tok = _tokenize(gts, "references")
    res_tok = _tokenize(res, "predictions")
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its length statistics
        bleu, _ = Bleu(4).compute_score(gts_tok, res_tok)
        rouge, _ = Rouge().compute_score(gts_tok, res_tok)
        cider, _ = Cider().compute_score(gts_tok, res_tok)
    meteor = _meteor_score(gts_tok, res_tok)

    spice_value: float | None = None
    if spice_reason is None:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                spice_value = 100.0 * _run_spice(gts_tok, res_tok)
            if math.isnan(spice_value):
                raise ValueError("SPICE returned NaN")
        except Exception as exc:  # SPICE's own Java run: report, never crash the other metrics
            spice_value = None
            detail = " ".join(str(exc).split())
            spice_reason = (f"SPICE is unavailable because its Java run failed ({type(exc).__name__}: {detail}); "
                            f"SPICE 1.0 needs about 8 GB of Java heap and works best with Java 8.")
            if mode == "on":
                raise DataError(f"{spice_reason[:-1]}, or use spice='auto' (--spice auto) to report the other "
                                f"metrics.") from exc

    result: dict[str, Any] = {f"BLEU-{i + 1}": 100.0 * float(b) for i, b in enumerate(bleu)}
    result.update({"METEOR": 100.0 * meteor, "ROUGE-L": 100.0 * float(rouge), "CIDEr": 100.0 * float(cider),
                   "SPICE": spice_value})
    names = averaged_metrics(result, average_available)
    result["Avg"] = sum(result[m] for m in names) / len(names) if names else None
    if names:
        result["Avg_metrics"] = names
    if spice_value is None:
        result["spice_unavailable"] = spice_reason
    result["n"] = len(refs)
    if allow_missing:
        result["missing_ids"] = missing
    return result
