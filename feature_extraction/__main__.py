"""``python -m feature_extraction {extract,extract-vit,convert,verify} ...``

``extract`` writes CLIP ResNet grid features (see :mod:`feature_extraction.extract`); ``extract-vit`` the frozen
ViT's pooled vectors (and tokens) of the ViT families (:mod:`feature_extraction.vit_extract`); ``convert`` rewrites
per-image feature files in the contiguous layout (:mod:`feature_extraction.convert`); ``verify`` checks that every
image an annotation file references has finite features of the right shape (:mod:`feature_extraction.verify`).
A :class:`vlrouting.errors.VLRoutingError` becomes one line on stderr and exit status 2, as in ``python -m vlrouting``.
"""

from __future__ import annotations

import sys

COMMANDS = {
    "extract": ("feature_extraction.extract", "CLIP grid features -> <root>/<DS>/clip_features/<split>.h5"),
    "extract-vit": ("feature_extraction.vit_extract",
                    "frozen-ViT pooler output (and tokens) -> <root>/<DS>/vit_features/<split>.h5"),
    "convert": ("feature_extraction.convert", "per-image feature files -> the contiguous layout (faster batch reads)"),
    "verify": ("feature_extraction.verify", "check features against annotation files"),
}


def main(argv: list[str] | None = None) -> int:
    from vlrouting.cli_dispatch import dispatch

    return dispatch("python -m feature_extraction", COMMANDS, argv,
                    interrupted="interrupted: finished batches are kept; rerun the same command to resume.")


if __name__ == "__main__":
    sys.exit(main())
