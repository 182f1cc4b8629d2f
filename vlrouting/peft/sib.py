"""PETAL's score-based information bottleneck (SIB; Zhai et al. Eqs. 5-9; reference/petal_spec.md §3, §5.3).

An auxiliary training loss on the encoder's last hidden states H (B × L × d), returned by the ``dma`` method's
owner through ``aux_losses()`` as ``{"sib": w · L_SIB}``; the trainer adds it to the task loss and logs it on its
own. The model family provides the per-token ``modality_ids`` of the encoder stream (0 = text, the instruction;
other ids = non-text, e.g. visual), its ``attention_mask``, and observes ``encoder_hidden``, ``encoder_inputs`` and
``labels`` (:class:`vlrouting.peft.RoutingState`).

**Score-based pooling** (Eq. 5, parameter-free; ``pool: score``)::

    q_b  = masked-mean_{i ∈ text} H_{b,i}                      (instruction summary)
    α_bi = softmax_{i ∈ pool}(⟨q_b, H_{b,i}⟩ / √d),  Ĥ_b = Σ_i α_bi H_{b,i}

over the visual tokens (``pool_over: visual``; rows without one fall back to all valid tokens) or all valid
tokens; ``pool: mean`` is the code's mean pooling.

**vib** (default): μ = W_μ Ĥ + b_μ, log σ² = W_σ Ĥ + b_σ (width ``z_dim``), z = μ + σ ⊙ ε while training
(``sample``), μ otherwise. KL(N(μ, σ²) ‖ N(0, I)) bounds I(Z; X) from above; the Barber-Agakov bound
Î_ZY = Σ_v y_v log softmax(E (W_o z + b_o))_v bounds I(Z; Y) from below up to H(Y), with y the bag of words of the
target (pad, -100, bos, eos and the decoder start token excluded — the code counted padding as token 0) and E the
host's frozen output embedding (no vocabulary-sized trainable weights). L_SIB = mean_b(−Î_ZY + η · KL).
Works at batch size 1 and on single-task batches.

**club_mine** (the unreleased code's ``ModelWrapper``, §3.2): CLUB on (Ĥ, y) — μ_y and tanh log-variance through
Linear(d→32)-ReLU-Linear(32→d) and the frozen output embedding instead of the code's two 32×V layers — and MINE
on (x̄_vis, Ĥ), x̄_vis the mean of the visual tokens' encoder inputs; obj = CLUB − η · MINE and, as the paper's
"maximise" wording implies, L_SIB = −obj. The estimator roles are inverted w.r.t. sound IB practice (CLUB is an
upper bound, used for the term to maximise; MINE a lower bound, for the term to minimise) and the batch shuffles
mix examples; kept only to reproduce the code. Estimator weights: xavier-normal, zero bias (the code's init).

With several processes the loss is the mean over the *global* batch: each rank scales its mean by its share of the
examples (all-reduced), so DDP's gradient average equals one process with the same batch (``vib``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlrouting.peft.state import masked_mean

IGNORE_INDEX = -100
CLUB_HIDDEN = 32  # the code's CLUBSample width
MINE_HIDDEN = 64  # the code's MINE width


def _init(module: nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                m.bias.zero_()


def global_share(n_local: int, device: torch.device) -> float | torch.Tensor:
    """n_local · world / n_global: turns a local mean into this rank's part of the global mean under DDP."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 1.0
    total = torch.tensor(float(n_local), device=device)
    dist.all_reduce(total)
    return n_local * dist.get_world_size() / total.clamp_min(1.0)


