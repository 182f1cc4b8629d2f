"""The multitask loader: one task per batch, every batch of every task once per epoch (VL-Adapter, reference §5.1-§5.2).

VL-Adapter's ``MultitaskLoader`` (``multitask_data.py``, "roundrobin" mode) builds, at each epoch, a list holding
each task's name once per batch of that task's loader, shuffles it, and then pulls the next batch of the named task
at each step. Each task's loader is sharded with a ``DistributedSampler`` and the per-task batch sizes are fixed
ratios of a base size (500 / 833 / 166 / 416 for a base of 500).

This version keeps those semantics and makes them deterministic and resumable:

- The task order is a permutation drawn from ``np.random.default_rng((seed, epoch))``. It depends on the per-task
  batch counts, which are the same on every rank (``DistributedSampler`` gives every rank ``ceil(N / world)``
  indices, padded by repetition, or ``floor`` with ``drop_last``), so **every rank takes the same task at the same
  step** — required by DDP with per-task modules (DESIGN §9). (VL-Adapter seeded with the epoch only.)
- Every task's sampler is a ``DistributedSampler`` (also with one process, so there is a single code path) with
  ``set_epoch(epoch)``; the sampler's index list is cut into batches here and handed to a ``DataLoader`` as its
  ``batch_sampler``. ``drop_last`` is the sampler's (even per-rank shards); a task's last batch may be smaller.
- :meth:`MultitaskLoader.state_dict` records the epoch and the number of batches already yielded;
  after :meth:`load_state_dict`, iteration skips exactly those batches without loading them, and yields the same
  batches an uninterrupted run would have produced next (targets sampled per access depend on (seed, epoch, index)
  only, not on the order of access; see :class:`~vlrouting.data.tasks.TaskDataset`).
- ``__len__`` is the full number of batches per epoch on this rank (for schedules); after a mid-epoch resume the
  next pass yields ``len(loader) - consumed`` batches.

With ``num_workers > 0`` each task's DataLoader gets its own workers. How batches reach the main process
(issue 17, throughput; none of it changes a batch):

- **The epoch travels with the indices.** Every batch of indices handed to a DataLoader is an :class:`EpochIndices`
  (a list with an ``epoch``); :meth:`TaskDataset.__getitems__ <vlrouting.data.tasks.TaskDataset.__getitems__>`
  samples the targets of that epoch. Workers can therefore live across epochs (``persistent_workers``, default on):
  their copy of the dataset never needs ``set_epoch``. A dataset that does not read the epoch from its indices
  (``epoch_from_indices`` false) gets workers started per epoch, as before.
- **Recycled feature buffers** (:mod:`vlrouting.data.shm`): each worker reads the features into one of
  ``buffers_per_worker`` shared buffers (default ``prefetch_factor + 2``) that the main process hands back once it
  holds no reference to them any more (checked before every batch); a worker with none free uses a fresh buffer.
- ``pin_memory`` (on CUDA): the DataLoader's pin-memory thread copies each batch to page-locked memory (and gives
  its buffer back right there), so the trainer's ``non_blocking`` copy to the device is asynchronous.
- ``prefetch_factor``: batches each worker reads ahead.

**No loader touches the global torch RNG.** Creating a DataLoader iterator draws the workers' base seed from the
loader's ``generator``, or from the global torch RNG when it has none. The per-task iterators are created lazily, at
the step where a task first comes up, and after a mid-epoch resume at other steps than in the uninterrupted run:
drawing from the global stream would shift every later dropout mask of a resumed run. Each per-task loader
therefore gets its own ``torch.Generator`` seeded from (seed, epoch, rank, task) (:func:`loader_generator`), and the
evaluation loaders one seeded from (seed, rank, task): worker seeds are reproducible, and the global stream —
checkpointed with the training state — advances only through the model. Worker seeds do not make the data
depend on which worker loads a batch: targets depend on (seed, epoch, index) only, so batches are identical for any
``num_workers``.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from vlrouting.data import shm
from vlrouting.errors import ConfigError

STATE_VERSION = 1


class EpochIndices(list):
    """The dataset indices of one batch and the ``epoch`` they are drawn for (pickled with them to the workers)."""

    def __init__(self, indices, epoch: int):
        super().__init__(indices)
        self.epoch = int(epoch)


def loader_generator(*key: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``key`` (ints and strings, e.g. (seed, epoch, rank, task)).

    The key goes through ``np.random.SeedSequence`` so that nearby keys give unrelated seeds; strings enter as
    their UTF-8 bytes (stable across processes, unlike ``hash``)."""
    entropy: list[int] = []
    for part in key:
        if isinstance(part, str):
            entropy += [len(part), *part.encode()]
        else:
            entropy.append(int(part) % 2**64)
    seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


