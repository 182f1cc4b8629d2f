"""The torchrun trainer (``python -m vlrouting.train``); library code lives in the other subpackages."""


def main(argv=None) -> int:
    from vlrouting.train.trainer import main as _main

    return _main(argv)