class SIB(nn.Module):
    def __init__(self, cfg, d: int):
        super().__init__()
        self.cfg = cfg
        if cfg.estimator == "vib":
            self.mu = nn.Linear(d, cfg.z_dim)
            self.logvar = nn.Linear(d, cfg.z_dim)
            self.out = nn.Linear(cfg.z_dim, d)
        else:
            self.club_mu = nn.Sequential(nn.Linear(d, CLUB_HIDDEN), nn.ReLU(), nn.Linear(CLUB_HIDDEN, d))
            self.club_logvar = nn.Sequential(nn.Linear(d, CLUB_HIDDEN), nn.ReLU(), nn.Linear(CLUB_HIDDEN, d))
            self.mine = nn.Sequential(nn.Linear(2 * d, MINE_HIDDEN), nn.ReLU(), nn.Linear(MINE_HIDDEN, 1))
        _init(self)

    # ------------------------------------------------------------------ pieces
    def pool(self, hidden: torch.Tensor, modality: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Ĥ (B, d) from H (B, L, d): Eq. 5's instruction-conditioned scores, or the mean."""
        valid = mask.bool()
        over = valid & (modality != 0) if self.cfg.pool_over == "visual" else valid
        over = torch.where(over.any(dim=1, keepdim=True), over, valid)  # no visual token: pool every valid one
        if self.cfg.pool == "mean":
            return masked_mean(hidden, over).squeeze(1)
        text = valid & (modality == 0)
        q = masked_mean(hidden, text)  # (B, 1, d)
        scores = (hidden * q).sum(-1).float() / math.sqrt(hidden.shape[-1])
        alpha = torch.softmax(scores.masked_fill(~over, float("-inf")), dim=-1).to(hidden.dtype)
        return torch.einsum("bl,bld->bd", alpha, hidden)

    @staticmethod
    def target_tokens(labels: torch.Tensor, exclude: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids with ignored positions set to 0, float mask of the bag-of-words tokens)."""
        keep = labels != IGNORE_INDEX
        for t in exclude:
            keep &= labels != t
        return labels.clamp_min(0), keep.float()

    def _vib(self, pooled, labels, keep, emb):
        mu, logvar = self.mu(pooled).float(), self.logvar(pooled).float()
        z = mu
        if self.training and self.cfg.sample:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(-1)  # (B,)
        logp = torch.log_softmax(torch.matmul(self.out(z.to(pooled.dtype)), emb.t()).float(), dim=-1)
        per_token = logp.gather(1, labels) * keep  # y_v log p_v, y = bag of words (counts / n)
        i_zy = per_token.sum(1) / keep.sum(1).clamp_min(1.0)
        return -i_zy + self.cfg.eta * kl

    def _club_mine(self, pooled, labels, keep, emb, x_vis):
        b, v = pooled.shape[0], emb.shape[0]
        y = torch.zeros(b, v, device=pooled.device).scatter_add_(1, labels, keep)
        y = y / keep.sum(1, keepdim=True).clamp_min(1.0)
        mu = torch.matmul(self.club_mu(pooled), emb.t()).float()
        logvar = torch.tanh(torch.matmul(self.club_logvar(pooled), emb.t()).float())
        shuffled = y[torch.randperm(b, device=y.device)]
        pos = -((mu - y) ** 2) / (logvar.exp() + 1e-6)
        neg = -((mu - shuffled) ** 2) / (logvar.exp() + 1e-6)
        club = (pos.sum(-1) - neg.sum(-1)) / 2.0  # (B,)
        t_joint = self.mine(torch.cat([x_vis, pooled], dim=-1)).float().squeeze(-1)
        z_marg = pooled[torch.randint(0, b, (b,), device=pooled.device)]  # the code samples with replacement
        t_marg = self.mine(torch.cat([x_vis, z_marg], dim=-1)).float().squeeze(-1)
        mine = t_joint.mean() - (torch.logsumexp(t_marg, dim=0) - math.log(b))
        return -(club - self.cfg.eta * mine)

    # ------------------------------------------------------------------ the loss
    def loss(self, state, host) -> torch.Tensor:
        """w · L_SIB for the forward recorded in ``state`` (module docstring)."""
        hidden = state.observed["encoder_hidden"]
        tokens = state.tokens["encoder"]
        modality, mask = tokens["modality_ids"], tokens["attention_mask"]
        if isinstance(modality, int):
            modality = torch.full(mask.shape, modality, dtype=torch.long, device=mask.device)
        pooled = self.pool(hidden, modality, mask)
        labels, keep = self.target_tokens(state.observed["labels"], host.special_token_ids())
        emb = host.output_embeddings().to(pooled.dtype)
        if self.cfg.estimator == "vib":
            per_example = self._vib(pooled, labels, keep, emb)
        else:
            vis = mask.bool() & (modality != 0)
            x_vis = masked_mean(state.observed["encoder_inputs"], vis).squeeze(1)
            per_example = self._club_mine(pooled, labels, keep, emb, x_vis)
        return self.cfg.weight * per_example.mean() * global_share(per_example.shape[0], pooled.device)
