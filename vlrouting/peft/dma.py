"""PETAL's dynamic mode approximation (Zhai et al., Eq. 2; reference/petal_spec.md §1, §5.1) as PEFT method ``dma``.

Every adapted frozen linear n (W0_n, b0_n) and every token t of modality m(t) compute::

    h_t = Γ_n · W0_n x_t + b0_n + s · V · (M_n^{m(t)}ᵀ · drop(U x_t))

- **Model-level factors** (one :class:`DMAFactors` per shape group (d_in, d_out), owned once by
  :class:`PetalOwner`): U (R × d_in, kaiming-uniform) and V (d_out × R, zeros: ΔW = 0 at initialisation), shared by
  every adapted matrix and every modality, as the paper says (§3.2).
- **Per-matrix parameters** (one :class:`DMABlock` per wrapper, per task when ``shared`` is false): the mode vector
  p_n (the row of the paper's P that names this layer × projection; U(±√(6/(R+1))) like the code's xavier on
  (R, 1)) and Γ_n (stored as Γ_n − 1, see :class:`DMABlock`).
- The mode matrix M_n^m (``peft.dma.core``):

  - ``cp`` (Eq. 2 as written): M_n^m = diag(p_n ⊙ λ^m) with one coefficient vector λ^m ~ N(0, 1) per modality;
    ΔW_n^m = Σ_r λ^m_r p_{n,r} v_r u_rᵀ.
  - ``tucker`` (the released code, §1.3): M_n^m[i, j] = Σ_k C^m[i, j, k] p_n[k] with an R³ core per modality
    (xavier-uniform). A superdiagonal core C^m[r, r, r] = λ^m_r gives ``cp`` exactly.
  - ``petal_code_compat``: the code's structure — U^m, V^m and C^m per modality, no λ.

- **Modality per token** comes from the model family as explicit per-token ``modality_ids`` of the stream the
  module reads (:class:`vlrouting.peft.RoutingState`; a decoder's cross-attention keys/values read the encoder
  stream, :mod:`vlrouting.peft.targets`), never from positions; they follow generate()'s beam expansion.
- Routing (``peft.routing``) acts on the rank-R code drop(U x) exactly as on LoRA's A x (``cp`` and ``tucker``).

No backbone parameter trains besides the PEFT parameters (the family's always-trained parts aside): PETAL freezes
the whole pretrained model (§4.1). The owner also carries AIM and SIB when enabled (:mod:`vlrouting.peft.aim`,
:mod:`vlrouting.peft.sib`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlrouting.errors import ConfigError
from vlrouting.peft.base import RoutedWrapper, in_out_features
from vlrouting.peft.registry import _routes, register_peft_method
from vlrouting.routing import route


def group_key(d_in: int, d_out: int) -> str:
    return f"{d_in}x{d_out}"


class DMAFactors(nn.Module):
    """The factors one shape group shares: U, V and λ (``cp``) or the cores C (``tucker``, ``petal_code_compat``)."""

    def __init__(self, d_in: int, d_out: int, cfg):
        super().__init__()
        r, m = cfg.rank, cfg.modalities
        self.core_kind = cfg.core
        if cfg.core == "petal_code_compat":  # one U, V and core per modality
            self.U = nn.Parameter(torch.empty(m, r, d_in))
            self.V = nn.Parameter(torch.empty(m, d_out, r))
        else:
            self.U = nn.Parameter(torch.empty(r, d_in))
            self.V = nn.Parameter(torch.empty(d_out, r))
        if cfg.core == "cp":
            self.lam = nn.Parameter(torch.empty(m, r))
        else:
            self.core = nn.Parameter(torch.empty(m, r, r, r))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.U.shape[-1])  # kaiming_uniform(a=√5) on (R, d_in): nn.Linear's default
        self.U.uniform_(-bound, bound)
        self.V.zero_()
        if self.core_kind == "cp":
            self.lam.normal_(0.0, 1.0)  # "randomly initialised" (§3.2)
        else:
            r = self.core.shape[-1]
            self.core.uniform_(-math.sqrt(3.0) / r, math.sqrt(3.0) / r)  # xavier on (R, R, R): fan_in = fan_out = R²

    def mode_matrices(self, p: torch.Tensor) -> torch.Tensor:
        """(|M|, R, R): M^m = C^m ×₃ p (tucker / compat)."""
        return torch.einsum("mijk,k->mij", self.core.to(p.dtype), p)


class DMABlock(nn.Module):
    """One adapted matrix's p_n and Γ_n.

    Γ_n is stored as ``gamma_offset`` = Γ_n − 1 (zero at initialisation): the trainer decays every parameter
    whose name has no ``bias``, and decay on Γ itself would pull it toward 0, i.e. toward deleting the pretrained
    weights; on Γ − 1 it pulls toward the frozen model instead.
    """

    def __init__(self, rank: int, gamma: bool):
        super().__init__()
        self.p = nn.Parameter(torch.empty(rank))
        self.gamma_offset = nn.Parameter(torch.zeros(())) if gamma else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = math.sqrt(6.0 / (self.p.shape[0] + 1))  # the code's xavier_uniform on an (R, 1) tensor
        self.p.uniform_(-bound, bound)
        if self.gamma_offset is not None:
            self.gamma_offset.zero_()


_COMPAT_ROUTING = ("peft.dma.core=petal_code_compat has one U per modality, so there is no single rank code to "
                   "route; use core cp or tucker with routing, or peft.routing=none.")


def _frozen_backbone(name: str, param: nn.Parameter, owner: nn.Module) -> bool:
    """PETAL trains no backbone parameter besides its own (reference §4.1, §5.5 test 5)."""
    return False


class DMAWrapper(RoutedWrapper):
    """``Γ·W0 x + b0 + s·V M_nᵀ drop(U x)`` on one frozen linear (module docstring)."""

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refused when the config is built, before anything is written (vlrouting.peft.registry)."""
        if cfg.dma.core == "petal_code_compat" and _routes(cfg.routing):
            raise ConfigError(_COMPAT_ROUTING)

    def __init__(self, base_layer: nn.Module, cfg, **kw):
        fin, fout = in_out_features(base_layer)
        dma = cfg.dma
        super().__init__(base_layer, lambda: DMABlock(dma.rank, dma.gamma == "scalar"), tasks=cfg.tasks,
                         shared=cfg.shared, **kw)
        if self.owner is None:
            raise ConfigError("the dma method needs its model-level owner (attach it with vlrouting.peft.attach_peft).")
        self.group = group_key(fin, fout)
        self.core = dma.core
        self.scale = dma.scale
        self.dropout = nn.Dropout(dma.dropout) if dma.dropout > 0 else nn.Identity()
        if self.core == "petal_code_compat" and self.route_enabled and set(self.routing_map.values()) != {"none"}:
            raise ConfigError(_COMPAT_ROUTING)

    def _bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        if x.dim() != 3:
            raise RuntimeError(f"dma expects (batch, tokens, features) inputs, got shape {tuple(x.shape)}")
        _, block, routing, x_r = self.routing_inputs(x.shape[0])
        if block.gamma_offset is not None:  # Γ·(W0 x) + b0 = y + (Γ − 1)·(y − b0)
            bias = self._bias()
            g = block.gamma_offset.to(y.dtype)
            y = y + g * (y - bias.to(y.dtype) if bias is not None else y)
        ids = self.state.token_input(self.stream, "modality_ids", x.shape[0], x.shape[1])
        f = self.owner.dma[self.group]
        p = block.p.to(x.dtype)
        if self.core == "petal_code_compat":
            return y + self.scale * self._compat(x, f, p, ids)
        z = self.dropout(torch.matmul(x, f.U.to(x.dtype).t()))
        if routing != "none":
            z = route(routing, z, self.dropout(torch.matmul(x_r.to(x.dtype), f.U.to(x.dtype).t())))
        if self.core == "cp":
            coef = p * f.lam.to(x.dtype)[ids]  # (R,) for one modality, (B, L, R) per token: a gather
            w = z * coef
        else:
            mats = f.mode_matrices(p)  # (|M|, R, R)
            if isinstance(ids, int):
                w = torch.matmul(z, mats[ids])
            else:
                every = torch.einsum("blr,mrs->blms", z, mats)
                w = every.gather(2, ids[:, :, None, None].expand(-1, -1, 1, every.shape[-1])).squeeze(2)
        return y + self.scale * torch.matmul(w, f.V.to(x.dtype).t())

    def _compat(self, x: torch.Tensor, f: DMAFactors, p: torch.Tensor, ids) -> torch.Tensor:
        mats = f.mode_matrices(p)
        u, v = f.U.to(x.dtype), f.V.to(x.dtype)
        if isinstance(ids, int):
            z = self.dropout(torch.matmul(x, u[ids].t()))
            return torch.matmul(torch.matmul(z, mats[ids]), v[ids].t())
        m, d_out, r = v.shape
        z = self.dropout(torch.einsum("bld,mrd->blmr", x, u))
        w = torch.einsum("blmr,mrs->blms", z, mats)
        w = w * nn.functional.one_hot(ids, m).to(w.dtype)[..., None]  # keep each token's own modality
        return torch.matmul(w.flatten(2), v.permute(1, 0, 2).reshape(d_out, m * r).t())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stream={self.stream}, core={self.core}, group={self.group}"