class MultitaskLoader:
    """Interleaves per-task DataLoaders, one task per batch, in a (seed, epoch)-shuffled order shared by all ranks.

    ``datasets`` and ``tasks`` are keyed by task name (``tasks`` supplies ``batch_size(base)`` and ``collate``);
    iteration order within an epoch follows ``datasets``' keys only through the shuffle.
    """

    def __init__(self, datasets: Mapping[str, Dataset], tasks: Mapping[str, object], base_batch_size: int, *,
                 world_size: int = 1, rank: int = 0, seed: int = 0, num_workers: int = 0, shuffle: bool = True,
                 drop_last: bool = False, pin_memory: bool = False, persistent_workers: bool = False,
                 prefetch_factor: int = 2, buffers_per_worker: int | None = None):
        if not datasets:
            raise ConfigError("MultitaskLoader got no datasets; pass at least one task's training dataset.")
        missing = [n for n in datasets if n not in tasks]
        if missing:
            raise ConfigError(f"MultitaskLoader has datasets but no task objects for {', '.join(missing)}; pass them in tasks=.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank} and world_size={world_size} are inconsistent; need 0 <= rank < world_size.")
        if num_workers < 0:
            raise ConfigError(f"num_workers={num_workers} is invalid; pass 0 or more.")
        if prefetch_factor < 1:
            raise ConfigError(f"prefetch_factor={prefetch_factor} is invalid; pass 1 or more batches per worker.")
        if buffers_per_worker is not None and buffers_per_worker < 0:
            raise ConfigError(f"buffers_per_worker={buffers_per_worker} is invalid; pass 0 (a fresh buffer per "
                              "batch) or more, or None for prefetch_factor + 2.")
        self.datasets = dict(datasets)
        self.tasks = {n: tasks[n] for n in self.datasets}
        self.base_batch_size = int(base_batch_size)
        self.batch_sizes = {n: t.batch_size(self.base_batch_size) for n, t in self.tasks.items()}
        self.world_size, self.rank, self.seed = int(world_size), int(rank), int(seed)
        self.num_workers, self.shuffle, self.drop_last, self.pin_memory = num_workers, shuffle, drop_last, pin_memory
        self.persistent_workers, self.prefetch_factor = bool(persistent_workers), int(prefetch_factor)
        self.buffers_per_worker = prefetch_factor + 2 if buffers_per_worker is None else int(buffers_per_worker)
        self._loaders: dict[str, DataLoader] = {}  # persistent per-task loaders (their workers outlive an epoch)
        self.samplers = {
            n: DistributedSampler(ds, num_replicas=self.world_size, rank=self.rank, shuffle=shuffle, seed=self.seed,
                                  drop_last=drop_last)
            for n, ds in self.datasets.items()
        }
        self.epoch = 0
        self._consumed = 0      # batches of self.epoch already yielded (including skipped ones after a resume)
        self._skip = 0          # batches to skip at the next __iter__ (set by load_state_dict)
        self._skip_epoch = None

    # ------------------------------------------------------------------------------------------------ epochs

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate. A pending resume position is kept only for the epoch it was saved in."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self._consumed = 0
        self.epoch = epoch
        for n, ds in self.datasets.items():
            self.samplers[n].set_epoch(epoch)
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def num_batches(self) -> dict[str, int]:
        """Batches per task per epoch on this rank (identical on every rank)."""
        return {n: -(-len(self.samplers[n]) // self.batch_sizes[n]) for n in self.datasets}

    def __len__(self) -> int:
        return sum(self.num_batches().values())

    @property
    def position(self) -> int:
        """Batches of the current epoch already yielded (or skipped on resume)."""
        return self._consumed

    def task_order(self, epoch: int | None = None) -> list[str]:
        """The task of each step of ``epoch``: each name once per batch, shuffled by (seed, epoch).

        Without ``shuffle`` the tasks come in blocks, in ``datasets``' order.
        """
        epoch = self.epoch if epoch is None else int(epoch)
        order = [n for n, k in self.num_batches().items() for _ in range(k)]
        if self.shuffle:
            perm = np.random.default_rng((self.seed % 2**64, epoch)).permutation(len(order))
            order = [order[i] for i in perm]
        return order

    def _batches(self, name: str, skip: int, epoch: int) -> list[EpochIndices]:
        indices = list(iter(self.samplers[name]))
        bs = self.batch_sizes[name]
        return [EpochIndices(indices[i:i + bs], epoch) for i in range(0, len(indices), bs)][skip:]

    def _persistent(self, name: str) -> bool:
        return (self.persistent_workers and self.num_workers > 0
                and bool(getattr(self.datasets[name], "epoch_from_indices", False)))

    def _loader(self, name: str, batches: list[EpochIndices], epoch: int) -> DataLoader:
        """The DataLoader of ``name`` set to yield ``batches``: the task's persistent one (made at its first use),
        or a new one for this epoch."""
        loader = self._loaders.get(name)
        if loader is not None:
            loader.batch_sampler.batches = batches
            return loader
        options = {}
        collate = self.tasks[name].collate
        persistent = self._persistent(name)
        if self.num_workers > 0:
            options = dict(prefetch_factor=self.prefetch_factor, persistent_workers=persistent)
            if self.buffers_per_worker > 0 and shm.available():
                options["worker_init_fn"] = shm.WorkerInit(self.buffers_per_worker)
                collate = shm.SlotCollate(collate)
        # a persistent loader's workers draw their seeds once: key them without the epoch
        gen_key = (self.seed, self.rank, name) if persistent else (self.seed, epoch, self.rank, name)
        loader = DataLoader(self.datasets[name], batch_sampler=_ListBatchSampler(batches), collate_fn=collate,
                            num_workers=self.num_workers, pin_memory=self.pin_memory,
                            generator=loader_generator(*gen_key), **options)
        if persistent:
            self._loaders[name] = loader
        return loader

    def close(self) -> None:
        """Shuts down the persistent workers (they start again at the next iteration)."""
        self._loaders.clear()

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch
        self.set_epoch(epoch)  # samplers and datasets agree on the epoch even if the caller forgot
        skip = self._skip if self._skip_epoch == epoch else 0
        self._skip, self._skip_epoch = 0, None
        order = self.task_order(epoch)
        skip = min(skip, len(order))
        skipped = Counter(order[:skip])
        iterators: dict[str, Iterator] = {}
        self._consumed = skip
        try:
            for name in order[skip:]:
                shm.collect()  # buffers of batches the consumer has dropped go back to their workers
                if name not in iterators:
                    iterators[name] = iter(self._loader(name, self._batches(name, skipped[name], epoch), epoch))
                batch = next(iterators[name])
                if isinstance(batch, shm.SlotBatch):
                    batch = batch.batch
                self._consumed += 1
                yield batch
        finally:
            iterators.clear()  # shuts per-epoch workers down when the consumer stops early (persistent ones stay)

    # ------------------------------------------------------------------------------------------------ resume

    def state_dict(self) -> dict:
        """Where this loader stands: the epoch and the batches of it already yielded (plus a consistency check)."""
        return {
            "version": STATE_VERSION, "epoch": self.epoch, "consumed": self._consumed, "seed": self.seed,
            "world_size": self.world_size, "batch_sizes": dict(self.batch_sizes), "num_batches": self.num_batches(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Resume: the next iteration of ``state['epoch']`` skips the ``state['consumed']`` batches already seen."""
        consumed = int(state.get("consumed", 0))
        if consumed:
            for key, mine in (("seed", self.seed), ("world_size", self.world_size),
                              ("batch_sizes", dict(self.batch_sizes)), ("num_batches", self.num_batches())):
                if key in state and state[key] != mine:
                    raise ConfigError(
                        f"Cannot resume mid-epoch: the saved loader state has {key}={state[key]} but this run has "
                        f"{mine}; resume with the same {key} (or from an end-of-epoch checkpoint)."
                    )
        self.set_epoch(int(state["epoch"]))
        self._consumed = consumed
        self._skip, self._skip_epoch = consumed, self.epoch


class _ListBatchSampler(Sampler):
    """A fixed list of index batches (the remaining batches of one task in one epoch)."""

    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ShardSampler(Sampler):
    """Positions ``rank, rank + world, …`` of ``order`` (default: dataset order): disjoint shards covering the dataset
    once, no padding."""

    def __init__(self, n: int, world_size: int = 1, rank: int = 0, order: list[int] | None = None):
        self.n, self.world_size, self.rank = n, world_size, rank
        self.order = list(range(n)) if order is None else list(order)
        if sorted(self.order) != list(range(n)):
            raise ValueError("order must be a permutation of the dataset's indices")

    def __iter__(self):
        return iter(self.order[self.rank::self.world_size])

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def make_eval_loader(dataset: Dataset, task, batch_size: int, world_size: int = 1, rank: int = 0,
                     num_workers: int = 0, pin_memory: bool = False, order: list[int] | None = None,
                     seed: int = 0, prefetch_factor: int = 2) -> DataLoader:
    """An evaluation DataLoader: dataset order, no shuffling, every example exactly once over all ranks.

    With ``world_size > 1`` rank r gets examples r, r + world, … (:class:`ShardSampler`; no padding, so no duplicate
    predictions, and shard lengths differ by at most one example): each rank predicts its shard and the trainer
    merges the prediction dicts (e.g. ``torch.distributed.all_gather_object``) before ``task.evaluate``. With the
    default ``world_size=1`` one process sees everything (VL-Adapter evaluated on rank 0 only). Do not run collective
    operations per batch over these loaders: ranks may have different batch counts. ``order``: visit the examples in
    this order instead (e.g. sorted by input length, so that batched generation pads little). The loader has its own
    generator (from ``seed``, ``rank`` and the task), so iterating it leaves the global torch RNG, and with it the
    training after an evaluation, untouched.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} is invalid; pass a positive evaluation batch size.")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank={rank} and world_size={world_size} are inconsistent; need 0 <= rank < world_size.")
    options = {"prefetch_factor": prefetch_factor} if num_workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), world_size, rank, order),
                      collate_fn=task.collate, num_workers=num_workers, pin_memory=pin_memory,
                      generator=loader_generator(seed, rank, "eval", task.name), **options)


__all__ = ["MultitaskLoader", "EpochIndices", "make_eval_loader", "ShardSampler", "loader_generator"]
