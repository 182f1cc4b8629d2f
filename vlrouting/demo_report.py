"""The block `make demo` prints at the end, rendered from the files the demo leaves in ``snap/demo/``.

One renderer serves both the demo's own output and the README's copy of it (between ``<!-- demo-output:begin -->``
and ``<!-- demo-output:end -->``), so the README block is never typed by hand and cannot drift from what the demo
prints: ``make demo-readme`` runs the demo, then ``python -m vlrouting demo-report snap/demo --readme README.md``.

Sources: ``results.md`` (the table of :mod:`vlrouting.aggregate`), ``baselines.json`` (:mod:`vlrouting.baselines`),
``stage_times.tsv`` (``name<TAB>seconds`` per stage, then ``total<TAB>seconds``, written by ``scripts/demo.sh``)
and the ``machine`` / ``world_size`` / ``git_commit`` fields of the runs' ``results.json``
(:mod:`vlrouting.machine`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vlrouting.errors import DataError

BEGIN = "<!-- demo-output:begin -->"
END = "<!-- demo-output:end -->"
OUTPUT_NAMES = ("results.md", "results.csv", "results.png", "baselines.json")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); run the demo first (make demo).") from None


def read_stage_times(path: Path) -> tuple[list[tuple[str, int]], int]:
    """``([(stage, seconds), ...], total_seconds)`` from ``stage_times.tsv``."""
    stages, total = [], None
    for n, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        name, sep, secs = line.rpartition("\t")
        if not sep or not secs.strip().isdigit():
            raise DataError(f"{path} line {n} is not 'stage<TAB>seconds': {line!r}; rerun the demo.")
        if name == "total":
            total = int(secs)
        else:
            stages.append((name, int(secs)))
    if total is None:
        raise DataError(f"{path} has no 'total' line (the demo did not finish); rerun the demo.")
    return stages, total


def read_runs(out_dir: Path) -> list[dict]:
    """The ``results.json`` of every run below ``out_dir`` (the demo's ``<experiment>/seed<k>/`` folders)."""
    runs = []
    for path in sorted(out_dir.glob("*/*/results.json")):
        try:
            runs.append(json.loads(_read(path)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON ({exc.msg}); rerun the demo.") from None
    if not runs:
        raise DataError(f"no <experiment>/<run>/results.json under {out_dir}; run the demo first (make demo).")
    return runs


def machine_lines(runs: list[dict]) -> list[str]:
    """One ``Machine:`` line when all runs agree (the usual case), one per distinct machine otherwise."""
    from vlrouting.machine import machine_line

    lines: list[str] = []
    for run in runs:
        info = run.get("machine")
        line = machine_line(info) if info else "Machine: not recorded (results.json written before this field)"
        ws = run.get("world_size", 1)
        line += f", {ws} training process{'es' if ws != 1 else ''}"
        if line not in lines:
            lines.append(line)
    return lines


def render(out_dir: str | Path) -> str:
    """The demo's closing block: machine, result table, blind baselines, stage times, output files."""
    from vlrouting.baselines import format_baselines

    out = Path(out_dir)
    table = _read(out / "results.md").rstrip("\n")
    try:
        baselines = json.loads(_read(out / "baselines.json"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{out / 'baselines.json'} is not valid JSON ({exc.msg}); rerun the demo.") from None
    stages, total = read_stage_times(out / "stage_times.tsv")
    lines = [*machine_lines(read_runs(out)), "", table, "", format_baselines(baselines, "test"), "",
             "Stage times (wall clock; they vary with the load):"]
    lines += [f"  {name:<42} {secs:4d}s" for name, secs in stages]
    lines.append(f"  {'total':<42} {total:4d}s")
    lines.append("Table, CSV, plot, baselines: " + " ".join(str(out / n) for n in OUTPUT_NAMES))
    return "\n".join(lines) + "\n"


def readme_section(out_dir: str | Path) -> str:
    """What goes between the README markers: where the block comes from, then the block in a code fence."""
    out = Path(out_dir)
    commits = sorted({str(r.get("git_commit") or "unknown")[:7] for r in read_runs(out)})
    return (f"Printed by `make demo` at commit {', '.join(f'`{c}`' for c in commits)} (written into this README by "
            f"`make demo-readme`, never by hand):\n\n```\n{render(out)}```\n")


def replace_between_markers(text: str, section: str, where: str = "README.md") -> str:
    """``text`` with everything between the begin and end markers replaced by ``section``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise DataError(f"{where} must contain '{BEGIN}' once, followed by '{END}' once; restore the markers around "
                        "the demo output block.")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{section}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlrouting demo-report",
                                description="Print the demo's closing block from its output folder, or write it "
                                            "into the README between the demo-output markers.")
    p.add_argument("out_dir", nargs="?", default="snap/demo", help="the demo's output folder (default snap/demo)")
    p.add_argument("--readme", help="rewrite the block between the markers of this file instead of printing it")
    args = p.parse_args(argv)
    if args.readme is None:
        print(render(args.out_dir), end="")
        return 0
    from vlrouting.fileio import atomic_write_text

    path = Path(args.readme)
    atomic_write_text(path, replace_between_markers(_read(path), readme_section(args.out_dir), str(path)))
    print(f"rewrote the demo block of {path} from {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
