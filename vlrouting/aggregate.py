"""``python -m vlrouting aggregate``: mean ± std over seeds in the paper's layout, beside the paper's numbers.

Collects every ``results.json`` below the given snap directories (``snap/<experiment>/<run>/results.json``, written
by the trainer; DESIGN §7), groups the runs by configuration and writes, with the columns the runs' tasks define
(:func:`vlrouting.data.tasks.report_columns`: each task's columns, then its task set's average — for the CLIP-BART
benchmark the paper's VQA, GQA, NLVR², COCO CIDEr, Avg of Tables 7, 8, C7), then seeds and trainable %:

- ``results.md``  — the Markdown table also printed on stdout; under each configuration a second line with the
  paper's numbers for its ``paper_row`` (:mod:`vlrouting.paper_results`), then every missing or failed run;
- ``results.csv`` — one line per configuration, our mean/std/n per column, then the paper's columns;
- ``results.png`` — one panel per column, one bar per configuration, sample-std error bars, paper values as ticks.

Statistics: mean and sample standard deviation (ddof=1) over the runs of a group. A group with one run shows the
mean alone and ``n=1`` (no std is invented). An average column (Avg of the four CLIP-BART tasks) exists only for
runs that have every task of its set. Runs without ``results.json`` or whose ``status`` is not ``"completed"`` are listed by
path and reason, never silently dropped. A number that averages fewer metrics than usual because one is unavailable
(the caption ``Avg`` without SPICE, named by ``Avg_metrics``) gets a note. Outputs are written atomically (temporary
file + rename).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from vlrouting.fileio import atomic_write_bytes
from vlrouting.errors import ConfigError, DataError
from vlrouting.data.tasks import TableColumn, default_tasks, report_columns, table_values, task_set_of
from vlrouting.paper_results import find_paper_row

RESULTS_FILE = "results.json"
#: Files that mark a directory as a run directory even before results.json exists (the trainer's outputs).
RUN_MARKERS = frozenset({"config.yaml", "metrics.jsonl", "training_state.pt", "log.txt",
                         "adapter_model.safetensors", "adapter_config.json"})
#: Our own outputs; a folder holding only these is not an unfinished run.
OUTPUT_FILES = {"md": "results.md", "csv": "results.csv", "png": "results.png"}
GROUP_BY_CHOICES = ("config_name", "experiment", "paper_row")
_ERROR_FIELDS = ("error", "message", "reason", "traceback")


@dataclass(frozen=True)
class Run:
    """One completed run: its directory, the parsed results.json and its headline numbers per column."""

    path: Path
    data: dict
    values: dict[str, float]  # column key → number (vlrouting.data.tasks.table_values)

    @property
    def seed(self) -> Any:
        return self.data.get("seed")

    @property
    def paper_row(self) -> str | None:
        return self.data.get("paper_row") or None

    @property
    def trainable_percent(self) -> float | None:
        params = self.data.get("params") or {}
        if not isinstance(params, dict):
            return None
        if _is_number(params.get("percent")):
            return float(params["percent"])
        if _is_number(params.get("trainable")) and _is_number(params.get("total")) and params["total"]:
            return 100.0 * params["trainable"] / params["total"]
        return None

    def group_name(self, group_by: str = "config_name") -> str:
        for key in (group_by, "config_name", "experiment"):
            value = self.data.get(key)
            if value not in (None, ""):
                return str(value)
        return self.path.parent.name or str(self.path)


@dataclass(frozen=True)
class Problem:
    """A run that is not in the tables, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


# ---------------------------------------------------------------------------------------------------- collect
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _headline_values(data: dict) -> dict[str, float]:
    summary = data.get("summary") if isinstance(data.get("summary"), dict) else {}
    test = data.get("test") if isinstance(data.get("test"), dict) else {}
    return table_values({t: m for t, m in test.items() if isinstance(m, dict)}, summary)


