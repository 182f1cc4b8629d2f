"""The wrapper every PEFT method builds on: a frozen base module plus per-task (or shared) PEFT blocks.

A wrapper replaces one target module of a Hugging Face model (HF PEFT's ``base_layer`` idea): the base module
is kept intact as ``base_layer``; the trainable block(s) live under ``peft_block`` — one module when shared by all
tasks (VL-Adapter's *single*), a ``ModuleDict`` keyed by task otherwise (*multiple*). The routing function is
looked up per task (the paper chooses it by the task prompt, Table 8).

A wrapper also names its down- and up-projection matrices (:meth:`RoutedWrapper.delta_pairs`), so analyses of how
they change in training (paper Fig. B2: ‖W_t − W_0‖_F of W_down and W_up) never need to know the method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlrouting.peft.state import RoutingState, expand_to_batch


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """(in, out) of an ``nn.Linear`` or a transformers ``Conv1D`` (weight stored as (in, out))."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(f"cannot wrap {type(module).__name__}: only nn.Linear and Conv1D are supported")


@dataclass(frozen=True)
class DeltaPair:
    """The down- and up-projection matrices of one PEFT block at one wrapped position (paper Fig. B2).

    ``block``: ``shared`` or the task whose block it is; ``down`` / ``up``: parameter names relative to the wrapper
    (``peft_block.vqa.lora_A``), the matrices whose change ‖W_t − W_0‖_F is reported; ``groups``: names of equal
    blocks of rows that both matrices split into and that are reported separately — e.g. ``("q", "v")`` for a
    LoRA whose merged A stacks the query and value rows (and whose B stacks their outputs) — or ``()``.
    """

    block: str
    down: str
    up: str
    groups: tuple[str, ...] = ()


class RoutedWrapper(nn.Module):
    """Base class: task selection, x_R lookup and routing choice for one wrapped module."""

    def __init__(self, base_layer: nn.Module, block_factory, *, tasks, shared: bool, side: str,
                 routing_map: dict[str, str], route_enabled: bool, state: RoutingState, owner: nn.Module | None = None):
        super().__init__()
        self.base_layer = base_layer
        self.side = side
        self.shared = shared
        self.tasks = list(tasks)
        self.routing_map = dict(routing_map)
        self.route_enabled = route_enabled
        object.__setattr__(self, "state", state)  # a plain reference: not a submodule, not saved
        object.__setattr__(self, "owner", owner)  # the method's model-level parameters (registered on the model)
        if shared:
            self.peft_block = block_factory()
        else:
            self.peft_block = nn.ModuleDict({t: block_factory() for t in self.tasks})

    def _current_task(self) -> str:
        task = self.state.task
        if task is None:
            uniform = len(set(self.routing_map.values())) == 1 or not self.route_enabled
            if self.shared and uniform:
                return self.tasks[0]
            raise RuntimeError("no task is set for this forward; call the model with a task "
                               "(per-task modules or a per-task routing mix need one)")
        if task not in self.tasks:  # routing_map may hold extra entries (a user dict); only configured tasks run
            raise KeyError(f"task '{task}' has no PEFT module here; configured tasks: {', '.join(self.tasks)}")
        return task

    def block_for(self, task: str) -> nn.Module:
        return self.peft_block if self.shared else self.peft_block[task]

    def routing_inputs(self, batch: int) -> tuple[str, nn.Module, str, torch.Tensor | None]:
        """(task, block, routing name, x_R expanded to ``batch`` rows or None)."""
        task = self._current_task()
        routing = self.routing_map[task] if self.route_enabled else "none"
        x_r = None
        if routing != "none":
            x_r = self.state.x_r.get(self.side)
            if x_r is None:
                raise RuntimeError(
                    f"routing '{routing}' for task '{task}' needs x_R on the {self.side} side, but none was set; "
                    "pass visual features (or disable routing on this side)"
                )
            x_r = expand_to_batch(x_r, batch)
        return task, self.block_for(task), routing, x_r

    def block_prefixes(self) -> list[tuple[str, str]]:
        """(label, parameter-name prefix) of each PEFT block: ``("shared", "peft_block")`` or one per task."""
        if self.shared:
            return [("shared", "peft_block")]
        return [(t, f"peft_block.{t}") for t in self.tasks]

    def delta_pairs(self) -> list[DeltaPair]:
        """The (down, up) matrices of every block (:class:`DeltaPair`); empty for a method without plain ones."""
        return []

    def extra_repr(self) -> str:
        kind = "shared" if self.shared else f"per-task[{', '.join(self.tasks)}]"
        routes = ", ".join(f"{t}={r}" for t, r in self.routing_map.items()) if self.route_enabled else "off"
        return f"side={self.side}, {kind}, routing: {routes}"
