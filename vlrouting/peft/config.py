"""Typed configuration of a PEFT attachment (saved as ``adapter_config.json`` beside the weights)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from vlrouting.data.tasks.sets import default_tasks
from vlrouting.errors import ConfigError

Side = Literal["encoder", "decoder"]


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
    - ``targets``: optional override of the per-architecture target table (list of [regex, side]).
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

    def __post_init__(self) -> None:
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
