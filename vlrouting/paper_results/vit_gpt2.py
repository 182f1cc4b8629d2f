"""The routing-functions paper's ViT+GPT-2 COCO captioning numbers (Qu, Tuytelaars, Moens, ECCV 2024: Table 4 and
Appendix Table B5) as data.

Columns (keys of :meth:`vlrouting.data.tasks.coco_lm.CocoLMTask.columns`, all ×100 as printed): ``coco_lm.BLEU-4``,
``coco_lm.METEOR``, ``coco_lm.ROUGE-L``, ``coco_lm`` (CIDEr, the headline), ``coco_lm.SPICE``, ``coco_lm.Avg`` (the
mean of the five; metrics are printed with one decimal, Avg with two).

Key scheme (the value of ``paper_row`` in an experiment config)::

    table4/<peft>_r<r>/<routing>      peft ∈ lora | adapter, r ∈ 64 | 128       (GPT-2 base + ViT-B/16)
    tableb5/<backbones>/<routing>     backbones ∈ gpt2_base | gpt2_medium      (Adapter r = 64; gpt2_medium
                                                                                pairs with ViT-L/16)

``routing`` is the registry name (``vlrouting.routing``): ``none``, ``mul`` = x_t ∘ x'_v, ``add`` = x_t + x'_v,
``proj`` = x_t (x_v)ᵀ x_v, ``expand`` = x_t x''_v.

Faithfulness notes:
- Row labels are stored as printed. Both tables label the x_t x''_v row "x_t x'_v" (the routing in the released
  code is ``--element_mul_expand``, i.e. x''_v; reference/routing_official_spec.md §6.21); Table 4 also labels
  x_t (x_v)ᵀ x_v as "x_t(x'_v)ᵀ x_v".
- Improvements over ``none`` are not stored: derive them from the values. Six printed deltas are arithmetic slips
  (:data:`PRINTED_DELTA_SLIPS`; seven entries, Table B5 repeating one of Table 4's) — every other printed delta is
  exactly the difference of the printed values; every printed Avg equals the mean of its five metrics up to rounding.
- Table B5's GPT-2 base half repeats Table 4's Adapter r = 64 rows number for number (slip included).
- No trainable-parameter column is printed for Tables 4/B5 (our exact counts: README, ``python -m vlrouting params``).
"""

from __future__ import annotations

from vlrouting.paper_results import THIS_PAPER, PaperRow

TASK = "coco_lm"
#: Column keys in Table 4's order.
COLUMNS: tuple[str, ...] = (f"{TASK}.BLEU-4", f"{TASK}.METEOR", f"{TASK}.ROUGE-L", TASK, f"{TASK}.SPICE",
                            f"{TASK}.Avg")
ROUTINGS = ("none", "mul", "add", "proj", "expand")

#: (table key, printed values per routing in ROUTINGS order: BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE, Avg).
_TABLES: dict[tuple[str, str], tuple[tuple[float, ...], ...]] = {
    ("table4", "lora_r64"): ((18.3, 17.4, 36.8, 55.8, 11.8, 28.02), (26.1, 23.7, 48.6, 88.7, 17.3, 40.88),
                             (22.2, 20.3, 41.0, 73.5, 14.8, 34.36), (24.8, 22.6, 45.4, 84.9, 16.8, 38.90),
                             (23.9, 21.9, 43.9, 80.5, 16.2, 37.28)),
    ("table4", "lora_r128"): ((21.0, 20.9, 43.4, 70.3, 14.7, 34.06), (25.4, 23.7, 48.2, 87.9, 17.7, 40.58),
                              (25.4, 23.1, 47.1, 87.1, 17.0, 39.94), (24.9, 22.7, 45.4, 83.8, 16.9, 38.74),
                              (25.5, 22.9, 46.0, 85.2, 17.2, 39.36)),
    ("table4", "adapter_r64"): ((15.9, 18.5, 37.0, 61.6, 14.1, 29.42), (24.6, 23.1, 46.4, 84.5, 17.2, 39.16),
                                (21.0, 21.5, 42.4, 75.0, 16.0, 35.18), (26.1, 23.2, 46.9, 85.4, 17.3, 39.78),
                                (26.6, 23.0, 46.8, 85.8, 17.2, 39.88)),
    ("table4", "adapter_r128"): ((16.1, 18.4, 36.2, 61.5, 13.9, 29.22), (23.6, 22.6, 44.8, 82.8, 17.1, 38.18),
                                 (19.3, 20.8, 40.9, 75.2, 16.2, 34.48), (24.1, 22.4, 44.2, 82.7, 16.9, 38.06),
                                 (26.0, 23.5, 46.8, 86.3, 17.8, 40.08)),
    ("tableb5", "gpt2_base"): ((15.9, 18.5, 37.0, 61.6, 14.1, 29.42), (24.6, 23.1, 46.4, 84.5, 17.2, 39.16),
                               (21.0, 21.5, 42.4, 75.0, 16.0, 35.18), (26.1, 23.2, 46.9, 85.4, 17.3, 39.78),
                               (26.6, 23.0, 46.8, 85.8, 17.2, 39.88)),
    ("tableb5", "gpt2_medium"): ((20.1, 19.1, 42.7, 62.1, 12.8, 31.36), (22.1, 21.7, 42.8, 75.4, 16.5, 35.70),
                                 (25.3, 23.3, 47.6, 88.2, 17.5, 40.38), (25.4, 23.0, 46.2, 82.8, 17.1, 38.90),
                                 (26.3, 24.0, 48.7, 90.0, 17.8, 41.36)),
}

