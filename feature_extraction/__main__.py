"""``python -m feature_extraction {extract,convert,verify} ...``

``extract`` writes CLIP ResNet grid features (see :mod:`feature_extraction.extract`); ``convert`` rewrites per-image
feature files in the contiguous layout (:mod:`feature_extraction.convert`); ``verify`` checks that every image an
annotation file references has finite features of the right shape (:mod:`feature_extraction.verify`).
A :class:`vlrouting.errors.VLRoutingError` becomes one line on stderr and exit status 2, as in ``python -m vlrouting``.
"""

from __future__ import annotations

import sys

COMMANDS = {
    "extract": ("feature_extraction.extract", "CLIP grid features -> <root>/<DS>/clip_features/<split>.h5"),
    "convert": ("feature_extraction.convert", "per-image feature files -> the contiguous layout (faster batch reads)"),
    "verify": ("feature_extraction.verify", "check features against annotation files"),
}


def main(argv: list[str] | None = None) -> int:
    from vlrouting.cli_dispatch import dispatch

    return dispatch("python -m feature_extraction", COMMANDS, argv,
                    interrupted="interrupted: finished batches are kept; rerun the same command to resume.")


if __name__ == "__main__":
    sys.exit(main())
