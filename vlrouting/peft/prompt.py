"""Prompt tuning: trainable embeddings prepended to the encoder input (reference §3.3, §3.8).

VL-Adapter's ``InputPrompts`` (``--encoder_prompt_len 40 --mid_dim 800``): P = ``prompt_len`` prompt vectors are
produced by the reparameterisation Embedding(P, d) → Linear(d → ``prompt_mid_dim``) → tanh → Linear(→ d) and put
in front of the encoder's text embeddings. They get no position embedding; like the text they pass through the
encoder's embedding LayerNorm, and the attention mask gains P ones in front (the decoder's cross-attention mask
is the encoder mask, so it gains them too). ``shared: true`` is ``--use_single_prompt`` (one prompt for every
task), otherwise one prompt per task selected by the batch's task. 1,261,088 parameters per prompt on bart-base.
Initialisation as VL-Adapter's models had it: the prompt modules sit inside its BART encoder, whose
``init_weights`` draws the Embedding and Linear weights N(0, 0.02) (``init_std``) with zero biases.

The method wraps no module (``wraps=False``): :class:`PromptOwner` is the model's ``peft_owner`` and offers
``encoder_prefix(task, batch_size)``, which a model family calls while assembling its encoder input. Its placement
(``prompt`` in :mod:`vlrouting.peft.targets`) names the encoder's embedding LayerNorm, which only sizes them.
Prompts have no bottleneck, so a routing request is a ConfigError (:meth:`vlrouting.peft.registry.PeftMethod.check`).
VL-Adapter trains only the prompt modules here (plus the always-trained visual embedding): no LayerNorms.
"""

from __future__ import annotations

import torch
from torch import nn

from vlrouting.errors import ConfigError
from vlrouting.peft.base import in_out_features
from vlrouting.peft.registry import no_backbone_params, register_peft_method


class InputPrompt(nn.Module):
    """P prompt vectors: Embedding(P, d) → Linear(d, mid) → tanh → Linear(mid, d)."""

    def __init__(self, length: int, d: int, mid: int, init_std: float = 0.02):
        super().__init__()
        self.embedding = nn.Embedding(length, d)
        self.mlp = nn.Sequential(nn.Linear(d, mid), nn.Tanh(), nn.Linear(mid, d))
        self.init_std = init_std
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.embedding.weight.normal_(0.0, self.init_std)  # Tensor methods, not nn.init: unaffected by init skipping
        for lin in (self.mlp[0], self.mlp[2]):
            lin.weight.normal_(0.0, self.init_std)
            lin.bias.zero_()

    def forward(self) -> torch.Tensor:
        """The prompt, (P, d)."""
        return self.mlp(self.embedding.weight)


def _width(module: nn.Module) -> int:
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    return in_out_features(module)[1]


@register_peft_method("prompt", also_trainable=no_backbone_params, wraps=False)
class PromptOwner(nn.Module):
    """One shared :class:`InputPrompt` or one per task; :meth:`encoder_prefix` hands the batch's prompt out."""

    def __init__(self, cfg, targets: list[tuple[str, nn.Module, str]]):
        super().__init__()
        widths = sorted({_width(module) for _, module, _ in targets})
        if len(widths) != 1:
            raise ConfigError(f"prompt tuning needs one encoder embedding width, found {widths} in the modules "
                              f"{[name for name, _, _ in targets]}; give peft.targets naming one embedding.")
        d = widths[0]
        self.shared = cfg.shared
        self.tasks = list(cfg.tasks)

        def make() -> InputPrompt:
            return InputPrompt(cfg.prompt_len, d, cfg.prompt_mid_dim, cfg.init_std)

        self.prompts = make() if cfg.shared else nn.ModuleDict({t: make() for t in self.tasks})

    def prompt_for(self, task: str | None) -> InputPrompt:
        if self.shared:
            if task is not None and task not in self.tasks:
                raise KeyError(f"task '{task}' has no prompt here; configured tasks: {', '.join(self.tasks)}")
            return self.prompts
        if task is None:
            raise RuntimeError("no task is set for this forward; per-task prompts need the batch's task")
        if task not in self.prompts:
            raise KeyError(f"task '{task}' has no prompt here; configured tasks: {', '.join(self.tasks)}")
        return self.prompts[task]

    def encoder_prefix(self, task: str | None, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (B, P, d), mask (B, P) of ones) to prepend to the encoder input of a ``task`` batch."""
        prompt = self.prompt_for(task)()
        embeds = prompt.unsqueeze(0).expand(batch_size, -1, -1)
        mask = torch.ones(batch_size, prompt.shape[0], dtype=torch.long, device=prompt.device)
        return embeds, mask

    def extra_repr(self) -> str:
        return "shared" if self.shared else f"per-task[{', '.join(self.tasks)}]"
