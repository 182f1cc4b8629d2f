"""The routing-functions paper's ablations on the ViT families as data (Qu, Tuytelaars, Moens, ECCV 2024: Table 6,
Appendix B Tables B2 and B3), r = 64 throughout.

Key scheme (``paper_row`` of a config)::

    table6/<method>/<routing>        method lora | adapter; routing proj (x_t(x_v)ᵀx_v) | proj_relu
                                     (ReLU(x_t)ReLU(x_v)ᵀx_v)
    tableb2/<method>/<x_R>           x_R none (routing none: the baseline), cls (routing proj on the visual
                                     [CLS] x_R), noise, ones (routing proj with x_R replaced: peft.x_r_replace)

Columns. Table 6 puts the VQAv2 accuracy of ViT+RoBERTa (task ``vqa_cls``, its headline column) beside COCO
captioning of ViT+GPT-2 (task ``coco_lm``): BLEU-4, CIDEr and Avg. (the mean of BLEU-4, METEOR, ROUGE-L, CIDEr and
SPICE). The COCO keys ``coco_lm.BLEU-4``, ``coco_lm`` (CIDEr, the headline) and ``coco_lm.Avg`` must match the
columns the ``coco_lm`` task reports (:meth:`vlrouting.data.tasks.Task.columns`: Table 4's BLEU-4, METEOR,
ROUGE-L, CIDEr, SPICE, Avg.); ``tests/test_ablations.py`` checks them against the task once it is registered.
Table B2 has the one ``vqa_cls`` column; the paper prints LoRA and Adapter side by side, stored here as one row each.

Table B3 is inference time, not a result of a run: it is :data:`INFERENCE_MS` (ms per sample on an RTX 3090,
measured with CUDA events), keyed by (task, method, routing), which ``scripts/bench/bench_inference.py`` prints as
ratios to ``none`` beside its own measurements (the paper's ratios lie in 0.975–1.100).

Cross-checks (tested): Table 6's LoRA/Adapter x_t(x_v)ᵀx_v VQA numbers are Table 1's (r = 64) and Table B2's
"vis. [CLS]" rows; its COCO LoRA numbers are Table 4's (LoRA, r = 64), its COCO Adapter numbers Table B5's
(GPT2-base); Table B2's baseline is Table 1's "None" (r = 64).
"""

from __future__ import annotations

from vlrouting.paper_results import PaperRow

#: Column keys (see the module docstring): the ViT+RoBERTa VQA headline and three ViT+GPT-2 COCO columns.
VQA = "vqa_cls"
COCO_BLEU4, COCO_CIDER, COCO_AVG = "coco_lm.BLEU-4", "coco_lm", "coco_lm.Avg"
TABLE6_COLUMNS = (VQA, COCO_BLEU4, COCO_CIDER, COCO_AVG)
TABLEB2_COLUMNS = (VQA,)

_METHODS = {"lora": "LoRA", "adapter": "Adapter"}
_LABEL = {"proj": "x_t(x_v)ᵀx_v", "proj_relu": "ReLU(x_t)ReLU(x_v)ᵀx_v", "none": "None",
          "mul": "x_t ∘ x'_v", "add": "x_t + x'_v", "expand": "x_t x''_v"}
_NOTE6 = ("r = 64; VQA from ViT+RoBERTa (vqa_cls), COCO from ViT+GPT-2 (coco_lm); "
          "the paper prints 1 decimal for BLEU-4 and CIDEr, 2 for VQA and Avg.")


def _table6() -> list[PaperRow]:
    printed = {  # VQA accuracy, COCO BLEU-4, CIDEr, Avg. — as printed
        ("lora", "proj"): (53.88, 24.8, 84.9, 38.90),
        ("lora", "proj_relu"): (53.45, 25.3, 86.1, 39.84),
        ("adapter", "proj"): (54.48, 26.1, 85.4, 39.78),
        ("adapter", "proj_relu"): (54.63, 25.0, 84.7, 39.02),
    }
    return [PaperRow(f"table6/{method}/{routing}", "Table 6", _METHODS[method], _LABEL[routing], routing,
                     dict(zip(TABLE6_COLUMNS, values)), note=_NOTE6,
                     column_decimals={COCO_BLEU4: 1, COCO_CIDER: 1})
            for (method, routing), values in printed.items()]


#: Table B2, x_R column as printed → (key part, routing, peft.x_r_replace).
_B2_XR = {"None": ("none", "none", "none"), "vis. [CLS]": ("cls", "proj", "none"),
          "random noise": ("noise", "proj", "noise"), "ones": ("ones", "proj", "ones")}


def _tableb2() -> list[PaperRow]:
    printed = {  # x_R → (LoRA, Adapter) VQAv2 accuracy, r = 64
        "None": (44.15, 44.16),
        "vis. [CLS]": (53.88, 54.48),
        "random noise": (43.80, 43.48),
        "ones": (45.59, 24.42),
    }
    rows = []
    for k, method in enumerate(_METHODS):
        for x_r, values in printed.items():
            part, routing, replace = _B2_XR[x_r]
            label = "None" if routing == "none" else f"{_LABEL[routing]}, x_R = {x_r}"
            note = "r = 64, ViT+RoBERTa on VQAv2 (vqa_cls)"
            if replace != "none":
                note += f"; run with peft.x_r_replace={replace} (only the routing input is replaced)"
            rows.append(PaperRow(f"tableb2/{method}/{part}", "Table B2", _METHODS[method], label, routing,
                                 {VQA: values[k]}, note=note))
    return rows


#: Table B2's ``peft.x_r_replace`` of each row key's last part (``none`` and ``cls`` keep the real x_R).
TABLEB2_X_R_REPLACE = {part: replace for part, _, replace in _B2_XR.values()}

#: Table B3: average inference time (ms per sample, RTX 3090, ``torch.cuda.Event``), r = 64, keyed by
#: (task, method, routing) — VQAv2 with ViT+RoBERTa (``vqa_cls``), COCO captioning with ViT+GPT-2 (``coco_lm``).
INFERENCE_MS: dict[tuple[str, str, str], float] = {}
for _task, _cols in {
    "vqa_cls": {"none": (0.2375, 0.2539), "mul": (0.2533, 0.2542), "add": (0.2527, 0.2475),
                "proj": (0.2536, 0.2543), "expand": (0.2568, 0.2584)},
    "coco_lm": {"none": (17.7432, 17.2814), "mul": (17.6533, 18.3681), "add": (17.8562, 18.8359),
                "proj": (18.2282, 18.9063), "expand": (18.4309, 19.0058)},
}.items():
    for _routing, (_lora, _adapter) in _cols.items():
        INFERENCE_MS[(_task, "lora", _routing)] = _lora
        INFERENCE_MS[(_task, "adapter", _routing)] = _adapter


def inference_ratio(task: str, method: str, routing: str) -> float | None:
    """Table B3's time of ``routing`` over ``none`` for the same task and method; None where the paper has none."""
    t, base = INFERENCE_MS.get((task, method, routing)), INFERENCE_MS.get((task, method, "none"))
    return None if t is None or base is None else t / base


#: Tables 6 and B2, keyed by ``paper_row``, in the paper's order.
ROWS: dict[str, PaperRow] = {row.key: row for row in _table6() + _tableb2()}