def _load_run(run_dir: Path) -> Run | Problem:
    path = run_dir / RESULTS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Problem(run_dir, f"unreadable results.json ({exc}); re-run the evaluation or delete the file")
    if not isinstance(data, dict):
        return Problem(run_dir, "results.json does not hold a JSON object; re-run the evaluation or delete it")
    status = data.get("status")
    if status != "completed":
        message = next((str(data[k]).strip().splitlines()[-1] for k in _ERROR_FIELDS
                        if data.get(k) and str(data[k]).strip()), "")
        reason = f"status={status}" if status is not None else "no status in results.json (expected 'completed')"
        return Problem(run_dir, f"{reason}: {message}" if message else reason)
    values = _headline_values(data)
    if not values:
        return Problem(run_dir, "results.json has status=completed but no headline numbers in 'summary' or 'test'")
    return Run(run_dir, data, values)


def _unfinished_reason(here: Path, dirnames: list[str], filenames: list[str], is_root: bool) -> str | None:
    """Why ``here`` (a folder without results.json) counts as a run that did not finish; None if it is no run."""
    if RUN_MARKERS.intersection(filenames):
        return "no results.json (unfinished or crashed)"
    if dirnames or is_root:  # an experiment folder or the snap root
        return None
    files = [f for f in filenames if not f.startswith(".")]
    if any(f in OUTPUT_FILES.values() for f in files):  # an old aggregate output folder
        return None
    return "no results.json (unfinished or crashed)" if files else "empty directory, no results.json (unfinished or crashed)"


def collect_runs(paths: Iterable[str | os.PathLike]) -> tuple[list[Run], list[Problem]]:
    """Every run below ``paths`` (recursively): completed runs, and the unfinished or failed ones with a reason.

    A folder holding ``results.json`` is a run (its subfolders are not searched). A folder without it is an
    unfinished run when it holds the trainer's files (config.yaml, metrics.jsonl, ...) or is an empty leaf.
    A path that does not exist or is not a directory raises :class:`DataError`.
    """
    runs: list[Run] = []
    problems: list[Problem] = []
    seen: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise DataError(f"snap directory '{given}' does not exist; pass a folder that holds "
                            "<experiment>/<run>/results.json (e.g. snap/ or snap/<experiment>).")
        if not root.is_dir():
            raise DataError(f"'{given}' is not a directory; pass a snap folder that holds "
                            "<experiment>/<run>/results.json (e.g. snap/ or snap/<experiment>).")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
            here = Path(dirpath)
            if RESULTS_FILE in filenames:
                dirnames[:] = []
                key = here.resolve()
                if key in seen:
                    continue
                seen.add(key)
                loaded = _load_run(here)
                (runs if isinstance(loaded, Run) else problems).append(loaded)
                continue
            reason = _unfinished_reason(here, dirnames, filenames, is_root=(here == root))
            if reason is not None:
                dirnames[:] = []
                key = here.resolve()
                if key not in seen:
                    seen.add(key)
                    problems.append(Problem(here, reason))
    return runs, problems


# -------------------------------------------------------------------------------------------------- aggregate
def _stats(values: list[float]) -> dict[str, Any]:
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": sum(values) / n, "std": statistics.stdev(values) if n > 1 else None, "n": n}


def _seed_sort_key(seed: Any) -> tuple:
    return (0, seed, "") if _is_number(seed) else (1, 0, str(seed))


