"""The routing-functions paper's CLIP-BART numbers (Qu, Tuytelaars, Moens, ECCV 2024: Tables 7, 8, C7, A1) as data.

Every row of the paper's multitask CLIP-BART tables is one :class:`PaperRow`: VQAv2 accuracy, GQA accuracy,
NLVR² accuracy, COCO Caption CIDEr and their mean ("Avg."), all ×100 as printed, with the ± std where the paper
prints one (Table C7 only), the paper's own row label, the number of seeds behind the row, whether the row is a
baseline the paper quotes from another work, and the learning rate of Table A1 where the paper gives one.

Key scheme (the value of ``paper_row`` in an experiment config and in a run's ``results.json``)::

    <table>/<block>/<routing>

``table``   ``table7`` | ``table8`` | ``tablec7`` (Table C7 of the appendix).
``block``   ``single_lora`` | ``single_adapter`` (Tables 7 and C7, left and right halves);
            ``multiple_adapters`` (Table 8).
``routing`` the routing function by its registry name (``vlrouting.routing``; DESIGN §4):
            ``mul`` = x_t ∘ x'_v, ``add`` = x_t + x'_v, ``proj`` = x_t (x_v)ᵀ x_v, ``expand`` = x_t x''_v;
            ``comb1``–``comb4`` = the per-task mixes of Table 8; ``none`` = no routing function (the baseline).
            Table 7 prints two baselines per block: ``none`` is the "None [†]" row (VL-PET [11], mean of
            3 seeds; the same numbers as Table C7's "None†" row, whose stds are in ``tablec7/<block>/none``) and
            ``none_vladapter`` is the "None [‡]" row (VL-Adapter [37], 1 seed). Table 8's only baseline, "None [‡]"
            (VL-Adapter [37], caption says §), is ``table8/multiple_adapters/none``.

Faithfulness notes:
- Numbers are transcribed exactly as printed (VL-Adapter's quoted rows have one decimal, ``decimals=1``).
  Avg. is the mean of the four task columns up to the printed rounding (``tests/test_aggregate.py`` checks it).
- Table C7's caption and row label print ``x_v(x_v)ᵀx_v``; the text (Appendix C, footnote 11) says the row is
  x_t(x_v)ᵀx_v, so the key is ``proj``. Its means differ from Table 7's ``proj`` rows because Table 7 is one seed.
- Table A1's header writes x_t x'_v for the fourth function; Table 7/8 call it x_t x''_v (``expand``).
- None of Tables 7, 8, C7 prints a trainable-parameter column, so ``trainable_percent`` is ``None`` everywhere
  (routing adds no parameters; VL-Adapter's own counts are in DESIGN §5).
"""

from __future__ import annotations

from vlrouting.data.tasks.sets import TASK_SETS
from vlrouting.paper_results import THIS_PAPER, VL_ADAPTER, VL_PET, PaperRow

#: The columns of Tables 7, 8 and C7: the ``vl4`` task set's tasks in the paper's order, then their mean ``avg``
#: (column keys as :func:`vlrouting.data.tasks.report_columns` names them).
TASKS: tuple[str, ...] = TASK_SETS["vl4"].tasks
COLUMNS: tuple[str, ...] = TASKS + (TASK_SETS["vl4"].average_key,)


def _v(vqa: float, gqa: float, nlvr: float, caption: float, avg: float) -> dict[str, float]:
    return {"vqa": vqa, "gqa": gqa, "nlvr": nlvr, "caption": caption, "avg": avg}


