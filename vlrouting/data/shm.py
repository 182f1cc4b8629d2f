"""Recycled shared-memory feature buffers for DataLoader workers, and when the main process gives them back.

Why (scripts/bench/README.md, feature input): a DataLoader worker hands each batch to the main process through
shared memory. In a fresh shared buffer per batch, every 4 KiB page of a 19 MB float32 feature batch (64 × 36 × 2048)
is a new tmpfs page whose first touch costs ~4-5 µs here: ≈ 20 ms per batch, four times the read itself. A worker
that refills a few buffers ("slots") pays that once per slot instead of once per batch.

The rule this module enforces: **a worker never writes into a slot while the main process may still read it.**

- A slot is one shared storage: a 64-byte header — int64 words ``state`` (FREE 0 / BUSY 1), ``fills`` (how often it
  was filled), ``slot`` (its number in the worker), ``pid`` (the worker's) — followed by the payload; the batch's
  ``vis_feats`` is a view of the payload.
- Worker (:class:`SlotPool`, installed by :class:`WorkerInit`): takes a FREE slot (or makes a new one while it has
  fewer than ``slots``) and sets it BUSY before filling it. With no FREE slot it falls back to a fresh shared buffer
  — the path without this module — so a consumer that keeps every batch loses the speed-up, never its data. A read
  that fails gives its slot back.
- The batch travels as a :class:`SlotBatch`. Unpickling it in the main process registers a **lease** on each slot
  storage it carries (whichever thread unpickles it: the loader's or the pin-memory thread). :func:`collect` sets a
  leased slot FREE once the lease is the *only* reference to that storage left in the main process
  (``torch._C._storage_Use_Count == 1``): every tensor, view, numpy array or autograd-saved tensor of the slot holds
  a reference to the storage, so none of them is left. The multitask loader calls :func:`collect` before every
  batch; with ``pin_memory`` the pin-memory thread copies the batch to pinned memory (:meth:`SlotBatch.pin_memory`)
  and collects right away, so the slot is back in the worker's hands one copy after it arrived.

The state word is written by the worker only FREE → BUSY and by the main process only BUSY → FREE; the main process
writes FREE after its last read of the slot (the reference count has dropped), and the worker reads FREE before it
writes the payload (x86-64 keeps both orders; the handshake needs no lock).
"""

from __future__ import annotations

import math
import os
import threading

import torch

HEADER_BYTES = 64
FREE, BUSY = 0, 1
STATE, FILLS, SLOT, PID = range(4)


def available() -> bool:
    """Whether this torch exposes what the release rule needs (a storage's reference count)."""
    return hasattr(torch._C, "_storage_Use_Count")


