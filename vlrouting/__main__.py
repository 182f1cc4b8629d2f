"""``python -m vlrouting <command> ...``: one entry point, one module per command.

Each command lives in its own module and exposes ``main(argv) -> int``; this file only lists them; the
dispatch (and turning a VLRoutingError into one stderr line, exit 2) is :mod:`vlrouting.cli_dispatch`.
"""

from __future__ import annotations

import sys

COMMANDS = {
    "params": ("vlrouting.cli_params", "print trainable / total parameters of a config"),
    "eval": ("vlrouting.evaluation.cli", "score a prediction file against references"),
    "aggregate": ("vlrouting.aggregate", "mean ± std tables over seeds, beside the paper's numbers"),
    "synthetic": ("vlrouting.data.synthetic", "write the synthetic four-task benchmark"),
    "train": ("vlrouting.train", "train (use torchrun -m vlrouting.train for several processes)"),
    "baselines": ("vlrouting.baselines", "blind baselines of a synthetic root (majority answer, majority caption)"),
    "routings": ("vlrouting.routing", "list the routing functions and mixes"),
    "analyze": ("vlrouting.analysis", "analyses of a trained run: deltas = per-layer ‖W_t − W_0‖ of down/up (Fig. B2)"),
    "demo-report": ("vlrouting.demo_report", "the demo's closing block from snap/demo (--readme: into README.md)"),
}


def main(argv: list[str] | None = None) -> int:
    from vlrouting.cli_dispatch import dispatch

    return dispatch("python -m vlrouting", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