class PetalOwner(nn.Module):
    """The ``dma`` method's model-level parameters: the factor groups, and AIM / SIB when enabled.

    Built once per model by :func:`vlrouting.peft.attach_peft` as ``PetalOwner(cfg, targets)``. AIM and SIB depend
    on the host model (its width, tokenizer, text embedding and output embedding), so they are built in
    :meth:`bind_host`, which the model family calls once after attaching, before it decides what trains.
    """

    def __init__(self, cfg, targets):
        super().__init__()
        self.cfg = cfg
        self.dma = nn.ModuleDict()
        for _, module, _ in targets:
            key = group_key(*in_out_features(module))
            if key not in self.dma:
                self.dma[key] = DMAFactors(*in_out_features(module), cfg.dma)
        self.aim = None
        self.sib = None
        object.__setattr__(self, "host", None)

    # ------------------------------------------------------------------ host-dependent parts
    def bind_host(self, host) -> None:
        """Build AIM / SIB for ``host`` (a :class:`vlrouting.models.FamilyModel`) and keep a plain reference."""
        object.__setattr__(self, "host", host)
        if self.cfg.aim.enabled and self.aim is None:
            from vlrouting.peft.aim import AIM

            self.aim = AIM(self.cfg.aim, host.hidden_size, self.cfg.tasks)
        if self.aim is not None:
            self.aim.bind_tokenizer(host.tokenizer)
        if self.cfg.sib.enabled and self.sib is None:
            from vlrouting.peft.sib import SIB

            self.sib = SIB(self.cfg.sib, host.hidden_size)

    # ------------------------------------------------------------------ hooks the model family calls
    def encoder_text(self, text: torch.Tensor, mask: torch.Tensor, task: str | None):
        """The encoder's text segment after AIM: instructions appended, experts mixed (identity without AIM)."""
        if self.aim is None:
            return text, mask
        return self.aim(text, mask, task, self.host)

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """``{"sib": w · L_SIB}`` after a forward with labels (nothing without SIB)."""
        if self.sib is None or self.host is None:
            return {}
        state = self.host.routing_state
        if "labels" not in state.observed or "encoder_hidden" not in state.observed:
            return {}
        return {"sib": self.sib.loss(state, self.host)}

    def parameter_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        """Each component's parameters (``python -m vlrouting params`` lists their counts)."""
        kind = self.cfg.dma.core
        groups: dict[str, list[nn.Parameter]] = {"dma.U": [], "dma.V": []}
        groups["dma.lambda" if kind == "cp" else "dma.core"] = []
        for f in self.dma.values():
            groups["dma.U"].append(f.U)
            groups["dma.V"].append(f.V)
            groups["dma.lambda" if kind == "cp" else "dma.core"].append(f.lam if kind == "cp" else f.core)
        blocks = [b for w in model.modules() if isinstance(w, DMAWrapper) and w.owner is self
                  for b in ([w.peft_block] if w.shared else w.peft_block.values())]
        groups["dma.p (per-matrix vectors)"] = [b.p for b in blocks]
        gammas = [b.gamma_offset for b in blocks if b.gamma_offset is not None]
        if gammas:
            groups["dma.gamma"] = gammas
        if self.aim is not None:
            groups.update(self.aim.parameter_groups())
        if self.sib is not None:
            groups["sib.estimator"] = list(self.sib.parameters())
        return groups


register_peft_method("dma", also_trainable=_frozen_backbone, owner=PetalOwner)(DMAWrapper)
