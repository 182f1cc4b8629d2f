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
- Host services for model-level PEFT owners (``bind_host``, :mod:`vlrouting.peft.registry`): ``tokenizer``,
  ``hidden_size``, ``embed_text``, ``output_embeddings``, ``special_token_ids``; a family that offers them
  overrides the defaults here, which say plainly that it does not. A family also fills the routing state's
  per-token inputs (``modality_ids``: 0 = text, 1.. = other modalities, and ``attention_mask``, per stream) and
  observations (``encoder_inputs``, ``encoder_hidden``, ``labels``) where it has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from vlrouting.data.layout import DataSpec
from vlrouting.errors import DataError
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
    #: The tokenizer the model was built with (None when built without one, e.g. for counting parameters).
    tokenizer = None

    def forward(self, batch: Mapping[str, Any]) -> ModelOutput:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, task, batch: Mapping[str, Any], tokenizer) -> list:  # pragma: no cover - interface
        """One prediction per example of ``batch`` (strings for every task so far), in batch order."""
        raise NotImplementedError

    def export_pretrained(self, out_dir, tokenizer) -> None:
        """Write the (fully fine-tuned) backbone as a folder later runs load as their pretrained backbone."""
        raise NotImplementedError(f"model family '{self.family}' has no backbone export")

    # ------------------------------------------------------------------ services for PEFT owners
    def _no_service(self, what: str):
        return NotImplementedError(f"model family '{self.family}' offers no {what} to PEFT methods")

    @property
    def hidden_size(self) -> int:
        """The width of the token states PEFT owners read and write."""
        raise self._no_service("hidden size")

    def embed_text(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None):
        """(B, L, d) text embedded exactly as the family embeds its text input (from ids or word embeddings)."""
        raise self._no_service("text embedding")

    def output_embeddings(self) -> torch.Tensor:
        """The (V, d) output (LM head) embedding matrix."""
        raise self._no_service("output embedding")

    def special_token_ids(self) -> list[int]:
        """Token ids that carry no content in targets (padding, start and end of sequence)."""
        raise self._no_service("special token ids")

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Auxiliary losses of the last forward from model-level PEFT owners (see :mod:`vlrouting.peft`)."""
        owner = getattr(self, "peft_owner", None)
        return owner.aux_losses() if owner is not None and hasattr(owner, "aux_losses") else {}

    def parameter_report(self) -> dict:
        """Trainable / total parameters with VL-Adapter's definition (total includes the PEFT modules), plus
        ``components`` (:meth:`parameter_components`) when the PEFT method breaks its parameters down."""
        counts = count_parameters(self)
        components = self.parameter_components()
        if components is not None:
            counts["components"] = components
        return counts

    def parameter_components(self) -> dict[str, int] | None:
        """Trainable parameters per component: the PEFT owner's ``parameter_groups`` (shared tensors counted
        once), then every other trainable parameter under its top-level module's name (e.g. the visual
        embedding); the counts sum to the trainable total. None when the method defines no breakdown."""
        hook = getattr(getattr(self, "peft_owner", None), "parameter_groups", None)
        if hook is None:
            return None
        seen: set[int] = set()
        out: dict[str, int] = {}
        for name, params in hook(self).items():
            fresh = [p for p in params if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in fresh)
            out[name] = sum(p.numel() for p in fresh)
        for name, p in self.named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                key = name.split(".", 1)[0]
                out[key] = out.get(key, 0) + p.numel()
        return out


def pretrained_backbone(model_class, name: str, **kwargs):
    """``model_class.from_pretrained(name, **kwargs)`` (a hub name or a local folder saved with ``save_pretrained``);
    a name that cannot be loaded is one sentence. Every family loads its language backbone through this."""
    try:
        return model_class.from_pretrained(name, **kwargs)
    except OSError as exc:
        raise DataError(f"cannot load the backbone '{name}' ({exc.__class__.__name__}); give a local folder saved "
                        "with save_pretrained or a reachable hub name.") from None


def pretrained_tokenizer(model_cfg):
    """``AutoTokenizer.from_pretrained`` of ``model.tokenizer`` (default: ``model.backbone``), a hub name or a local
    folder saved with ``save_pretrained``; a name that cannot be loaded is one sentence. Families add what they need
    (CLIP-BART its extra tokens, GPT-2 its pad token) in their own ``load_tokenizer``."""
    from transformers import AutoTokenizer

    name = model_cfg.tokenizer or model_cfg.backbone
    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as exc:
        raise DataError(f"cannot load the tokenizer '{name}' ({exc.__class__.__name__}); give a local folder "
                        "saved with save_pretrained or a hub name reachable from this machine.") from None