def aggregate_runs(runs: Iterable[Run], group_by: str = "config_name") -> list[dict]:
    """One row per group (sorted by name): ``{col: {"mean", "std", "n"}}`` for every column, seeds, paper row.

    ``group_by`` is a results.json field (``config_name`` by default; ``experiment``, ``paper_row``); a run
    lacking it falls back to ``config_name``, then ``experiment``, then its parent folder's name.
    Row keys: group, group_by, n, seeds, runs, experiments, one per column key (``columns``: the table's
    :class:`~vlrouting.data.tasks.TableColumn` list, shared by every row), trainable_percent, trainable, paper_row,
    paper (a :class:`vlrouting.paper_results.PaperRow` or None), notes.
    """
    if group_by not in GROUP_BY_CHOICES:
        raise ConfigError(f"unknown --group-by '{group_by}'; use one of: {', '.join(GROUP_BY_CHOICES)}.")
    runs = list(runs)
    columns = table_columns(runs)
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group_name(group_by), []).append(run)
    rows = []
    for name in sorted(groups):
        members = sorted(groups[name], key=lambda r: (_seed_sort_key(r.seed), str(r.path)))
        notes: list[str] = []
        row: dict[str, Any] = {"group": name, "group_by": group_by, "n": len(members),
                               "seeds": [r.seed for r in members], "runs": [str(r.path) for r in members],
                               "experiments": sorted({str(r.data.get("experiment") or r.path.parent.name)
                                                      for r in members})}
        row["columns"] = columns
        for col in columns:
            row[col.key] = _stats([r.values[col.key] for r in members if col.key in r.values])
        row["trainable_percent"] = _stats([p for p in (r.trainable_percent for r in members) if p is not None])
        trainable = {(r.data.get("params") or {}).get("trainable") for r in members if isinstance(r.data.get("params"), dict)}
        row["trainable"] = trainable.pop() if len(trainable) == 1 else None
        if len(trainable) > 1:
            notes.append("trainable-parameter counts differ between runs")

        paper_rows = sorted({r.paper_row for r in members if r.paper_row})
        row["paper_row"] = paper_rows[0] if len(paper_rows) == 1 else None
        row["paper"] = find_paper_row(row["paper_row"])
        if len(paper_rows) > 1:
            notes.append(f"runs name different paper rows ({', '.join(paper_rows)}); no paper numbers shown")
        elif row["paper_row"] and row["paper"] is None:
            notes.append(f"paper_row '{row['paper_row']}' is not in vlrouting.paper_results; no paper numbers shown")
        elif row["paper"] is not None and row["paper"].context_only:
            notes.append(f"paper_row '{row['paper_row']}' is context from another setting ({row['paper'].source}); "
                         "not shown beside these runs")
            row["paper"] = None
        seeds = [s for s in row["seeds"] if s is not None]
        dupes = sorted({s for s in seeds if seeds.count(s) > 1}, key=_seed_sort_key)
        if dupes:
            notes.append(f"seed {', '.join(map(str, dupes))} appears in several runs (same run copied twice?)")
        if any(s is None for s in row["seeds"]):
            notes.append("some runs record no seed")
        notes += _partial_average_notes(columns, members)
        row["notes"] = notes
        rows.append(row)
    return rows


def _partial_average_notes(columns: list[TableColumn], members: list[Run]) -> list[str]:
    """A metrics dict may name what one of its numbers averages (``<name>_metrics``, e.g. a caption ``Avg`` taken
    without an unavailable SPICE); say so whenever a metric the run reports as unavailable (null) is left out."""
    notes: list[str] = []
    for col in columns:
        if col.task is None or not col.path:
            continue
        seen: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
        for run in members:
            node: Any = (run.data.get("test") or {}).get(col.task)
            for part in col.path[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict) or not isinstance(node.get(f"{col.path[-1]}_metrics"), list):
                continue
            names = tuple(str(n) for n in node[f"{col.path[-1]}_metrics"])
            missing = tuple(k for k, v in node.items() if v is None and k not in names)
            if missing and (names, missing) not in seen:
                seen.add((names, missing))
                notes.append(f"{col.title} is the mean of {', '.join(names)} only ({', '.join(missing)} unavailable)")
    return notes


def table_columns(runs: Iterable[Run]) -> list[TableColumn]:
    """The columns of a table over ``runs``: those of every task any run reports, then the set average."""
    from vlrouting.data.tasks import TASKS

    tasks: list[str] = []
    for run in runs:
        for key in [*(run.data.get("tasks") or []), *(run.data.get("test") or {}), *(run.data.get("summary") or {})]:
            if key in TASKS and key not in tasks:
                tasks.append(key)
    return report_columns(tasks or default_tasks())


def _columns(rows: list[dict]) -> list[TableColumn]:
    return rows[0]["columns"] if rows else report_columns(default_tasks())


def _table_note(columns: list[TableColumn]) -> str:
    task_set = task_set_of({c.task for c in columns if c.task})
    note = task_set.table_note if task_set is not None and task_set.table_note else "Metrics ×100."
    return note + " " if note else ""


# ----------------------------------------------------------------------------------------------------- format
def _fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def format_cell(stats: dict, group_n: int) -> str:
    """``61.00 ± 1.00``; one value: ``61.00``; fewer values than the group has runs: ``(n=k)`` appended."""
    if not stats or stats.get("n", 0) == 0 or stats.get("mean") is None:
        return ""
    text = _fmt(stats["mean"])
    if stats.get("std") is not None:
        text += f" ± {_fmt(stats['std'])}"
    if stats["n"] != group_n:
        text += f" (n={stats['n']})"
    return text


