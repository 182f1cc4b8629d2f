"""torchrun-native distributed setup: ranks from the environment, gloo on CPU, nccl on GPU.

Errors across ranks (:func:`together`, :func:`agreed`): a VLRoutingError raised on one rank only — a DataLoader
worker of rank 1 that finds NaN features, an evaluation on rank 0 that finds a bad file — would leave the other
ranks blocked in their next collective (a traceback from gloo, or a hang with nccl). Code that can fail on one
rank runs inside ``with together(info):``; at its end the ranks agree, the lowest failing rank re-raises its error
(and is the one that prints it: :func:`reports`) and every other rank raises :class:`PeerFailed`, which exits
with status 2 silently. Errors that every rank meets alike (config, pre-flight) are printed by rank 0 only.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist

from vlrouting.errors import VLRoutingError

T = TypeVar("T")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (set by torchrun) and start the process group when world_size > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum of ``value`` over every rank (``value`` itself with one process)."""
    if info.distributed:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True when ``flag`` holds on any rank (so every rank stops together)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def cleanup(info: DistInfo) -> None:
    """Destroy the process group. Drop the DDP-wrapped model first: a DDP reducer that holds the last reference to
    the group destroys it with the GIL held, and torch's gloo destructor then joins threads that may need the GIL."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


class PeerFailed(VLRoutingError):
    """Another rank stopped on an error and printed it; this rank stops too, quietly, with exit status 2."""


@contextmanager
def together(info: DistInfo, settle: bool = True) -> Iterator[None]:
    """Run the block on every rank, then agree on VLRoutingErrors raised in it (see the module docstring).

    Also a barrier when distributed. Single process: errors pass through unchanged. ``settle`` (and any agreed
    error) ends with a ``dist.barrier()``: the agreement's all_reduce leaves a Python tensor in a gloo worker thread,
    which needs the GIL to release it; if the process group is torn down right after (end of the run, an error)
    while the main thread holds the GIL, torch's destructor waits for that thread forever (seen under load). While
    the barrier waits, the GIL is free and the thread finishes. The per-step use (:func:`agreed`) skips it.
    """
    error: VLRoutingError | None = None
    try:
        yield
    except VLRoutingError as exc:
        error = exc
    if info.distributed:
        first = torch.tensor([info.rank if error is not None else info.world_size], device=info.device)
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
        first_rank = int(first.item())
        if settle or first_rank != info.world_size:  # every rank takes the same branch
            dist.barrier()
        if first_rank == info.world_size:
            return
        if first_rank != info.rank:
            raise PeerFailed(f"rank {first_rank} stopped on an error")
        error.reporting_rank = info.rank
    if error is not None:
        raise error


def agree_on_errors(method):
    """Decorator form of :func:`together` for methods of an object with an ``info`` attribute (the Trainer): the
    whole call is the block, so a method that works on rank 0 only also serves as the barrier of the others."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with together(self.info):
            return method(self, *args, **kwargs)

    return wrapper


def agreed(items: Iterable[T], info: DistInfo) -> Iterator[T]:
    """``items`` (a data loader), with an error raised while fetching an item agreed on by all ranks before any of
    them enters the step's collectives. Every rank must yield the same number of items (the multitask loader does)."""
    iterator = iter(items)
    while True:
        with together(info, settle=False):  # once per step: no extra barrier (the step's collectives follow)
            try:
                item = next(iterator)
            except StopIteration:
                item = iterator = None
        if iterator is None:
            return
        yield item


def reports(exc: BaseException, rank: int) -> bool:
    """Whether this rank prints ``exc``: the rank that won the agreement of :func:`together`, else rank 0 only."""
    if isinstance(exc, PeerFailed):
        return False
    return getattr(exc, "reporting_rank", 0) == rank
