"""``python -m vlrouting analyze deltas RUN``: how much the down- and up-projections changed in training (paper
Appendix B, "Changes in mappings after tuning", Fig. B2).

For every PEFT block at every wrapped position: ΔW = ‖W_t − W_0‖_F of its down-projection and of its
up-projection, and the ratio ΔW_down / ΔW_up, where W_0 is the run's ``peft_init.safetensors`` (saved by the trainer
before the first step of a fresh run) and W_t its ``adapter_model.safetensors`` (the last checkpoint, or the final
weights once the run is over). Which tensors are "down" and "up" is not decided here: every PEFT wrapper names its
pairs (:meth:`vlrouting.peft.base.RoutedWrapper.delta_pairs` — LoRA: A and B; Adapter: ``down.weight`` and
``up.weight``), optionally split into named row groups (a merged q|v LoRA reports its q and v halves separately,
as Fig. B2's two panels do), and the trainer stores the pairs in ``peft_init.safetensors``' metadata.

Outputs (``--out``, default ``RUN/analysis``; written atomically): ``deltas.csv`` (one row per position × block ×
group), ``deltas.md`` (the same table, also printed) and ``deltas.png`` (ΔW_down/ΔW_up by layer: one panel per
module kind and row group, one line per stack and block). The layer of a position is the last integer in its name
(``…decoder.layers.3.self_attn.q_proj`` → layer 3 of ``…decoder.layers`` · ``self_attn.q_proj``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from vlrouting.errors import DataError
from vlrouting.fileio import atomic_write_bytes
from vlrouting.peft.io import DELTA_PAIRS_KEY, INIT_NAME, WEIGHTS_NAME

OUTPUT_FILES = {"csv": "deltas.csv", "md": "deltas.md", "png": "deltas.png"}
_LAYER = re.compile(r"^(.*)\.(\d+)\.(.+)$")  # greedy prefix: the last integer component is the layer


@dataclass(frozen=True)
class DeltaRow:
    """ΔW of one (down, up) pair (one row group of it) at one position."""

    position: str
    block: str
    group: str
    delta_down: float
    delta_up: float

    @property
    def ratio(self) -> float:
        if self.delta_up == 0.0:
            return math.nan if self.delta_down == 0.0 else math.inf
        return self.delta_down / self.delta_up

    @property
    def stack(self) -> str:
        """The module stack the layer index counts in (``bart.model.decoder.layers``), ``""`` without an index."""
        m = _LAYER.match(self.position)
        return m.group(1) if m else ""

    @property
    def layer(self) -> int | None:
        m = _LAYER.match(self.position)
        return int(m.group(2)) if m else None

    @property
    def kind(self) -> str:
        """What the position is inside its layer (``self_attn.q_proj``); the whole name without a layer index."""
        m = _LAYER.match(self.position)
        return m.group(3) if m else self.position


# ------------------------------------------------------------------------------------------------- computing
def _open(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise DataError(f"{path} is not a readable safetensors file ({exc.__class__.__name__}); it is written "
                        "atomically by the trainer, so restore it from the run or train again.") from None


def _frobenius(delta: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(delta.double()))


def _row_groups(t: torch.Tensor, groups: list[str], name: str, path: Path) -> list[tuple[str, torch.Tensor]]:
    if not groups:
        return [("", t)]
    if t.shape[0] % len(groups):
        raise DataError(f"{path}: tensor '{name}' has {t.shape[0]} rows, which do not split into the {len(groups)} "
                        f"row groups {groups} its PEFT module names.")
    return list(zip(groups, t.chunk(len(groups), dim=0)))


def compute_deltas(init_path: Path, final_path: Path) -> list[DeltaRow]:
    """ΔW rows of every pair listed in ``init_path``'s metadata (see the module docstring)."""
    init, meta = _open(init_path)
    if DELTA_PAIRS_KEY not in meta:
        raise DataError(f"{init_path} lists no down/up projection pairs in its metadata; it was not written by "
                        "vlrouting's trainer, so ΔW cannot be attributed to projections.")
    pairs = json.loads(meta[DELTA_PAIRS_KEY])
    if not pairs:
        raise DataError(f"the PEFT modules of this run name no down/up projection matrices ({init_path} lists no "
                        "pairs), so there is no ΔW_down/ΔW_up to report; the analysis applies to LoRA, Adapter "
                        "and half-shared Adapter runs.")
    final, _ = _open(final_path)
    rows = []
    for pair in pairs:
        deltas = {}
        for role in ("down", "up"):
            name = pair[role]
            for where, tensors in ((init_path, init), (final_path, final)):
                if name not in tensors:
                    raise DataError(f"{where} lacks the tensor '{name}' that {init_path} names as a {role}-projection; "
                                    "were both files written by the same run?")
            if init[name].shape != final[name].shape:
                raise DataError(f"tensor '{name}' has shape {tuple(init[name].shape)} in {init_path} but "
                                f"{tuple(final[name].shape)} in {final_path}; were both files written by the same run?")
            deltas[role] = dict(_row_groups(final[name].double() - init[name].double(), pair["groups"], name,
                                            final_path))
        for group in deltas["down"]:
            rows.append(DeltaRow(pair["position"], pair["block"], group, _frobenius(deltas["down"][group]),
                                 _frobenius(deltas["up"][group])))
    return rows