def _header(storage: torch.UntypedStorage) -> torch.Tensor:
    """The slot header as an int64 tensor over the first ``HEADER_BYTES`` of ``storage``."""
    return torch.empty(0, dtype=torch.int64).set_(storage, 0, (HEADER_BYTES // 8,), (1,))


def _use_count(storage: torch.UntypedStorage) -> int:
    return torch._C._storage_Use_Count(storage._cdata)


def fresh_shared(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor in new shared memory (what ``default_collate`` allocates inside workers)."""
    elem = torch.empty(0, dtype=dtype)
    storage = elem._typed_storage()._new_shared(math.prod(shape), device=elem.device)
    return elem.new(storage).view(shape)


# --------------------------------------------------------------------------------------------------- worker side


class SlotPool:
    """At most ``slots`` reusable shared buffers of one DataLoader worker (module docstring)."""

    def __init__(self, slots: int):
        self.max_slots = int(slots)
        self.storages: list[torch.UntypedStorage] = []
        self.headers: list[torch.Tensor] = []
        self.fresh = 0  # batches that found no FREE slot

    def take(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A BUSY slot's payload as a ``shape`` tensor, or a fresh shared tensor when every slot is BUSY."""
        nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        for k, (storage, header) in enumerate(zip(self.storages, self.headers)):
            if int(header[STATE]) != FREE:
                continue
            if storage.nbytes() < HEADER_BYTES + nbytes:  # a larger batch than this slot was made for
                self._new_slot(nbytes, k)
            return self._fill(k, shape, dtype)
        if len(self.storages) < self.max_slots:
            self._new_slot(nbytes, len(self.storages))
            return self._fill(len(self.storages) - 1, shape, dtype)
        self.fresh += 1
        return fresh_shared(shape, dtype)

    def _new_slot(self, nbytes: int, k: int) -> None:
        storage = torch.UntypedStorage._new_shared(HEADER_BYTES + nbytes)
        header = _header(storage)
        header.zero_()
        header[SLOT], header[PID] = k, os.getpid()
        if k == len(self.storages):
            self.storages.append(storage)
            self.headers.append(header)
        else:  # the old, smaller slot is FREE: nobody in the main process holds it any more
            self.storages[k], self.headers[k] = storage, header

    def _fill(self, k: int, shape, dtype) -> torch.Tensor:
        header = self.headers[k]
        header[STATE] = BUSY
        header[FILLS] += 1
        offset = HEADER_BYTES // torch.empty(0, dtype=dtype).element_size()
        return torch.empty(0, dtype=dtype).set_(self.storages[k], offset, tuple(shape), _contiguous_strides(shape))

    def owns(self, tensor: torch.Tensor) -> bool:
        ptr = tensor.untyped_storage().data_ptr()
        return any(s.data_ptr() == ptr for s in self.storages)

    def give_back(self, tensor: torch.Tensor) -> None:
        """Sets the slot of ``tensor`` FREE again (its batch failed and never left the worker)."""
        ptr = tensor.untyped_storage().data_ptr()
        for storage, header in zip(self.storages, self.headers):
            if storage.data_ptr() == ptr:
                header[STATE] = FREE


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= int(n)
    return tuple(reversed(strides))


_POOL: SlotPool | None = None


def pool() -> SlotPool | None:
    """This process' slot pool: set in DataLoader workers started with :class:`WorkerInit`, None elsewhere."""
    return _POOL


class WorkerInit:
    """``worker_init_fn`` that gives each worker a :class:`SlotPool` of ``slots`` buffers (0: none); picklable."""

    def __init__(self, slots: int):
        self.slots = int(slots)

    def __call__(self, worker_id: int) -> None:
        global _POOL
        _POOL = SlotPool(self.slots) if self.slots > 0 and available() else None


def batch_buffer(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor for a batch array: a slot inside a worker with a pool, fresh shared memory inside
    other workers (so the batch reaches the main process as a handle, not a copy), ordinary memory elsewhere."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    if _POOL is not None:
        return _POOL.take(shape, dtype)
    return fresh_shared(shape, dtype)


def give_back(tensor: torch.Tensor) -> None:
    """Returns ``tensor``'s slot to this worker's pool if it is one (a batch that failed while being read)."""
    if _POOL is not None:
        _POOL.give_back(tensor)


class SlotCollate:
    """``collate_fn`` wrapper for workers with a pool: the batch travels as a :class:`SlotBatch` naming its slot
    tensors; picklable."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples):
        try:
            batch = self.collate(examples)
        except BaseException:
            for name in ("vis_feats", "img_order_ids", "obj_order_ids"):
                t = getattr(examples, name, None)
                if torch.is_tensor(t):
                    give_back(t)
            raise
        keys = ()
        if _POOL is not None and isinstance(batch, dict):
            keys = tuple(k for k, v in batch.items() if torch.is_tensor(v) and _POOL.owns(v))
        return SlotBatch(batch, keys, pooled=_POOL is not None)


# --------------------------------------------------------------------------------------------------- main side


class _Leases:
    """The slot storages the main process received and has not released yet (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.held: dict[int, torch.UntypedStorage] = {}  # data_ptr → storage
        self.received = self.recycled = self.released = self.fresh = 0

    def add(self, storage: torch.UntypedStorage) -> None:
        with self.lock:
            self.received += 1
            if int(_header(storage)[FILLS]) > 1:
                self.recycled += 1
            self.held[storage.data_ptr()] = storage

    def collect(self) -> int:
        """Sets FREE every leased slot the main process no longer references; returns how many."""
        with self.lock:
            done = [ptr for ptr, s in self.held.items() if _use_count(s) == 1]
            for ptr in done:
                _header(self.held.pop(ptr))[STATE] = FREE
            self.released += len(done)
            return len(done)

    def note_fresh(self) -> None:
        with self.lock:
            self.fresh += 1

    def stats(self) -> dict:
        with self.lock:
            return {"received": self.received, "recycled": self.recycled, "released": self.released,
                    "held": len(self.held), "fresh": self.fresh}


LEASES = _Leases()


def collect() -> int:
    """Releases every slot whose batch the main process has dropped (see the module docstring)."""
    return LEASES.collect()


def stats() -> dict:
    """Counts of this process: slot batches ``received``, of them ``recycled`` (a slot filled before),
    ``released`` and still ``held``; ``fresh``: batches from a worker with a pool that found no free slot."""
    return LEASES.stats()


def slot_header(tensor: torch.Tensor) -> dict | None:
    """``{"state", "fills", "slot", "pid"}`` of the leased slot ``tensor`` lives in, or None (not in a slot)."""
    storage = tensor.untyped_storage()
    with LEASES.lock:
        if storage.data_ptr() not in LEASES.held:
            return None
    words = _header(storage).tolist()
    return {"state": words[STATE], "fills": words[FILLS], "slot": words[SLOT], "pid": words[PID]}


class SlotBatch:
    """A collated batch on its way from a worker: ``batch`` (the collate output) and the keys of its slot tensors.

    Unpickling it (in the main process) leases those slots. Not a Mapping, so the DataLoader's pin-memory thread
    calls :meth:`pin_memory` instead of walking it.
    """

    def __init__(self, batch, slot_keys=(), pooled: bool = False):
        self.batch = batch
        self.slot_keys = tuple(slot_keys)
        self.pooled = pooled  # made by a worker with a pool (no slot keys then: it found no free slot)

    def __getstate__(self):
        return {"batch": self.batch, "slot_keys": self.slot_keys, "pooled": self.pooled}

    def __setstate__(self, state):
        self.batch, self.slot_keys, self.pooled = state["batch"], state["slot_keys"], state["pooled"]
        for key in self.slot_keys:
            LEASES.add(self.batch[key].untyped_storage())
        if self.pooled and not self.slot_keys:
            LEASES.note_fresh()

    def copy_out(self, copy) -> "SlotBatch":
        """Replaces every tensor of the batch by ``copy(tensor)`` and releases the slots it no longer needs."""
        if isinstance(self.batch, dict):
            self.batch = {k: (copy(v) if torch.is_tensor(v) else v) for k, v in self.batch.items()}
        self.slot_keys = ()
        collect()
        return self

    def pin_memory(self, *_args) -> "SlotBatch":
        """The pin-memory thread's step: the batch's tensors copied to pinned memory, then the slots released."""
        return self.copy_out(lambda t: t.pin_memory())


__all__ = ["SlotPool", "SlotBatch", "SlotCollate", "WorkerInit", "batch_buffer", "give_back", "collect", "stats",
           "slot_header", "pool", "available", "fresh_shared", "LEASES"]
