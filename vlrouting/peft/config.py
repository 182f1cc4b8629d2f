"""Typed configuration of a PEFT attachment (saved as ``adapter_config.json`` beside the weights).

PETAL's three components (reference/petal_spec.md §5.4) are typed sub-sections: ``peft.dma`` (the ``dma``
method's factors), ``peft.aim`` and ``peft.sib`` (instruction experts and the information-bottleneck loss, honoured
by the ``dma`` method's model-level owner). Overrides address them with dotted keys: ``peft.dma.core=tucker``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from vlrouting.data.tasks.sets import default_tasks
from vlrouting.errors import ConfigError

Side = Literal["encoder", "decoder"]


def _choice(section: str, key: str, value, valid: tuple) -> None:
    if value not in valid:
        raise ConfigError(f"peft.{section}.{key} must be one of {', '.join(map(str, valid))}, got {value!r}.")


def _positive(section: str, obj, keys: tuple[str, ...]) -> None:
    bad = [f"peft.{section}.{k}={getattr(obj, k)!r}" for k in keys if not getattr(obj, k) >= 1]
    if bad:
        raise ConfigError(f"{', '.join(bad)} must be positive integers.")


def _sub_config(cls, value, section: str):
    """A sub-section given as a dict (YAML, adapter_config.json) becomes its dataclass; unknown keys are errors."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"peft.{section} must be a mapping of its keys, got {value!r}.")
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - valid)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in peft.{section}; valid keys: {', '.join(sorted(valid))}.")
    return cls(**value)


@dataclass
class DmaConfig:
    """PETAL's dynamic mode approximation (Eq. 2; reference §5.1), used by ``peft.method: dma``.

    - ``rank`` R of the factors U (R × d_in) and V (d_out × R), shared by every adapted matrix of one shape.
    - ``core``: ``cp`` (paper, Eq. 2: ΔW_n^m = V diag(p_n ⊙ λ^m) U), ``tucker`` (the released code: an R³ core
      per modality contracted with p_n) or ``petal_code_compat`` (the code's structure: U, V and core per
      modality, no λ).
    - ``gamma``: ``scalar`` — Γ_n multiplies the frozen W0_n x (not its bias); ``none`` — Γ = 1 (Table 4's V4).
    - ``dropout`` on U x (the code's 0.1); ``scale`` on the update (the code adds it unscaled: 1.0).
    - ``modalities``: how many modality ids the model family assigns (CLIP-BART: 0 text, 1 visual).
    """

    rank: int = 64
    core: Literal["cp", "tucker", "petal_code_compat"] = "cp"
    gamma: Literal["scalar", "none"] = "scalar"
    dropout: float = 0.1
    scale: float = 1.0
    modalities: int = 2

    def __post_init__(self) -> None:
        _positive("dma", self, ("rank", "modalities"))
        _choice("dma", "core", self.core, ("cp", "tucker", "petal_code_compat"))
        _choice("dma", "gamma", self.gamma, ("scalar", "none"))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"peft.dma.dropout must be in [0, 1), got {self.dropout!r}.")


@dataclass
class AimConfig:
    """PETAL's adaptive instruction mixture of experts (Eqs. 3-4; reference §5.2) on the encoder's text tokens.

    - ``instructions``: the instruction the experts read — ``task_only`` (the encoder text as the task gives it:
      prompt + question), ``task+views`` (plus Table 7's three view instructions of the task, one per line) or
      ``task+random`` (plus ``random_length`` learnable vectors instead of the views: Table 4's "random
      instruction").
    - ``experts`` K; ``expert``: ``affine`` (Eq. 3: γ_k ⊙ x + β_k) or ``bottleneck`` (Appendix E / the code:
      x + B_k A_k x, width ``bottleneck_dim``); ``init_noise`` σ breaks the experts' symmetry (zero-mean across
      experts, so the uniform mix is the identity at initialisation).
    - ``gate``: ``mlp`` (Eq. 4: a ``gate_hidden``-wide tanh MLP on [x; y_k], zero output layer) or ``uniform``
      (1/K, what every code version does); ``gate_granularity``: one gate per ``sequence`` or per ``token``.
    """

    enabled: bool = False
    instructions: Literal["task_only", "task+views", "task+random"] = "task+views"
    experts: int = 3
    expert: Literal["affine", "bottleneck"] = "affine"
    bottleneck_dim: int = 64
    gate: Literal["mlp", "uniform"] = "mlp"
    gate_granularity: Literal["sequence", "token"] = "sequence"
    gate_hidden: int = 64
    init_noise: float = 1e-3
    random_length: int = 24

    def __post_init__(self) -> None:
        _positive("aim", self, ("experts", "bottleneck_dim", "gate_hidden", "random_length"))
        _choice("aim", "instructions", self.instructions, ("task_only", "task+views", "task+random"))
        _choice("aim", "expert", self.expert, ("affine", "bottleneck"))
        _choice("aim", "gate", self.gate, ("mlp", "uniform"))
        _choice("aim", "gate_granularity", self.gate_granularity, ("sequence", "token"))
        if self.init_noise < 0:
            raise ConfigError(f"peft.aim.init_noise must be >= 0, got {self.init_noise!r}.")


