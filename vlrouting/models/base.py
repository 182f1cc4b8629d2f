"""The contract every model family implements (DESIGN §10).

A model family is one registered unit (:mod:`vlrouting.models.registry`) that owns its modules, which PEFT sides
route, where x_R comes from and how it predicts. The trainer, ``params``, export and evaluation only use this
interface:

- :class:`FamilyConfig` — the family's typed ``model:`` config section. It says which ``family`` it belongs to,
  the data shapes the family needs (:meth:`FamilyConfig.data_spec`: the single source of every model-dependent data
  shape) and which PEFT sides receive x_R by default (:meth:`FamilyConfig.route_sides`).
- :class:`FamilyModel` — ``forward(batch) -> ModelOutput`` with logits and targets already aligned for the task's
  objective, plus the auxiliary losses of PEFT methods; ``predict(task, batch, tokenizer)`` → one prediction per
  example, as the task's evaluator expects it.
- :class:`ModelOutput` — ``logits``, ``targets`` and ``aux_losses`` (name → scalar tensor, e.g. PETAL's
  information-bottleneck loss): the trainer adds every auxiliary loss to the task loss and logs each separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from vlrouting.data.layout import DataSpec
from vlrouting.peft import count_parameters


@dataclass
class ModelOutput:
    """What a family's forward returns: ``logits`` and ``targets`` aligned for the task's loss, aux losses."""

    logits: torch.Tensor
    targets: torch.Tensor | None = None
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class FamilyConfig:
    """Fields every family's ``model:`` section has. Subclasses add their own typed fields."""

    family: str = "clip_bart"

    def data_spec(self) -> DataSpec:
        """Feature kind and data shapes this model reads (tasks, preflight and evaluation all use this)."""
        raise NotImplementedError

    def route_sides(self) -> list[str]:
        """The PEFT sides (``encoder``/``decoder``) that receive x_R when ``peft.route_sides`` is not given."""
        raise NotImplementedError

    def tiny(self) -> "FamilyConfig":
        """A copy whose ``pretrained=False`` build is toy-sized (same module structure, same data shapes), for smoke
        runs and quick benchmarks (``scripts/bench/bench_inference.py --arch tiny``). Optional."""
        raise NotImplementedError(f"model family '{self.family}' defines no tiny architecture (FamilyConfig.tiny)")


class FamilyModel(nn.Module):
    """Base class of every family's model (see the module docstring for the contract)."""

    #: Registry name, set by :func:`vlrouting.models.registry.register_family`.
    family: str = ""

    def forward(self, batch: Mapping[str, Any]) -> ModelOutput:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, task, batch: Mapping[str, Any], tokenizer) -> list:  # pragma: no cover - interface
        """One prediction per example of ``batch`` (strings for every task so far), in batch order."""
        raise NotImplementedError

    def export_pretrained(self, out_dir, tokenizer) -> None:
        """Write the (fully fine-tuned) backbone as a folder later runs load as their pretrained backbone."""
        raise NotImplementedError(f"model family '{self.family}' has no backbone export")

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Auxiliary losses of the last forward from model-level PEFT owners (see :mod:`vlrouting.peft`)."""
        owner = getattr(self, "peft_owner", None)
        return owner.aux_losses() if owner is not None and hasattr(owner, "aux_losses") else {}

    def parameter_report(self) -> dict:
        """Trainable / total parameters with VL-Adapter's definition (total includes the PEFT modules)."""
        return count_parameters(self)
