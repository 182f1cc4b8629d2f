"""``python -m vlrouting params --config NAME|PATH [key=value ...]``: trainable / total parameters.

Builds the config's model family from its packaged architecture configs on the ``meta`` device (no weights, no
download), attaches the configured PEFT modules and prints ``trainable: N | total: M | trainable%: P`` with
VL-Adapter's definition (total includes the PEFT modules, reference §3.9). A PEFT method that breaks its
parameters down (e.g. ``dma``) adds one indented line per component; they sum to the trainable count.
"""

from __future__ import annotations

import argparse
import json

from vlrouting.config import load_config, packaged_configs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlrouting params", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="packaged config name or YAML path")
    ap.add_argument("--list", action="store_true", help="list the packaged configs")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the one-line report")
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. peft.routing=comb3")
    args = ap.parse_args(argv)
    if args.list or not args.config:
        print("\n".join(packaged_configs()))
        return 0 if args.list else 2
    from vlrouting.models.registry import build_model
    from vlrouting.peft import format_parameter_report

    cfg = load_config(args.config, args.overrides)
    model = build_model(cfg.model, cfg.peft, pretrained=False, device="meta")
    counts = model.parameter_report()
    print(json.dumps(counts) if args.json else format_parameter_report(counts))
    if not args.json:
        for name, n in (counts.get("components") or {}).items():
            print(f"  {name}: {n:,}")
    return 0