@dataclass
class SibConfig:
    """PETAL's score-based information bottleneck (Eqs. 5-9; reference §5.3): an auxiliary training loss.

    - ``estimator``: ``vib`` (KL upper bound on I(Z;X), Barber-Agakov lower bound on I(Z;Y) through the frozen
      output embedding; works at B = 1) or ``club_mine`` (the unreleased code's CLUB on (z, y) and MINE on (x, z)).
    - ``weight`` w: the loss added to the task loss is w · L_SIB (fixed, not learned); ``eta`` η weighs I(Z;X).
    - ``pool``: ``score`` (Eq. 5: softmax of the instruction summary's scores over the tokens) or ``mean``;
      ``pool_over``: ``visual`` tokens or ``all`` valid tokens. ``z_dim``: the bottleneck width.
    - ``sample``: draw z = μ + σ ε while training (False: z = μ, like evaluation).
    """

    enabled: bool = False
    estimator: Literal["vib", "club_mine"] = "vib"
    weight: float = 0.1
    eta: float = 0.1
    z_dim: int = 64
    pool: Literal["score", "mean"] = "score"
    pool_over: Literal["visual", "all"] = "visual"
    sample: bool = True

    def __post_init__(self) -> None:
        _positive("sib", self, ("z_dim",))
        _choice("sib", "estimator", self.estimator, ("vib", "club_mine"))
        _choice("sib", "pool", self.pool, ("score", "mean"))
        _choice("sib", "pool_over", self.pool_over, ("visual", "all"))
        if self.weight < 0 or self.eta < 0:
            raise ConfigError(f"peft.sib.weight and peft.sib.eta must be >= 0, got {self.weight!r}, {self.eta!r}.")


