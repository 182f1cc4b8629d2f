"""``python -m feature_extraction {extract,verify} ...``

``extract`` writes CLIP ResNet grid features (see :mod:`feature_extraction.extract`); ``verify`` checks that every
image an annotation file references has finite features of the right shape (:mod:`feature_extraction.verify`).
A :class:`vlrouting.errors.VLRoutingError` becomes one line on stderr and exit status 2, as in ``python -m vlrouting``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "extract": ("feature_extraction.extract", "CLIP grid features -> <root>/<DS>/clip_features/<split>.h5"),
    "verify": ("feature_extraction.verify", "check features against annotation files"),
}


def _usage() -> str:
    lines = ["usage: python -m feature_extraction <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
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
    except KeyboardInterrupt:
        print("interrupted: finished batches are kept; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