# ------------------------------------------------------------------------------------------------- formatting
def _num(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else ("inf" if x > 0 else "nan")


def format_markdown(rows: list[DeltaRow], title: str = "") -> str:
    lines = [f"ΔW = ‖W_t − W_0‖_F per PEFT block{f' ({title})' if title else ''}", "",
             "| position | block | group | ΔW_down | ΔW_up | ΔW_down/ΔW_up |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.position} | {r.block} | {r.group or '–'} | {_num(r.delta_down)} | {_num(r.delta_up)} | "
                     f"{_num(r.ratio)} |")
    ratios = [r.ratio for r in rows if math.isfinite(r.ratio)]
    if ratios:
        ratios.sort()
        mid = len(ratios) // 2
        median = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
        lines += ["", f"median ΔW_down/ΔW_up over {len(ratios)} blocks: {_num(median)}"]
    return "\n".join(lines) + "\n"


def format_csv(rows: list[DeltaRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["position", "stack", "layer", "kind", "block", "group", "delta_down", "delta_up", "ratio"])
    for r in rows:
        writer.writerow([r.position, r.stack, "" if r.layer is None else r.layer, r.kind, r.block, r.group,
                         repr(r.delta_down), repr(r.delta_up), repr(r.ratio)])
    return buf.getvalue()


def render_plot(rows: list[DeltaRow], title: str = "") -> bytes:
    """PNG bytes: ΔW_down/ΔW_up by layer, one panel per (kind, group), one line per (stack, block)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg without touching pyplot's global backend
    from matplotlib.figure import Figure

    panels: dict[tuple[str, str], dict[tuple[str, str], list[tuple[int, float]]]] = {}
    for i, r in enumerate(rows):
        series = panels.setdefault((r.kind, r.group), {}).setdefault((r.stack, r.block), [])
        series.append((r.layer if r.layer is not None else i, r.ratio))
    n = max(len(panels), 1)
    fig = Figure(figsize=(min(4.2 * n, 24.0), 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, ((kind, group), lines) in zip(axes, panels.items()):
        for (stack, block), points in lines.items():
            points.sort()
            ys = [y if math.isfinite(y) else math.nan for _, y in points]
            label = stack.rsplit(".", 2)[-2] if stack.count(".") >= 1 else (stack or "position")
            label += "" if block == "shared" else f" · {block}"
            ax.plot([x for x, _ in points], ys, marker="o", label=label)
        ax.set_title(kind + (f" [{group}]" if group else ""), fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylabel("ΔW_down / ΔW_up")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("‖W_t − W_0‖_F of W_down over W_up by layer" + (f" — {title}" if title else ""))
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------- command
def analyze_deltas(run: str | Path, out: str | Path | None = None, plot: bool = True) -> tuple[list[DeltaRow], dict]:
    """Compute the ΔW table of ``run`` and write deltas.csv / deltas.md / deltas.png into ``out``."""
    run = Path(run)
    if not run.is_dir():
        raise DataError(f"run directory {run} does not exist; pass a folder <snap>/<experiment>/<run> of a training run.")
    init_path, final_path = run / INIT_NAME, run / WEIGHTS_NAME
    if not init_path.is_file():
        raise DataError(f"{run} has no {INIT_NAME} (the PEFT weights at step 0, saved by the trainer before the "
                        "first step of a fresh run), so ΔW = W_t − W_0 cannot be computed; train the run again with "
                        "this version to analyse it.")
    if not final_path.is_file():
        raise DataError(f"{run} has no {WEIGHTS_NAME} yet (written at every checkpoint and at the end of training); "
                        "analyse the run after its first checkpoint.")
    rows = compute_deltas(init_path, final_path)
    out_dir = Path(out) if out is not None else run / "analysis"
    payloads = {"csv": format_csv(rows).encode(), "md": format_markdown(rows, str(run)).encode()}
    if plot:
        payloads["png"] = render_plot(rows, run.name)
    written = {kind: atomic_write_bytes(out_dir / OUTPUT_FILES[kind], data) for kind, data in payloads.items()}
    return rows, written


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m vlrouting analyze",
                                 description="Analyses of trained runs (paper Appendix B).")
    sub = ap.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    deltas = sub.add_parser("deltas", help="‖W_t − W_0‖_F of down- and up-projections per layer (Fig. B2)",
                            description="‖W_t − W_0‖_F of every PEFT down- and up-projection and their ratio, per "
                                        "layer (paper Fig. B2): deltas.csv, deltas.md, deltas.png.")
    deltas.add_argument("run", metavar="RUN", help="a run directory (<snap>/<experiment>/<run>)")
    deltas.add_argument("--out", help="output folder (default: RUN/analysis)")
    deltas.add_argument("--no-plot", action="store_true", help="skip deltas.png")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rows, written = analyze_deltas(args.run, args.out, plot=not args.no_plot)
    print(format_markdown(rows, args.run), end="")
    print(f"wrote {', '.join(str(p) for p in written.values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
