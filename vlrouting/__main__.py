"""``python -m vlrouting <command> ...``: one entry point, one module per command.

Each command lives in its own module and exposes ``main(argv) -> int``; this file only dispatches and turns a
:class:`vlrouting.errors.VLRoutingError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "params": ("vlrouting.cli_params", "print trainable / total parameters of a config"),
    "eval": ("vlrouting.evaluation.cli", "score a prediction file against references"),
    "aggregate": ("vlrouting.aggregate", "mean ± std tables over seeds, beside the paper's numbers"),
    "synthetic": ("vlrouting.data.synthetic", "write the synthetic four-task benchmark"),
    "train": ("vlrouting.train", "train (use torchrun -m vlrouting.train for several processes)"),
    "routings": ("vlrouting.routing", "list the routing functions and mixes"),
}


def _usage() -> str:
    lines = ["usage: python -m vlrouting <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from vlrouting.errors import VLRoutingError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}'; valid commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except VLRoutingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
