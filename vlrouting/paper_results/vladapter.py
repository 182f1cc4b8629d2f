"""VL-Adapter's own CLIP-BART rows for the baselines the routing-functions paper does not quote (Sung, Cho, Bansal,
CVPR 2022, Table 1: VL-BART, image-text multitask; VQAv2 Karpathy test, GQA test-dev, NLVR² test-P, COCO Karpathy
test CIDEr, their mean, and the trainable-parameter percentage printed beside each row).

Key scheme: ``vladapter_table1/<block>/none`` — these methods carry no routing function (``none``), like the
``None [‡]`` rows the routing-functions paper quotes from the same table (``vlrouting.paper_results.clip_bart``).
Numbers are quoted as printed (one decimal), one seed (the routing-functions paper's footnote 11 for [37]).

Left out on purpose: Multiple Compacters (7.05 %) and Multiple Prompts (4.53 %). Their task columns could not be
checked against a second source, so they are not stored (their configs have ``paper_row: null``). Hyperformer's
Avg. is 76.4 as printed; the mean of its printed task columns is 76.35 (the paper averages unrounded numbers).
"""

from __future__ import annotations

from vlrouting.paper_results import VL_ADAPTER, PaperRow

_NOTE = "VL-Adapter Table 1 (CLIP-BART, 1 seed); quoted, not in the routing-functions paper"


def _row(block: str, title: str, percent: float, vqa: float, gqa: float, nlvr: float, caption: float,
         avg: float, note: str = _NOTE) -> PaperRow:
    values = {"vqa": vqa, "gqa": gqa, "nlvr": nlvr, "caption": caption, "avg": avg}
    return PaperRow(f"vladapter_table1/{block}/none", "VL-Adapter Table 1", title, title, "none", values,
                    decimals=1, n_seeds=1, source=VL_ADAPTER, baseline=True, trainable_percent=percent, note=note)


#: VL-Adapter's rows for the baselines of issue 16, keyed by ``paper_row``, in its table order.
ROWS: dict[str, PaperRow] = {row.key: row for row in (
    _row("half_shared_adapters", "Half-shared Adapters", 8.36, 65.2, 53.4, 71.2, 113.7, 75.9),
    _row("hyperformer", "Hyperformer", 5.79, 65.1, 53.4, 72.3, 114.6, 76.4,
         note=_NOTE + "; Avg. printed 76.4 (mean of the printed columns 76.35)"),
    _row("single_compacter", "Single Compacter", 2.70, 64.2, 53.3, 71.7, 114.1, 75.8),
    _row("single_prompt", "Single Prompt", 2.00, 44.0, 36.3, 51.8, 103.9, 59.0),
)}
