"""PETAL's adaptive instruction mixture of experts (AIM; Zhai et al. Eqs. 3-4, Table 7; reference/petal_spec.md §2, §5.2).

AIM rewrites the **text segment** of an encoder's input (the model family hands it over after its embedding
LayerNorm through the owner's ``encoder_text`` hook; visual tokens never pass through it):

1. **Instructions** (``peft.aim.instructions``). ``task_only``: the text as the task gives it — the task prompt and
   the question/statement (``vqa: …``), or the question alone where prompts are off (VL-Adapter's ``multiple_*``
   setting; for captioning then only ``<s></s>``). ``task+views`` (default): Table 7's three "view"
   instructions of the task, one per line ("stack them line by line in a text paragraph", §3.3), tokenized once
   and embedded by the host exactly like text (word + learned positions + embedding LayerNorm, frozen), are
   appended after the text, so the task type is visible even without prompts. ``task+random``: ``random_length``
   learnable vectors (N(0, 0.02), in word-embedding space, through the same positions + LayerNorm) per task
   instead of the views — Table 4's "random instruction" ablation.
2. **Experts** over every valid text token x (prompt, question and instructions; padding is left untouched):
   ``affine`` y_k = γ_k ⊙ x + β_k (Eq. 3) or ``bottleneck`` y_k = x + B_k (A_k x + a_k) + b_k (Appendix E / the
   released code, made identity-safe: B_k = 0, b_k = 0; no non-linearity, as in the code).
3. **Gate** (Eq. 4): g = softmax_k G(x, y_k) with G(x, y) = w₂ᵀ tanh(W₁[x; y] + b₁) + b₂ (``mlp``; w₂ = 0, b₂ = 0
   so g is uniform at initialisation) or g_k = 1/K (``uniform``, what every code version does). ``sequence``
   granularity gates on the masked means x̄ and ȳ_k = expert_k(x̄) (the experts are affine, so this is the masked
   mean of y_k); ``token`` gates every token. Output I = Σ_k g_k y_k.

Identity at initialisation: the symmetry-breaking noise σ (``init_noise``) of the affine experts is made zero-mean
across experts, so the uniform mix Σ_k y_k / K equals x while the experts still differ (identical experts under a
symmetric gate would receive identical gradients for ever). With affine experts the mix is a gated,
input-conditioned FiLM, I = (Σ g_k γ_k) ⊙ x + Σ g_k β_k.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlrouting.peft.state import masked_mean

#: Table 7's "original instruction" trios. The captioning trio also serves tasks the paper has no template for
#: (NLVR², reference §5.2); the VQA trio serves question-answering tasks. The paper prints two of them without a
#: question mark; all six end with one here.
VIEW_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "qa": ("What objects are in the picture?", "What color are the objects in the picture?",
           "What are the characteristics of the objects in the picture?"),
    "caption": ("What objects are in the picture?", "What are the characteristics of the objects in the picture?",
                "What is the relationship between the objects in the picture?"),
}
#: Tasks that read the question-answering trio; every other task reads the captioning trio.
QA_TASKS = frozenset({"vqa", "gqa", "okvqa", "aokvqa", "textvqa"})


def view_text(task: str) -> str:
    """The view instructions of ``task``, one per line."""
    return "\n".join(VIEW_INSTRUCTIONS["qa" if task in QA_TASKS else "caption"])


class AIM(nn.Module):
    def __init__(self, cfg, d: int, tasks: list[str]):
        super().__init__()
        self.cfg = cfg
        k = cfg.experts
        if cfg.expert == "affine":
            self.gamma = nn.Parameter(torch.empty(k, d))
            self.beta = nn.Parameter(torch.empty(k, d))
        else:
            m = cfg.bottleneck_dim
            self.down = nn.Parameter(torch.empty(k, m, d))
            self.down_bias = nn.Parameter(torch.empty(k, m))
            self.up = nn.Parameter(torch.empty(k, d, m))
            self.up_bias = nn.Parameter(torch.empty(k, d))
        self.gate = None
        if cfg.gate == "mlp":
            self.gate = nn.Sequential(nn.Linear(2 * d, cfg.gate_hidden), nn.Tanh(), nn.Linear(cfg.gate_hidden, 1))
        self.instruction = None
        if cfg.instructions == "task+random":
            self.instruction = nn.ParameterDict({t: nn.Parameter(torch.empty(cfg.random_length, d)) for t in tasks})
        self._view_ids: dict[str, list[int]] | None = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        sigma = self.cfg.init_noise
        if self.cfg.expert == "affine":
            for p, centre in ((self.gamma, 1.0), (self.beta, 0.0)):
                p.normal_(0.0, sigma)
                p.sub_(p.mean(dim=0, keepdim=True)).add_(centre)  # zero-mean across experts: mix = identity
        else:
            bound = 1.0 / math.sqrt(self.down.shape[-1])
            self.down.uniform_(-bound, bound)  # kaiming-uniform (nn.Linear's default)
            self.down_bias.uniform_(-bound, bound)
            self.up.zero_()
            self.up_bias.zero_()
        if self.gate is not None:
            w1 = self.gate[0].weight
            a = math.sqrt(6.0 / (w1.shape[0] + w1.shape[1]))
            w1.uniform_(-a, a)  # xavier-uniform
            self.gate[0].bias.zero_()
            self.gate[2].weight.zero_()
            self.gate[2].bias.zero_()
        if self.instruction is not None:
            for p in self.instruction.values():
                p.normal_(0.0, 0.02)

    def bind_tokenizer(self, tokenizer) -> None:
        """Tokenize the view instructions once (``task+views``); without a tokenizer the forward refuses."""
        if self.cfg.instructions == "task+views" and tokenizer is not None:
            self._view_ids = {}
            self._tokenizer = tokenizer

    def _views(self, task: str) -> list[int]:
        if self._view_ids is None:
            raise RuntimeError("peft.aim.instructions=task+views needs the tokenizer: build the model with "
                               "tokenizer=... (the trainer does) or use instructions task_only / task+random")
        if task not in self._view_ids:
            self._view_ids[task] = list(self._tokenizer(view_text(task))["input_ids"])
        return self._view_ids[task]

    # ------------------------------------------------------------------ forward
    def instruction_segment(self, task: str | None, batch: int, host, like: torch.Tensor) -> torch.Tensor | None:
        """(B, L_i, d) embedded instructions appended after the text, or None for ``task_only``."""
        kind = self.cfg.instructions
        if kind == "task_only":
            return None
        if task is None:
            raise RuntimeError(f"peft.aim.instructions={kind} depends on the task; call the model with a task")
        if kind == "task+views":
            ids = torch.tensor([self._views(task)], dtype=torch.long, device=like.device)
            seg = host.embed_text(input_ids=ids)
        else:
            if task not in self.instruction:
                raise KeyError(f"task '{task}' has no random instruction; configured tasks: "
                               f"{', '.join(self.instruction)}")
            seg = host.embed_text(inputs_embeds=self.instruction[task][None].to(like.dtype))
        return seg.to(like.dtype).expand(batch, -1, -1)

    def experts_of(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) → (..., K, d): every expert's output."""
        if self.cfg.expert == "affine":
            return x.unsqueeze(-2) * self.gamma.to(x.dtype) + self.beta.to(x.dtype)
        h = torch.einsum("...d,kmd->...km", x, self.down.to(x.dtype)) + self.down_bias.to(x.dtype)
        return x.unsqueeze(-2) + torch.einsum("...km,kdm->...kd", h, self.up.to(x.dtype)) + self.up_bias.to(x.dtype)

    def mix(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Σ_k g_k y_k for x (B, L, d) and gates g (B, 1 or L, K), without materialising (B, L, K, d)."""
        if self.cfg.expert == "affine":
            return x * torch.matmul(g, self.gamma.to(x.dtype)) + torch.matmul(g, self.beta.to(x.dtype))
        h = torch.einsum("bld,kmd->blkm", x, self.down.to(x.dtype)) + self.down_bias.to(x.dtype)
        return (x + torch.einsum("blkm,kdm->bld", h * g.unsqueeze(-1), self.up.to(x.dtype))
                + torch.matmul(g, self.up_bias.to(x.dtype)))

    def gates(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, k = x.shape[0], self.cfg.experts
        if self.gate is None:
            return x.new_full((b, 1, k), 1.0 / k)
        if self.cfg.gate_granularity == "sequence":
            x = masked_mean(x, mask)  # (B, 1, d); the experts are affine, so ȳ_k = expert_k(x̄)
        y = self.experts_of(x)  # (B, 1 or L, K, d)
        scores = self.gate(torch.cat([x.unsqueeze(-2).expand_as(y), y], dim=-1)).squeeze(-1)
        return torch.softmax(scores.float(), dim=-1).to(x.dtype)

    def forward(self, text: torch.Tensor, mask: torch.Tensor, task: str | None, host):
        seg = self.instruction_segment(task, text.shape[0], host, text)
        if seg is not None:
            text = torch.cat([text, seg], dim=1)
            mask = torch.cat([mask, mask.new_ones(seg.shape[:2])], dim=1)
        out = self.mix(text, self.gates(text, mask))
        return torch.where(mask.bool().unsqueeze(-1), out, text), mask

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        experts = [self.gamma, self.beta] if self.cfg.expert == "affine" else [
            self.down, self.down_bias, self.up, self.up_bias]
        groups = {"aim.experts": experts, "aim.gate": list(self.gate.parameters()) if self.gate is not None else []}
        if self.instruction is not None:
            groups["aim.random_instruction"] = list(self.instruction.values())
        return groups