def _seeds_text(row: dict) -> str:
    seeds = ", ".join("?" if s is None else str(s) for s in row["seeds"])
    return f"n={row['n']} ({seeds})"


def _trainable_text(row: dict) -> str:
    stats = row["trainable_percent"]
    if not stats["n"]:
        return ""
    return f"{stats['mean']:.2f}" + (f" ± {stats['std']:.2f}" if stats["std"] else "")


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def format_markdown(rows: list[dict], problems: list[Problem]) -> str:
    """The Markdown report: the table (our line, then the paper's line per configuration) and every problem."""
    columns = _columns(rows)
    headers = ["Configuration"] + [c.title for c in columns] + ["Seeds", "Trainable %"]
    lines = [
        "Mean ± sample std (ddof=1) over seeds; with one seed the mean alone (n=1). "
        + _table_note(columns) + "↳ lines: the paper's numbers for the configuration's paper_row.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(columns) + ["---", "---:"]) + "|",
    ]
    notes: list[str] = []
    for row in rows:
        cells = [f"**{_md_escape(row['group'])}**"] + [format_cell(row[c.key], row["n"]) for c in columns]
        cells += [_seeds_text(row), _trainable_text(row)]
        lines.append("| " + " | ".join(cells) + " |")
        paper = row.get("paper")
        if paper is not None:
            quoted = f", {paper.source}" if paper.baseline else ""
            label = f"↳ paper `{paper.key}` ({paper.table}, {paper.label}{quoted})"
            pcells = [_md_escape(label)] + [paper.format(c.key) for c in columns]
            pcells += [f"n={paper.n_seeds}", "" if paper.trainable_percent is None else f"{paper.trainable_percent:.2f}"]
            lines.append("| " + " | ".join(pcells) + " |")
        notes += [f"- {row['group']}: {note}" for note in row.get("notes", [])]
    if not rows:
        lines.append("| (no completed runs) |" + " |" * (len(headers) - 1))
    if notes:
        lines += ["", "Notes:"] + notes
    lines += [""]
    if problems:
        lines.append(f"Missing or failed runs ({len(problems)}), not in the table:")
        lines += [f"- {_md_escape(str(p))}" for p in problems]
    else:
        lines.append("Missing or failed runs: none.")
    return "\n".join(lines) + "\n"


def format_csv(rows: list[dict]) -> str:
    """One line per configuration: our mean/std/n per column, seeds, trainable %, then the paper's columns."""
    columns = [c.key for c in _columns(rows)]
    header = ["configuration"]
    for col in columns:
        header += [f"{col}_mean", f"{col}_std", f"{col}_n"]
    header += ["n_seeds", "trainable_percent", "paper_row"]
    for col in columns:
        header += [f"paper_{col}", f"paper_{col}_std"]
    header += ["paper_n_seeds", "paper_source", "seeds", "runs"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)

    def num(x: float | None) -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}".rstrip("0").rstrip(".")

    for row in rows:
        line = [row["group"]]
        for col in columns:
            stats = row[col]
            line += [num(stats["mean"]), num(stats["std"]), stats["n"] or ""]
        line += [row["n"], num(row["trainable_percent"]["mean"]), row.get("paper_row") or ""]
        paper = row.get("paper")
        for col in columns:
            if paper is None:
                line += ["", ""]
            else:
                std = paper.std.get(col) if paper.std else None
                line += [paper.format(col, with_std=False), "" if std is None else f"{std:.{paper.digits(col)}f}"]
        line += ["" if paper is None else paper.n_seeds, "" if paper is None else paper.source,
                 ";".join("" if s is None else str(s) for s in row["seeds"]), ";".join(row["runs"])]
        writer.writerow(line)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------ write
