"""The papers' printed numbers as data, one module per setting, and the ``paper_row`` lookup.

A :class:`PaperRow` is one printed row of a table: the values of the columns its table has (column keys as
:func:`vlrouting.data.tasks.report_columns` names them, so ``aggregate`` puts them under our own columns), ± std
where printed, the paper's label, the seeds behind it, whether it is a baseline quoted from another work, and the
learning rate where the paper gives one. Improvements over a baseline are never stored: they are derived from the
values (several printed deltas of the routing-functions paper are arithmetic slips).

Modules (each defines ``ROWS: dict[str, PaperRow]`` in its table order; the key is the configs' ``paper_row``):
``clip_bart`` — Tables 7, 8, C7 (CLIP-BART, four tasks); ``vladapter`` — VL-Adapter's Table 1 rows for the
baselines Tables 7/8 do not quote (Compacter, Hyperformer, half-shared adapters, prompt tuning); ``vit_roberta`` —
Tables 1, 2, 3, B4 (ViT+RoBERTa, VQAv2); ``ablations`` — Tables 6 and B2 of the ViT families (and Table B3's
inference times as plain data); ``vit_gpt2`` — Tables 4, B5 (ViT+GPT-2 COCO captions); ``petal`` — PETAL's
Tables 1, 2, 4 (InstructBLIP: ``context_only``, never beside our runs).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from vlrouting.errors import ConfigError

#: The modules holding paper rows, in the order their tables appear.
ROW_MODULES: tuple[str, ...] = ("vlrouting.paper_results.clip_bart", "vlrouting.paper_results.vladapter",
                                 "vlrouting.paper_results.vit_roberta", "vlrouting.paper_results.ablations",
                                 "vlrouting.paper_results.vit_gpt2", "vlrouting.paper_results.petal")

THIS_PAPER = "this paper"
VL_PET = "quoted from VL-PET [11]"
VL_ADAPTER = "quoted from VL-Adapter [37]"


@dataclass(frozen=True)
class PaperRow:
    """One printed row of a paper table."""

    key: str
    table: str  # "Table 7", "Table 8", "Table C7", ...
    block: str  # the table half / setting as printed: "Single LoRA", "Single Adapter", "Multiple Adapters"
    label: str  # the paper's own row label (routing formula, combN or "None [†]")
    routing: str  # registry name: none, mul, add, proj, expand, comb1..comb4
    values: dict[str, float]  # column key → number as printed (e.g. vqa, gqa, nlvr, caption, avg ×100)
    std: dict[str, float] | None = None  # same keys; only where the paper prints ± std
    decimals: int = 2  # digits after the point as printed
    n_seeds: int = 1
    source: str = THIS_PAPER
    baseline: bool = False  # True for rows quoted from another work
    lr: float | None = None  # Table A1 (None where the paper gives none: quoted baselines)
    routing_per_task: dict[str, str] | None = None  # Table 8's check-mark / combination columns
    trainable_percent: float | None = None  # not printed in Tables 7, 8, C7
    note: str = ""
    column_decimals: dict[str, int] | None = None  # per-column digits where a row mixes them (Tables 4, 6)
    context_only: bool = False  # another setting (backbone, datasets): shown for context, keyed by its own columns

    def format(self, column: str, with_std: bool = True) -> str:
        """The cell as the paper prints it, e.g. ``65.76`` or ``65.76 ± 0.28``; ``""`` for a missing column."""
        value = self.values.get(column)
        if value is None:
            return ""
        digits = self.digits(column)
        text = f"{value:.{digits}f}"
        if with_std and self.std and column in self.std:
            text += f" ± {self.std[column]:.{digits}f}"
        return text

    def digits(self, column: str) -> int:
        """Digits after the point of ``column`` as printed."""
        return (self.column_decimals or {}).get(column, self.decimals)

    def to_dict(self) -> dict:
        return {
            "key": self.key, "table": self.table, "block": self.block, "label": self.label,
            "routing": self.routing, "values": dict(self.values), "std": dict(self.std) if self.std else None,
            "decimals": self.decimals, "n_seeds": self.n_seeds, "source": self.source, "baseline": self.baseline,
            "lr": self.lr, "routing_per_task": dict(self.routing_per_task) if self.routing_per_task else None,
            "trainable_percent": self.trainable_percent, "note": self.note,
            "column_decimals": dict(self.column_decimals) if self.column_decimals else None,
            "context_only": self.context_only,
        }




def _collect() -> dict[str, PaperRow]:
    rows: dict[str, PaperRow] = {}
    for name in ROW_MODULES:
        for key, row in importlib.import_module(name).ROWS.items():
            if key in rows:
                raise ValueError(f"paper_row '{key}' is defined twice")
            rows[key] = row
    return rows


class _LazyRows(dict):
    """The rows of every module, loaded on first use (the modules import this one for :class:`PaperRow`)."""

    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            dict.update(self, _collect())

    def __getitem__(self, key):
        self._load()
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self._load()
        return super().__contains__(key)

    def __iter__(self):
        self._load()
        return super().__iter__()

    def __len__(self) -> int:
        self._load()
        return super().__len__()

    def get(self, key, default=None):
        self._load()
        return super().get(key, default)

    def items(self):
        self._load()
        return super().items()

    def values(self):
        self._load()
        return super().values()

    def keys(self):
        self._load()
        return super().keys()


#: Every row of every module, keyed by ``paper_row``.
PAPER_ROWS: dict[str, PaperRow] = _LazyRows()


def paper_row_keys() -> list[str]:
    """All known ``paper_row`` keys in the papers' order."""
    return list(PAPER_ROWS)


def get_paper_row(key: str) -> PaperRow:
    """The row for ``key``; a :class:`ConfigError` naming the valid keys if there is none."""
    try:
        return PAPER_ROWS[key]
    except KeyError:
        raise ConfigError(f"unknown paper_row '{key}'; use one of: {', '.join(PAPER_ROWS)}.") from None


def find_paper_row(key: str | None) -> PaperRow | None:
    """The row for ``key``, or ``None`` for an empty or unknown key (for tools that only annotate)."""
    return PAPER_ROWS.get(key) if key else None


def __getattr__(name: str):
    """``TASKS`` / ``COLUMNS`` of Tables 7, 8, C7 (kept importable from here)."""
    if name in ("TASKS", "COLUMNS"):
        from vlrouting.paper_results import clip_bart

        return getattr(clip_bart, name)
    raise AttributeError(name)