def _pm(*pairs: tuple[float, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, std) pairs in column order -> (values, std) dicts."""
    return dict(zip(COLUMNS, (p[0] for p in pairs))), dict(zip(COLUMNS, (p[1] for p in pairs)))


_LABEL = {
    "mul": "x_t ∘ x'_v",
    "add": "x_t + x'_v",
    "proj": "x_t (x_v)ᵀ x_v",
    "expand": "x_t x''_v",
}
_UNIFORM = ("mul", "add", "proj", "expand")
_MIXES = {  # Table 8, routing function per task column (VQA, GQA, NLVR², COCO Cap.)
    "comb1": ("mul", "mul", "proj", "expand"),
    "comb2": ("add", "add", "proj", "expand"),
    "comb3": ("mul", "mul", "mul", "expand"),
    "comb4": ("add", "add", "mul", "expand"),
}


def _build() -> dict[str, PaperRow]:
    rows: list[PaperRow] = []
    t7_note = "bold/underline in the paper mark best/second-best per column among the routing rows"

    # ---- Table 7: single LoRA / single Adapter shared across the four tasks ------------------------------
    table7 = {
        "single_lora": ("Single LoRA", {
            "none": _v(65.15, 53.66, 72.58, 115.01, 76.60),
            "none_vladapter": _v(65.2, 53.6, 71.9, 115.3, 76.5),
            "mul": _v(65.68, 53.90, 73.96, 113.63, 76.79),
            "add": _v(65.23, 53.45, 73.25, 115.54, 76.87),
            "proj": _v(65.00, 53.21, 73.88, 117.43, 77.38),
            "expand": _v(64.84, 52.72, 73.46, 119.53, 77.64),
        }),
        "single_adapter": ("Single Adapter", {
            "none": _v(65.76, 54.16, 73.19, 114.61, 76.93),
            "none_vladapter": _v(65.9, 54.5, 74.2, 114.9, 77.4),
            "mul": _v(65.70, 54.18, 74.47, 114.02, 77.09),
            "add": _v(65.81, 53.63, 73.99, 113.69, 76.78),
            "proj": _v(65.77, 54.14, 74.29, 117.99, 78.05),
            "expand": _v(65.82, 53.37, 72.33, 118.94, 77.62),
        }),
    }
    for block, (block_title, by_routing) in table7.items():
        for routing, values in by_routing.items():
            key = f"table7/{block}/{routing}"
            if routing == "none":
                rows.append(PaperRow(key, "Table 7", block_title, "None [†]", "none", values, n_seeds=3,
                                     source=VL_PET, baseline=True,
                                     note=f"mean of 3 seeds (footnote 11); stds in tablec7/{block}/none"))
            elif routing == "none_vladapter":
                rows.append(PaperRow(key, "Table 7", block_title, "None [‡]", "none", values, decimals=1,
                                     n_seeds=1, source=VL_ADAPTER, baseline=True, note="1 seed (footnote 11)"))
            else:
                rows.append(PaperRow(key, "Table 7", block_title, _LABEL[routing], routing, values, lr=1e-3,
                                     note=t7_note))

    # ---- Table 8: multiple Adapters (one per task), uniform routing or a per-task mix ----------------------
    t8 = {
        "none": _v(65.4, 54.0, 69.8, 114.3, 75.9),
        "mul": _v(65.61, 53.51, 70.78, 113.72, 75.91),
        "add": _v(65.19, 53.84, 70.99, 115.64, 76.42),
        "proj": _v(64.93, 52.11, 70.25, 116.20, 75.87),
        "expand": _v(65.32, 52.67, 70.58, 117.92, 76.62),
        "comb1": _v(66.37, 54.21, 69.27, 116.94, 76.70),
        "comb2": _v(65.14, 53.37, 70.88, 117.58, 76.74),
        "comb3": _v(66.34, 53.77, 70.02, 117.73, 76.97),
        "comb4": _v(65.47, 52.99, 71.01, 118.34, 76.95),
    }
    t8_lr = {"mul": 3e-4, "add": 3e-4, "proj": 3e-4, "expand": 3e-4,
             "comb1": 1e-3, "comb2": 3e-4, "comb3": 1e-3, "comb4": 3e-4}
    for routing, values in t8.items():
        key = f"table8/multiple_adapters/{routing}"
        if routing == "none":
            rows.append(PaperRow(key, "Table 8", "Multiple Adapters", "None [‡]", "none", values, decimals=1,
                                 n_seeds=1, source=VL_ADAPTER, baseline=True,
                                 routing_per_task=dict.fromkeys(TASKS, "none"),
                                 note="the caption marks the quoted baseline §, the row ‡; both mean [37]"))
        elif routing in _MIXES:
            rows.append(PaperRow(key, "Table 8", "Multiple Adapters", routing, routing, values, lr=t8_lr[routing],
                                 routing_per_task=dict(zip(TASKS, _MIXES[routing]))))
        else:
            rows.append(PaperRow(key, "Table 8", "Multiple Adapters", _LABEL[routing], routing, values,
                                 lr=t8_lr[routing], routing_per_task=dict.fromkeys(TASKS, routing)))

    # ---- Table C7: mean ± std over three runs (the seeds of [11]) -----------------------------------------
    c7 = {
        "single_lora": ("Single LoRA", {
            "none": _pm((65.15, 0.16), (53.66, 0.84), (72.58, 0.73), (115.01, 0.26), (76.60, 0.32)),
            "proj": _pm((64.94, 0.09), (53.56, 0.31), (73.60, 0.36), (117.80, 0.34), (77.48, 0.11)),
        }),
        "single_adapter": ("Single Adapter", {
            "none": _pm((65.76, 0.28), (54.16, 0.44), (73.19, 0.71), (114.61, 0.26), (76.93, 0.25)),
            "proj": _pm((65.84, 0.32), (53.65, 0.47), (74.31, 0.09), (117.65, 0.39), (77.87, 0.18)),
        }),
    }
    for block, (block_title, by_routing) in c7.items():
        for routing, (values, std) in by_routing.items():
            key = f"tablec7/{block}/{routing}"
            if routing == "none":
                rows.append(PaperRow(key, "Table C7", block_title, "None†", "none", values, std=std, n_seeds=3,
                                     source=VL_PET, baseline=True))
            else:
                rows.append(PaperRow(key, "Table C7", block_title, "x_v(x_v)ᵀ x_v", "proj", values, std=std,
                                     n_seeds=3, lr=1e-3,
                                     note="printed x_v(x_v)ᵀx_v; the text says x_t(x_v)ᵀx_v; same seeds as [11]"))
    return {row.key: row for row in rows}


#: Every row of Tables 7, 8 and C7, keyed by ``paper_row``, in the paper's order (Table 7 LoRA, Adapter; 8; C7).
ROWS: dict[str, PaperRow] = _build()