@dataclass
class PeftConfig:
    """What to attach, where, and how it routes.

    - ``method``: a registered PEFT method (``adapter``, ``lora``, ``compacter``, ``hyperformer``,
      ``half_shared_adapter``, ``prompt``; see :mod:`vlrouting.peft.registry`).
    - ``tasks``: the task names; ``shared=True`` is VL-Adapter's *single* module shared by all tasks,
      ``shared=False`` one module per task selected by the batch's task (*multiple*).
    - ``routing``: a routing function name, a Table 8 mix (``comb1``–``comb4``) or an explicit {task: routing}.
    - ``route_sides``: which modules route. DESIGN §4: x_R from the ``encoder`` source feeds the decoder's
      modules only; the ``visual`` source feeds both sides. Modules on other sides run the plain path.
    - Adapter: bottleneck = d_model // ``reduction_factor`` (8 → 96 on bart-base), ``adapter_act`` gelu_new.
    - LoRA: rank ``r``, scaling ``lora_alpha / r``, dropout ``lora_dropout`` on the input (and on x_R).
    - Compacter (reference §3.8): Down/Up are PHM layers with ``phm_dim`` = n (VL-Adapter's
      ``--hypercomplex_division``), each with its own n×n×n rule and a full (non-factorised) W; the rule is drawn
      from N(0, ``phm_init_range``). Bottleneck as the adapter's (``reduction_factor``).
    - Hyperformer (reference §3.8): a task embedding (``hyper_task_dim``) joined with a layer embedding goes through
      Linear(2·task_dim → ``hyper_hidden_dim``) → ReLU → Linear(→ ``hyper_code_dim``) → LayerNorm; the code
      generates each adapter's weights and biases. Needs ``shared: false`` (the task embedding selects the task).
    - Half-shared adapters: ``half_shared`` names the projection all tasks share (``up`` or ``down``); the other
      one is per task. Needs ``shared: false``.
    - Prompt tuning (reference §3.8): ``prompt_len`` embeddings through Linear(d → ``prompt_mid_dim``) → tanh →
      Linear(→ d), prepended to the encoder input; ``shared`` = one prompt for all tasks. No routing.
    - ``targets``: optional override of the per-architecture target table (list of [regex, side] or
      [regex, side, stream]).
    - ``dma``, ``aim``, ``sib``: PETAL's components (:class:`DmaConfig`, :class:`AimConfig`, :class:`SibConfig`);
      ``aim``/``sib`` need ``method: dma``, whose model-level owner carries them.
    - ``x_r_replace`` (paper Table B2): ``none`` keeps x_R; ``noise`` replaces it by fresh N(0, 1) noise every
      forward, ``ones`` by all-ones — only the routing input: the visual tokens or prefix the model reads stay
      real. One switch for every model family: it acts where x_R enters the shared
      :class:`~vlrouting.peft.RoutingState` (see :mod:`vlrouting.peft.state`). It belongs here, beside
      ``routing`` and ``route_sides``, because it changes what the routing functions read, not the backbone.
    """

    method: str = "adapter"
    tasks: list[str] = field(default_factory=default_tasks)
    shared: bool = True
    routing: str | dict[str, str] = "none"
    route_sides: list[str] = field(default_factory=lambda: ["decoder"])
    reduction_factor: int = 8
    adapter_act: str = "gelu_new"
    r: int = 128
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    init_std: float = 0.02
    targets: list[list[str]] | None = None
    phm_dim: int = 2
    phm_init_range: float = 0.01
    hyper_task_dim: int = 512
    hyper_hidden_dim: int = 128
    hyper_code_dim: int = 8
    half_shared: Literal["up", "down"] = "up"
    prompt_len: int = 40
    prompt_mid_dim: int = 800
    x_r_replace: str = "none"
    dma: DmaConfig = field(default_factory=DmaConfig)
    aim: AimConfig = field(default_factory=AimConfig)
    sib: SibConfig = field(default_factory=SibConfig)

    def __post_init__(self) -> None:
        self.dma = _sub_config(DmaConfig, self.dma, "dma")
        self.aim = _sub_config(AimConfig, self.aim, "aim")
        self.sib = _sub_config(SibConfig, self.sib, "sib")
        on = [name for name in ("aim", "sib") if getattr(self, name).enabled]
        if on and self.method != "dma":
            raise ConfigError(f"peft.{on[0]}.enabled needs peft.method=dma (its model-level owner carries "
                              f"{' and '.join(on)}); got method '{self.method}'.")
        if not self.tasks:
            raise ConfigError(f"peft.tasks is empty; list at least one task, e.g. {default_tasks()}.")
        bad = [s for s in self.route_sides if s not in ("encoder", "decoder")]
        if bad:
            raise ConfigError(f"peft.route_sides has unknown side(s) {bad}; use 'encoder' and/or 'decoder'.")
        if self.reduction_factor < 1 or self.r < 1:
            raise ConfigError("peft.reduction_factor and peft.r must be positive integers.")
        sizes = ("phm_dim", "hyper_task_dim", "hyper_hidden_dim", "hyper_code_dim", "prompt_len", "prompt_mid_dim")
        bad = [f"peft.{k}={getattr(self, k)!r}" for k in sizes if not getattr(self, k) >= 1]
        if bad:
            raise ConfigError(f"{', '.join(bad)} must be positive integers.")
        if self.half_shared not in ("up", "down"):
            raise ConfigError(f"peft.half_shared must be 'up' or 'down' (the projection all tasks share), "
                              f"got {self.half_shared!r}.")
        from vlrouting.peft.registry import _routes, get_peft_method
        from vlrouting.peft.state import X_R_REPLACEMENTS

        if self.x_r_replace not in X_R_REPLACEMENTS:
            raise ConfigError(f"peft.x_r_replace must be one of {', '.join(X_R_REPLACEMENTS)}, "
                              f"got {self.x_r_replace!r}.")
        if self.x_r_replace != "none" and not _routes(self.routing):
            raise ConfigError(f"peft.x_r_replace={self.x_r_replace} replaces the routing input x_R, but "
                              f"peft.routing={self.routing!r} routes no task, so nothing reads x_R; set a routing "
                              "function (Table B2 uses proj) or peft.x_r_replace=none.")
        get_peft_method(self.method).check(self)  # unknown methods and combinations the method cannot honour

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PeftConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown PEFT config key(s) {unknown}; valid keys: {sorted(known)}.")
        return cls(**data)
