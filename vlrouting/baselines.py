"""``python -m vlrouting baselines --root DIR``: the blind baselines a trained model must beat on a synthetic root.

VQA, GQA and NLVR² come from the root's ``benchmark_card.json`` (:mod:`vlrouting.data.synthetic`): ``majority`` —
always the most frequent training answer — and ``type_prior`` — the most frequent training answer per question
type / statement template, about the best a model that ignores the image can do. Captions have no answer, so their
blind baseline is the **majority caption**: the most frequent caption of the training images (Karpathy train +
restval, compared lower-cased without the final period), given for every image and scored with the project's COCO
metrics (CIDEr; needs Java like every caption score — without it the caption row says why and the others stay).
Numbers are ×100 like every metric the framework prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from vlrouting.data.layout import ANNOTATIONS
from vlrouting.errors import DataError

# the file split each task is validated / tested on
EVAL_SPLITS = {"vqa": {"val": "karpathy_val", "test": "karpathy_test"}, "gqa": {"val": "valid", "test": "testdev"},
               "nlvr": {"val": "valid", "test": "test"}, "caption": {"val": "val", "test": "test"}}


def read_card(root: Path) -> dict:
    path = Path(root) / "benchmark_card.json"
    try:
        return json.loads(path.read_text())
    except OSError:
        raise DataError(f"{path} does not exist; blind baselines are defined for synthetic roots (write one with "
                        f"`python -m vlrouting synthetic --root {root}`).") from None
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); regenerate the synthetic root.") from None


def majority_caption(dataset_coco: dict) -> str:
    """The most frequent training caption (train + restval); ties → the alphabetically first."""
    counts: Counter = Counter()
    for image in dataset_coco.get("images", []):
        if image.get("split") in ("train", "restval"):
            counts.update(s["raw"].strip().lower().rstrip(".") for s in image["sentences"])
    if not counts:
        raise DataError("dataset_coco.json has no train/restval captions; regenerate the synthetic root.")
    best = max(counts.values())
    return min(c for c, n in counts.items() if n == best) + "."


def caption_baseline(root: Path) -> dict:
    """``{"caption": str, "val": CIDEr, "test": CIDEr}`` of the majority caption, or ``{"unavailable": reason}``."""
    from vlrouting.evaluation.caption import evaluate_caption
    from vlrouting.evaluation.cli import _load_caption_references
    from vlrouting.evaluation._common import read_json

    path = Path(root) / ANNOTATIONS["coco_captions"]["test"][0].annotation
    text = majority_caption(read_json(path, "references"))
    out: dict = {"caption": text}
    for role, split in EVAL_SPLITS["caption"].items():
        refs, _ = _load_caption_references(path, split)
        try:
            out[role] = evaluate_caption({k: text for k in refs}, refs, spice="off")["CIDEr"]
        except DataError as exc:  # no Java: say so, keep the other baselines
            return {"caption": text, "unavailable": str(exc)}
    return out


def blind_baselines(root, captions: bool = True) -> dict:
    """``{task: {"val": {"majority", "type_prior"}, "test": {...}}}`` ×100; captions: majority-caption CIDEr."""
    root = Path(root)
    card = read_card(root)
    out: dict = {}
    for task in ("vqa", "gqa", "nlvr"):
        splits = card[task]["splits"]
        out[task] = {role: {k: round(100 * splits[s][k], 2) for k in ("majority", "type_prior")}
                     for role, s in EVAL_SPLITS[task].items()}
    if captions:
        cap = caption_baseline(root)
        out["caption"] = {"majority_caption": cap["caption"]}
        if "unavailable" in cap:
            out["caption"]["unavailable"] = cap["unavailable"]
        else:
            out["caption"].update({role: {"majority": round(cap[role], 2)} for role in EVAL_SPLITS["caption"]})
    return out


def format_baselines(b: dict, split: str = "test") -> str:
    lines = [f"Blind baselines on the synthetic {split} splits (x100): majority answer / best per-question-type prior"]
    for task in ("vqa", "gqa", "nlvr"):
        s = b[task][split]
        lines.append(f"  {task:<8} {s['majority']:6.2f} / {s['type_prior']:6.2f}")
    cap = b.get("caption")
    if cap is not None:
        if "unavailable" in cap:
            lines.append(f"  caption  n/a ({cap['unavailable']})")
        else:
            lines.append(f"  caption  {cap[split]['majority']:6.2f} CIDEr of the majority caption "
                         f"\"{cap['majority_caption']}\"")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlrouting baselines",
                                description="Blind baselines of a synthetic root (majority answer, per-type prior, "
                                            "majority-caption CIDEr).")
    p.add_argument("--root", required=True, help="a synthetic datasets root (with benchmark_card.json)")
    p.add_argument("--split", choices=("val", "test"), default="test")
    p.add_argument("--no-captions", action="store_true", help="skip the caption baseline (no Java needed)")
    p.add_argument("--out", help="also write every number as JSON to this file")
    args = p.parse_args(argv)
    b = blind_baselines(args.root, captions=not args.no_captions)
    print(format_baselines(b, args.split))
    if args.out:
        from vlrouting.fileio import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps(b, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
