"""Atomic training-state checkpoints for ``--resume latest`` (DESIGN §7).

The state holds the trainable parameters, optimizer, scheduler, RNG states (torch, CUDA, numpy, python), the
global step, the epoch and the multitask loader's position. The RNG states are every rank's (``rng_ranks``, gathered
by :func:`gather_rng_states`): under DDP each rank draws its own dropout masks, and its stream advances by different
amounts when its batches have other shapes, so restoring rank 0's stream on every rank would change rank 1's masks
after a resume. ``rng`` (rank 0's, as in older checkpoints) serves when the number of processes changed.

The state is written through :func:`vlrouting.fileio.atomic_path` (temporary file in the run directory, fsync,
``os.replace``), so a kill at any moment leaves either the previous complete checkpoint or the new one, never a torn
file (the orphaned temporary file is removed when the run resumes). It is read back with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from vlrouting.errors import DataError
from vlrouting.fileio import atomic_path

STATE_NAME = "training_state.pt"


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(world_size: int) -> list[dict]:
    """Every rank's :func:`rng_state`, in rank order (a collective: call it on every rank)."""
    mine = rng_state()
    if world_size == 1:
        return [mine]
    states: list = [None] * world_size
    dist.all_gather_object(states, mine)
    return states


def rng_state_for_rank(state: dict, rank: int, world_size: int) -> dict:
    """The RNG state rank ``rank`` continues from: its own when the checkpoint was written with the same world
    size, otherwise rank 0's (an epoch-boundary resume on another number of processes cannot be exact anyway)."""
    ranks = state.get("rng_ranks")
    if ranks and len(ranks) == world_size:
        return ranks[rank]
    return state["rng"]


_SAVES = 0


def _maybe_die_in_checkpoint() -> None:
    """Fault injection for the crash-safety test: ``VLROUTING_FAULT_KILL_IN_CHECKPOINT=k`` SIGKILLs the process
    during its k-th checkpoint write, after the temporary file is complete and before it replaces the old one."""
    global _SAVES
    _SAVES += 1
    target = os.environ.get("VLROUTING_FAULT_KILL_IN_CHECKPOINT")
    if target and int(target) == _SAVES:
        os.kill(os.getpid(), signal.SIGKILL)


def save_training_state(run_dir: Path, state: dict) -> Path:
    path = Path(run_dir) / STATE_NAME
    with atomic_path(path, before_replace=_maybe_die_in_checkpoint) as tmp:
        torch.save(state, tmp)
    return path


def load_training_state(run_dir: Path) -> dict:
    path = Path(run_dir) / STATE_NAME
    if not path.is_file():
        raise DataError(f"--resume latest: no {STATE_NAME} in {run_dir}; start without --resume, or point "
                        "output.run at the run directory to continue.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a file that is not a checkpoint
        raise DataError(f"{path} is not a readable training state ({exc.__class__.__name__}); remove it to "
                        "start over.") from None
