"""``python -m feature_extraction verify --annotations FILE [FILE ...] --features DIR|FILE.h5``

Checks that every image an annotation file references — ``img_id`` (VQA, GQA), ``img0``/``img1`` (NLVR²), or a
Karpathy ``images[].filename`` (COCO captions) — has features in the folder (any layout that
:class:`vlrouting.data.features.FeatureStore` reads: ours per image or contiguous, VL-Adapter's archive) or the
single file, with a square token count (36 or 49), one
feature dimension throughout, a float16/float32 dtype and no NaN/Inf; and that our per-split files in the folder come
from the same network (equal ``model_fingerprint``). Prints a one-line verdict (``OK: ...`` / ``FAIL: ...``), then
the ids at fault; exit status 0 when everything is right, 1 otherwise (2 for unusable arguments).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from vlrouting.data.features import FeatureStore
from vlrouting.errors import DataError

from .images import referenced_ids

ALLOWED_DTYPES = (np.float16, np.float32)


def verify(annotations: list[Path], features: Path, sample: int | None = None, seed: int = 0) -> tuple[bool, str, dict]:
    """Returns (ok, verdict line, details: missing / bad_shape / bad_dtype / nonfinite id lists)."""
    ids: list[str] = list(dict.fromkeys(i for a in annotations for i in referenced_ids(Path(a))))
    store = FeatureStore(features, n_boxes=36)
    present = [i for i in ids if i in store]
    missing = [i for i in ids if i not in store]
    to_read = present if sample is None or sample >= len(present) else sorted(
        random.Random(seed).sample(present, sample))
    bad_shape, bad_dtype, nonfinite = [], [], []
    shapes: Counter = Counter()
    dtypes: Counter = Counter()
    dims: Counter = Counter()
    for i in to_read:
        arr = store.raw(i)
        shapes[tuple(arr.shape)] += 1
        dtypes[str(arr.dtype)] += 1
        tokens = int(np.prod(arr.shape[:-1])) if arr.ndim >= 2 else -1
        if arr.ndim not in (2, 3) or math.isqrt(tokens) ** 2 != tokens or tokens not in (36, 49):
            bad_shape.append(i)
        else:
            dims[arr.shape[-1]] += 1
        if arr.dtype not in ALLOWED_DTYPES:
            bad_dtype.append(i)
        elif not np.isfinite(arr).all():
            nonfinite.append(i)
    odd_dim = []
    if len(dims) > 1:  # the minority dimensions are the odd ones
        main = dims.most_common(1)[0][0]
        odd_dim = [i for i in to_read if i not in bad_shape and store.raw(i).shape[-1] != main]
    fingerprints = _fingerprints(store)
    details = {"missing": missing, "bad_shape": bad_shape + odd_dim, "bad_dtype": bad_dtype, "nonfinite": nonfinite,
               "fingerprints": fingerprints}
    where = f"{features}"
    names = ", ".join(Path(a).name for a in annotations)
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(ids)} referenced image ids are missing")
    if bad_shape or odd_dim:
        problems.append(f"{len(bad_shape) + len(odd_dim)} have a wrong shape")
    if bad_dtype:
        problems.append(f"{len(bad_dtype)} have a dtype other than float16/float32")
    if nonfinite:
        problems.append(f"{len(nonfinite)} contain NaN/Inf")
    if len(set(fingerprints.values())) > 1:
        problems.append("the .h5 files were extracted by different networks (model_fingerprint differs)")
    checked = "" if len(to_read) == len(present) else f" ({len(to_read)} sampled for values)"
    if problems:
        return False, f"FAIL: {'; '.join(problems)} — {names} vs {where}", details
    shape_txt = ", ".join(f"{'×'.join(map(str, s))}" for s in sorted(shapes)) or "-"
    return True, (f"OK: all {len(ids)} image ids referenced by {names} have finite features in {where} "
                  f"({shape_txt} {'/'.join(sorted(dtypes))}){checked}"), details


def _fingerprints(store: FeatureStore) -> dict[str, str]:
    out = {}
    for i, path in enumerate(store._files):
        fp = store._h5(i).attrs.get("model_fingerprint")
        if fp is not None:
            out[path.name] = fp.decode() if isinstance(fp, bytes) else str(fp)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m feature_extraction verify",
                                description="Check features against the image ids annotation files reference.")
    p.add_argument("--annotations", nargs="+", required=True, help="VQA/GQA/NLVR2 json files or dataset_coco.json")
    p.add_argument("--features", required=True, help="a clip_features folder or one .h5 file")
    p.add_argument("--sample", type=int, default=None, help="read the values of only N random ids (presence: all)")
    p.add_argument("--max-list", type=int, default=50, help="ids listed per problem (default 50)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not Path(args.features).exists():
        raise DataError(f"--features {args.features} does not exist; pass a clip_features folder or an .h5 file.")
    ok, verdict, details = verify([Path(a) for a in args.annotations], Path(args.features), args.sample)
    print(verdict)
    for key in ("missing", "bad_shape", "bad_dtype", "nonfinite"):
        ids = details[key]
        if ids:
            more = f" ... (+{len(ids) - args.max_list} more)" if len(ids) > args.max_list else ""
            print(f"{key}: {' '.join(ids[:args.max_list])}{more}")
    if len(set(details["fingerprints"].values())) > 1:
        for name, fp in sorted(details["fingerprints"].items()):
            print(f"fingerprint {name}: {fp}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
