"""``torchrun --nproc_per_node=N -m vlrouting.train --config NAME [key=value ...] [--resume latest]``."""

from vlrouting.train.trainer import entry

if __name__ == "__main__":
    entry()
