"""Shared sub-command dispatch for ``python -m vlrouting`` and ``python -m feature_extraction``.

Each command lives in its own module exposing ``main(argv) -> int``; a :class:`VLRoutingError` becomes one line
on stderr and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import importlib
import sys


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: list[str] | None = None,
             interrupted: str | None = None) -> int:
    """Run ``commands[argv[0]]``'s ``main(argv[1:])``; ``interrupted`` is printed on Ctrl-C (exit 130)."""
    from vlrouting.errors import VLRoutingError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(len(n) for n in commands) + 2
        lines = [f"usage: {prog} <command> [options]", "", "commands:"]
        lines += [f"  {name:<{width}} {help_}" for name, (_, help_) in commands.items()]
        print("\n".join(lines))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"error: unknown command '{name}'; valid commands: {', '.join(commands)}.", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name][0])
    try:
        return int(module.main(rest) or 0)
    except VLRoutingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted, file=sys.stderr)
        return 130