_BLOCKS = {
    ("table4", "lora_r64"): ("Table 4", "LoRA, r = 64 (GPT-2 base + ViT-B/16)"),
    ("table4", "lora_r128"): ("Table 4", "LoRA, r = 128 (GPT-2 base + ViT-B/16)"),
    ("table4", "adapter_r64"): ("Table 4", "Adapter, r = 64 (GPT-2 base + ViT-B/16)"),
    ("table4", "adapter_r128"): ("Table 4", "Adapter, r = 128 (GPT-2 base + ViT-B/16)"),
    ("tableb5", "gpt2_base"): ("Table B5", "Adapter, r = 64, GPT2-base + ViT-B/16"),
    ("tableb5", "gpt2_medium"): ("Table B5", "Adapter, r = 64, GPT2-medium + ViT-L/16"),
}

#: Labels as printed. Table 4 writes x_t(x'_v)ᵀ x_v for proj; both tables write x_t x'_v for expand (x_t x''_v).
_LABELS = {
    "table4": {"none": "None", "mul": "x_t ∘ x'_v", "add": "x_t + x'_v", "proj": "x_t(x'_v)ᵀ x_v",
               "expand": "x_t x'_v"},
    "tableb5": {"none": "None", "mul": "x_t ∘ x'_v", "add": "x_t + x'_v", "proj": "x_t(x_v)ᵀ x_v",
                "expand": "x_t x'_v"},
}
_LABEL_NOTES = {
    ("table4", "proj"): "printed label x_t(x'_v)ᵀ x_v means x_t (x_v)ᵀ x_v",
    ("table4", "expand"): "printed label x_t x'_v means x_t x''_v (the released --element_mul_expand)",
    ("tableb5", "expand"): "printed label x_t x'_v means x_t x''_v (the released --element_mul_expand)",
}

#: Printed improvements over ``none`` that the printed values contradict: key → {column: (printed, derived)}.
PRINTED_DELTA_SLIPS: dict[str, dict[str, tuple[float, float]]] = {
    "table4/lora_r64/expand": {TASK: (13.7, 24.7)},
    "table4/lora_r128/add": {f"{TASK}.ROUGE-L": (4.7, 3.7)},
    "table4/adapter_r64/add": {TASK: (14.4, 13.4)},
    "table4/adapter_r128/add": {TASK: (13.8, 13.7)},
    "tableb5/gpt2_base/add": {TASK: (14.4, 13.4)},
    "tableb5/gpt2_medium/mul": {f"{TASK}.Avg": (3.34, 4.34)},
    "tableb5/gpt2_medium/expand": {f"{TASK}.SPICE": (5.6, 5.0)},
}

_TITLES = {f"{TASK}.BLEU-4": "BLEU-4", f"{TASK}.METEOR": "METEOR", f"{TASK}.ROUGE-L": "ROUGE-L", TASK: "CIDEr",
           f"{TASK}.SPICE": "SPICE", f"{TASK}.Avg": "Avg"}


def _note(table: str, routing: str, key: str) -> str:
    parts = []
    if (table, routing) in _LABEL_NOTES:
        parts.append(_LABEL_NOTES[(table, routing)])
    for col, (printed, derived) in PRINTED_DELTA_SLIPS.get(key, {}).items():
        parts.append(f"printed {_TITLES[col]} improvement {printed:+.2f} is a slip; the values give {derived:+.2f}")
    if table == "tableb5" and key.split("/")[1] == "gpt2_base":
        parts.append(f"same numbers as table4/adapter_r64/{routing}")
    return "; ".join(parts)


def _build() -> dict[str, PaperRow]:
    rows: dict[str, PaperRow] = {}
    for (table, block), printed in _TABLES.items():
        title, block_title = _BLOCKS[(table, block)]
        for routing, numbers in zip(ROUTINGS, printed):
            key = f"{table}/{block}/{routing}"
            rows[key] = PaperRow(key, title, block_title, _LABELS[table][routing], routing,
                                 dict(zip(COLUMNS, numbers)), decimals=1, column_decimals={f"{TASK}.Avg": 2},
                                 source=THIS_PAPER, lr=3e-5, note=_note(table, routing, key))
    return rows


ROWS: dict[str, PaperRow] = _build()
