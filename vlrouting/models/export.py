"""Export a fully fine-tuned run as a backbone folder that later runs load with ``from_pretrained``.

``python -m vlrouting.models.export --run snap/<exp>/<run> --out DIR``: rebuilds the run's model from its
``config.yaml`` (any model family), loads its saved weights (``adapter_model.safetensors``; for full fine-tuning
that is every parameter), then lets the family write ``DIR`` (:meth:`FamilyModel.export_pretrained`, all files published atomically: nothing
is left in ``DIR`` when the export fails; CLIP-BART:
the BART backbone and tokenizer with ``save_pretrained`` plus ``visual_embedding.safetensors`` — point
``model.backbone=DIR model.visual_init=DIR`` at it). The CPU demo uses this to give PEFT a "pretrained" tiny
backbone (a short full fine-tuning warm-up on a disjoint split), the way a real run starts from
``facebook/bart-base``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlrouting.errors import DataError, VLRoutingError
from vlrouting.fileio import atomic_directory, check_writable


def export_backbone(run_dir: str | Path, out_dir: str | Path) -> Path:
    from vlrouting.config import load_config
    from vlrouting.models.registry import build_model, load_tokenizer
    from vlrouting.peft import load_peft

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise DataError(f"{run_dir} has no config.yaml; give a finished run directory (snap/<experiment>/<run>).")
    check_writable(out_dir, "--out")
    cfg = load_config(str(cfg_path))
    tok = load_tokenizer(cfg.model)
    model = build_model(cfg.model, cfg.peft, pretrained=True, tokenizer=tok)
    load_peft(model, run_dir)
    # written into a temporary folder, then each file fsynced and moved into out_dir: a failure leaves nothing
    with atomic_directory(out_dir) as tmp:
        model.export_pretrained(tmp, tok)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlrouting.models.export", description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # stderr is for the one error sentence, as in training
    try:
        out = export_backbone(args.run, args.out)
    except VLRoutingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported backbone, tokenizer and visual embedding to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