def render_plot(rows: list[dict]) -> bytes:
    """PNG bytes: one panel per column, one bar per configuration, std error bars, the paper's value as a tick."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg without touching pyplot's global backend
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    all_columns = _columns(rows)
    titles = {c.key: c.title for c in all_columns}
    cols = [c.key for c in all_columns if any(r[c.key]["n"] for r in rows)] or list(titles)
    n_groups = max(len(rows), 1)
    width = min(40.0, max(10.0, len(cols) * (1.2 + 0.3 * n_groups)))
    legend_in = 0.3 + 0.18 * math.ceil((n_groups + 1) / 3)  # room below the panels for the legend
    fig = Figure(figsize=(width, 3.6 + legend_in))
    FigureCanvasAgg(fig)
    colors = [f"C{i % 10}" for i in range(n_groups)]
    axes = fig.subplots(1, len(cols), squeeze=False)[0]
    paper_drawn = False
    for ax, col in zip(axes, cols):
        lows, highs = [], []
        for i, row in enumerate(rows):
            stats = row[col]
            if stats["n"]:
                std = stats["std"] or 0.0
                ax.bar(i, stats["mean"], color=colors[i], width=0.8,
                       yerr=std if stats["std"] is not None else None, capsize=3, error_kw={"elinewidth": 1})
                lows.append(stats["mean"] - std)
                highs.append(stats["mean"] + std)
            paper = row.get("paper")
            if paper is not None and paper.values.get(col) is not None:
                ax.plot([i - 0.4, i + 0.4], [paper.values[col]] * 2, color="black", linewidth=2)
                paper_drawn = True
                lows.append(paper.values[col])
                highs.append(paper.values[col])
        if lows:
            span = max(highs) - min(lows)
            pad = max(span * 0.25, 0.5)
            ax.set_ylim(min(lows) - pad, max(highs) + pad)
        ax.set_title(titles[col])
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([str(i + 1) for i in range(len(rows))], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=colors[i], label=f"{i + 1}. {row['group']}") for i, row in enumerate(rows)]
    if paper_drawn:
        handles.append(Line2D([], [], color="black", linewidth=2, label="paper"))
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles) or 1), fontsize=8, frameon=False)
    fig.suptitle("mean ± sample std over seeds (no error bar: one seed); black tick: the paper's number")
    fig.tight_layout(rect=(0, legend_in / (3.6 + legend_in), 1, 0.95))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_outputs(rows: list[dict], problems: list[Problem], out_dir: str | os.PathLike,
                  plot: bool = True) -> dict[str, Path]:
    """Write results.md, results.csv (and results.png) into ``out_dir`` atomically; return their paths by kind."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create output directory '{out}' ({exc.strerror}); pass a writable --out.") from None
    written: dict[str, Path] = {}
    payloads = {"md": format_markdown(rows, problems).encode("utf-8"), "csv": format_csv(rows).encode("utf-8")}
    if plot:
        payloads["png"] = render_plot(rows)
    for kind, data in payloads.items():
        path = out / OUTPUT_FILES[kind]
        atomic_write_bytes(path, data)
        written[kind] = path
    return written


# ------------------------------------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m vlrouting aggregate",
        description="Mean ± std over seeds of every run below SNAP_DIR (results.md, results.csv, results.png), "
                    "beside the paper's numbers.")
    ap.add_argument("snap_dirs", nargs="+", metavar="SNAP_DIR", help="folders searched recursively for results.json")
    ap.add_argument("--out", help="output folder (default: the first SNAP_DIR)")
    ap.add_argument("--group-by", default="config_name", choices=GROUP_BY_CHOICES,
                    help="results.json field that defines a configuration (default: config_name)")
    ap.add_argument("--no-plot", action="store_true", help="skip results.png")
    ap.add_argument("--strict", action="store_true", help="exit 1 when any run is missing or failed")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    runs, problems = collect_runs(args.snap_dirs)
    where = ", ".join(f"'{p}'" for p in args.snap_dirs)
    if not runs:
        for problem in problems:
            print(f"not finished: {problem}", file=sys.stderr)
        if problems:
            raise DataError(f"no completed runs under {where}: the {len(problems)} run(s) listed above are "
                            "unfinished or failed; let them finish or re-run them.")
        raise DataError(f"no runs under {where}: no <experiment>/<run>/results.json found; train first "
                        "(python -m vlrouting train --config NAME) or pass the snap folder that holds the runs.")
    rows = aggregate_runs(runs, group_by=args.group_by)
    print(format_markdown(rows, problems), end="")
    written = write_outputs(rows, problems, args.out or args.snap_dirs[0], plot=not args.no_plot)
    print(f"wrote {', '.join(str(p) for p in written.values())}", file=sys.stderr)
    return 1 if (args.strict and problems) else 0


if __name__ == "__main__":
    sys.exit(main())
