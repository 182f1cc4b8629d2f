"""Model family ``vit_roberta`` — a frozen ViT and RoBERTa with a VQA classifier, PEFT modules with routing inside
RoBERTa; it serves the ``classify`` objective (task ``vqa_cls``; routing paper §4, Tables 1–3, B2, B4).

Wraps Hugging Face ``RobertaModel`` and ``ViTModel`` (no modeling file is copied) and follows
reference/routing_official_spec.md:

- x_R (§3.1): the ViT pooler output tanh(dense(LN(h_CLS))), (B, 1, d), un-normalised — read from the offline
  ``vit_features`` files (``features=offline``) or computed by the frozen ViT inside the model from the images
  (``features=online``; :mod:`vlrouting.models.vit`). The same vector is the one-token visual prefix and the x_R of
  every PEFT module (routing on the encoder side, per projection over r dims; §1.2, §1.3).
- Input (§3.3): [visual prefix ; question (≤ 19 tokens)] as ``inputs_embeds``, mask = [1 ; text mask].
- PEFT (§2.1, §2.2; targets in :mod:`vlrouting.peft.targets`): LoRA on ``query``/``value`` (A + B; the wrapped q/v
  base biases train too — the released layer freezes only ``.weight`` and the paper's own counts include them),
  or two adapters per layer (after the attention output and the FFN output). Each sub-layer's dropout is folded
  into its dense layer (:class:`DenseDropout`), so an adapter wrapping the dense sits *after* the dropout and
  before the residual LayerNorm, as in the released code and Houlsby et al.
- Classifier (§4.1): Linear(d → 2d) → LayerNorm → GELU → Linear(2d → A) (``classifier=mlp_ln_gelu``;
  5,993,529 parameters at d = 768, A = 3,129), trained with the PEFT modules; HF's init N(0, 0.02), zero biases.

Two recipes (``recipe``), each difference from the released code one typed switch (``None`` = the recipe's value):

======================  ============  ===============  =====================================================
switch                  paper         released         released code (spec section)
======================  ============  ===============  =====================================================
``embed_twice``         False         True             text through ``roberta.embeddings`` and then again with
                                                       the prefix as ``inputs_embeds`` (§3.3, §6.8)
``classifier_input``    ``cls``       ``prefix_pooler`` the classifier reads RoBERTa's pooler tanh(dense(h_0))
                                                       at the *visual* position 0 — random (roberta-base ships
                                                       no pooler weights) and frozen (§4.1, §6.9); ``cls``
                                                       reads the final state of the text's ``<s>`` (position 1)
``adapter_residual``    True          False            adapters without their inner residual (§6.10)
``train_layer_norms``   False         True             every encoder LayerNorm trains (§6.12; +36,864 at base)
``reshuffle_each_epoch`` True         False            the same sample order every epoch (§6.19)
``headline``            ``official``  ``soft``         the soft score Σ label[pred]/N is the reported
                                                       accuracy (§5.3, §6.18)
======================  ============  ===============  =====================================================

The paper recipe is the paper's text with those fixed: embeddings applied once (so the prefix gets RoBERTa's first
position, token type 0 and the embedding LayerNorm, the text the next positions), a classifier on the sequence
token, standard (residual) adapters, only the PEFT modules and the classifier trained, a fresh order each epoch,
the official VQA accuracy as headline. Not switches (the same in both): routing replaces the plain bottleneck
path, x_t and x_v share W_down (bias included), LoRA α = r and dropout 0 (set in the configs), the released
scripts' omission of ``--use_routing`` (§6.11: we route when routing is configured). Table B2's ablation (§1.7) is
``peft.x_r_replace=noise|ones``: it replaces the x_R this model puts into the routing state, never the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
from torch import nn

from vlrouting.data.layout import IMAGE_KIND, DataSpec
from vlrouting.errors import ConfigError, DataError
from vlrouting.models.base import FamilyConfig, FamilyModel, ModelOutput, pretrained_backbone
from vlrouting.models.registry import register_family
from vlrouting.peft import PeftConfig, RoutingState, attach_peft, count_parameters, peft_parameters, peft_wrappers

Recipe = Literal["paper", "released"]
FeatureSource = Literal["offline", "online"]
ClassifierInput = Literal["cls", "prefix_pooler"]
ClassifierLayout = Literal["mlp_ln_gelu", "mlp_gelu_ln", "linear"]
Headline = Literal["official", "soft"]

#: Each released-code quirk: switch → (paper recipe, released recipe). One entry per item of spec §6 that applies.
RECIPE_SWITCHES: dict[str, tuple[Any, Any]] = {
    "embed_twice": (False, True),
    "classifier_input": ("cls", "prefix_pooler"),
    "adapter_residual": (True, False),
    "train_layer_norms": (False, True),
    "reshuffle_each_epoch": (True, False),
    "headline": ("official", "soft"),
}
RECIPES = ("paper", "released")
_CHOICES = {"recipe": RECIPES, "features": ("offline", "online"), "classifier_input": ("cls", "prefix_pooler"),
            "classifier": ("mlp_ln_gelu", "mlp_gelu_ln", "linear"), "headline": ("official", "soft")}
PREFIX_TOKENS = 1  # the one-token visual prefix


@dataclass
class ViTRobertaConfig(FamilyConfig):
    """How to build ViT+RoBERTa. ``backbone``/``tokenizer``/``vit`` are hub names or local ``save_pretrained``
    folders; ``arch``/``vit_arch`` name the architecture used without weights (default: the same names, resolved by
    :mod:`vlrouting.models.arch`)."""

    family: str = "vit_roberta"
    backbone: str = "roberta-base"
    tokenizer: str | None = None
    arch: str | None = None
    vit: str = "google/vit-base-patch16-224-in21k"
    vit_arch: str | None = None
    features: FeatureSource = "offline"  # offline: <DS>/vit_features/*.h5; online: images through the frozen ViT
    feat_dim: int | None = None  # x_R width; default: the ViT's hidden size (must equal RoBERTa's)
    num_answers: int = 3129  # the answer vocabulary (trainval_ans2label.json); checked against the data
    classifier: ClassifierLayout = "mlp_ln_gelu"
    recipe: Recipe = "paper"
    embed_twice: bool | None = None
    classifier_input: ClassifierInput | None = None
    adapter_residual: bool | None = None
    train_layer_norms: bool | None = None
    reshuffle_each_epoch: bool | None = None
    headline: Headline | None = None
    dropout: float | None = None  # override RoBERTa's hidden and attention dropout (None keeps the backbone's)
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        for key, valid in _CHOICES.items():
            value = getattr(self, key)
            if value is not None and value not in valid:
                raise ConfigError(f"model.{key} must be one of {', '.join(valid)}, got '{value}'.")
        column = RECIPES.index(self.recipe)
        for key, values in RECIPE_SWITCHES.items():
            if getattr(self, key) is None:
                setattr(self, key, values[column])
        if self.num_answers < 1:
            raise ConfigError(f"model.num_answers must be at least 1, got {self.num_answers}.")

    # ------------------------------------------------------------------ contract
    def visual_width(self) -> int:
        if self.feat_dim is not None:
            return int(self.feat_dim)
        from vlrouting.models.vit import vit_width

        try:
            return vit_width(self.vit_arch or self.vit)
        except ConfigError:
            raise ConfigError(f"cannot tell the width of the ViT '{self.vit}' without its config; set model.feat_dim "
                              "(768 for ViT-B, 1024 for ViT-L) or model.vit_arch.") from None

    def max_text_positions(self) -> int:
        """Question tokens that fit RoBERTa's learned positions beside the prefix (511 for roberta-base)."""
        from vlrouting.models.arch import arch_dict

        try:
            arch = arch_dict(self.arch or self.backbone)
        except ConfigError:
            return 511
        return int(arch.get("max_position_embeddings", 514)) - int(arch.get("pad_token_id", 1)) - 1 - PREFIX_TOKENS

    def data_spec(self) -> DataSpec:
        """Pooled ViT vectors (1 × d) offline, or the images (224 × 224 × 3) online; the answer-vocabulary width;
        the recipe's headline score and epoch order."""
        online = self.features == "online"
        return DataSpec(feature_kind=IMAGE_KIND if online else "vit", n_boxes=1,
                        feat_dim=3 if online else self.visual_width(), max_text_positions=self.max_text_positions(),
                        num_answers=self.num_answers, headline=self.headline,
                        reshuffle_each_epoch=self.reshuffle_each_epoch)

    def route_sides(self) -> list[str]:
        """Every PEFT module sits in the RoBERTa encoder and receives x_R."""
        return ["encoder"]


class DenseDropout(nn.Linear):
    """A RoBERTa sub-layer's dense layer with the sub-layer's dropout folded in: ``dropout(W x + b)``.

    The parameters (and their state-dict names) are the dense layer's; the sub-layer's own dropout becomes the
    identity, so the sub-layer computes LN(dropout(W x + b) + input) exactly as before — but a PEFT wrapper around
    this module now sees the dropped output (adapter placement of the released code, spec §2.2).
    """

    def __init__(self, dense: nn.Linear, dropout: nn.Dropout):
        nn.Module.__init__(self)
        self.in_features, self.out_features = dense.in_features, dense.out_features
        self.weight, self.bias = dense.weight, dense.bias
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(nn.functional.linear(x, self.weight, self.bias))


def fold_sublayer_dropout(roberta: nn.Module) -> None:
    """Fold every ``RobertaSelfOutput``/``RobertaOutput`` dropout into its dense (:class:`DenseDropout`)."""
    for layer in roberta.encoder.layer:
        for sub in (layer.attention.output, layer.output):
            if not isinstance(sub.dense, DenseDropout):
                sub.dense = DenseDropout(sub.dense, sub.dropout)
                sub.dropout = nn.Identity()


def build_classifier(layout: str, d: int, num_answers: int) -> nn.Sequential:
    """The VQA head (spec §4.1): released ``mlp_ln_gelu`` = Linear(d, 2d) → LN → GELU → Linear(2d, A);
    ``mlp_gelu_ln`` is VL-T5's order; ``linear`` the released single Linear with dropout 0.1."""
    if layout == "linear":
        return nn.Sequential(nn.Dropout(0.1), nn.Linear(d, num_answers))
    mid = [nn.LayerNorm(2 * d), nn.GELU()] if layout == "mlp_ln_gelu" else [nn.GELU(), nn.LayerNorm(2 * d)]
    return nn.Sequential(nn.Linear(d, 2 * d), *mid, nn.Linear(2 * d, num_answers))


#: Seed of the frozen random pooler of the released recipe: it is never trained, hence never saved with the PEFT
#: weights, so it must come out the same whenever the model is rebuilt (a saved run then reloads exactly).
POOLER_SEED = 0


@torch.no_grad()
def _hf_init_(module: nn.Module, std: float, generator: torch.Generator | None = None) -> None:
    """HF's init of new modules: Linear N(0, std) with zero bias, LayerNorm 1 / 0 (explicit: runs after loading)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.weight.normal_(0.0, std, generator=generator)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.LayerNorm):
            m.weight.fill_(1.0)
            m.bias.zero_()


class ViTRoberta(FamilyModel):
    """[x_R ; question] through RoBERTa with routed PEFT modules, then the answer classifier."""

    def __init__(self, roberta, vit, model_cfg: ViTRobertaConfig, peft_cfg: PeftConfig | None):
        super().__init__()
        self.model_cfg = model_cfg
        self.peft_cfg = peft_cfg
        self.roberta = roberta
        self.vit = vit  # online mode only: frozen, eval mode, not trained or saved
        d = roberta.config.hidden_size
        self.classifier = build_classifier(model_cfg.classifier, d, model_cfg.num_answers)
        _hf_init_(self.classifier, roberta.config.initializer_range)
        fold_sublayer_dropout(roberta)
        self.routing_state = RoutingState()
        if peft_cfg is not None:
            attach_peft(self.roberta, peft_cfg, state=self.routing_state, model_type="roberta", owner_parent=self)
            if not model_cfg.adapter_residual:
                from vlrouting.peft.adapter import AdapterBlock

                for m in self.roberta.modules():
                    if isinstance(m, AdapterBlock):
                        m.residual = False
        self._mark_trainable()
        if model_cfg.gradient_checkpointing:
            self.roberta.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ------------------------------------------------------------------ trainable set
    def _mark_trainable(self) -> None:
        """Full fine-tuning (no PEFT): RoBERTa and the classifier. PEFT: its blocks (and model-level owner), the
        method's extra rule applied to the *wrapped* layers only (LoRA: the q/v biases), the classifier, and the
        encoder LayerNorms with ``train_layer_norms``. The ViT is always frozen."""
        from vlrouting.peft import get_peft_method

        for p in self.parameters():
            p.requires_grad_(False)
        if self.peft_cfg is None:
            self.roberta.requires_grad_(True)
        else:
            for _, p in peft_parameters(self.roberta):
                p.requires_grad_(True)
            owner = getattr(self, "peft_owner", None)
            if isinstance(owner, nn.Module):
                owner.requires_grad_(True)
            rule = get_peft_method(self.peft_cfg.method).also_trainable
            for wrapper in peft_wrappers(self.roberta):
                for name, p in wrapper.base_layer.named_parameters():
                    if rule(f"base_layer.{name}", p, wrapper.base_layer):
                        p.requires_grad_(True)
            if self.model_cfg.train_layer_norms:
                for m in self.roberta.encoder.modules():
                    if isinstance(m, nn.LayerNorm):
                        m.requires_grad_(True)
        self.classifier.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vit is not None:
            self.vit.eval()  # frozen encoder: no dropout, whatever the wrapper's mode
        return self

    # ------------------------------------------------------------------ forward
    def visual(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """x_R = the visual prefix, (B, 1, d): the stored pooled vectors, or the ViT pooler output of the images."""
        feats = batch["vis_feats"]
        if self.vit is not None:
            from vlrouting.models.vit import vit_pooled

            pixels = feats.permute(0, 3, 1, 2).to(next(self.vit.parameters()).dtype)
            feats = vit_pooled(self.vit, pixels)
        if feats.dim() != 3 or feats.shape[1] != PREFIX_TOKENS:
            raise DataError(f"vit_roberta expects one pooled visual vector per example, got visual input of shape "
                            f"{tuple(feats.shape)}; extract pooled ViT features (feature kind 'vit').")
        return feats.to(self.roberta.embeddings.word_embeddings.weight.dtype)

    def encode(self, batch: Mapping[str, Any]):
        """RoBERTa over [prefix ; question]; sets the task and x_R in the routing state."""
        prefix = self.visual(batch)
        # x_R is the prefix itself; peft.x_r_replace (Table B2) swaps it inside the routing state only
        self.routing_state.set(batch.get("task"), encoder=prefix)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        emb = self.roberta.embeddings
        # released: the text is embedded completely (positions from its ids, LN, dropout), then the whole
        # [prefix ; text] is embedded once more as inputs_embeds; paper: word embeddings only, embedded once
        text = emb(input_ids=ids) if self.model_cfg.embed_twice else emb.word_embeddings(ids)
        inputs = torch.cat([prefix, text], dim=1)
        full_mask = torch.cat([mask.new_ones(mask.shape[0], PREFIX_TOKENS), mask], dim=1)
        return self.roberta(inputs_embeds=inputs, attention_mask=full_mask)

    def forward(self, batch: Mapping[str, Any]) -> ModelOutput:
        """Answer logits (B, A) and the soft-score targets ``batch["labels"]`` (B, A)."""
        out = self.encode(batch)
        if self.model_cfg.classifier_input == "prefix_pooler":
            feat = out.pooler_output  # tanh(dense(h[:, 0])): the frozen pooler at the visual position
        else:
            feat = out.last_hidden_state[:, PREFIX_TOKENS]  # the text's <s>
        return ModelOutput(self.classifier(feat), batch.get("labels"), self.aux_losses())

    @torch.no_grad()
    def predict(self, task, batch: Mapping[str, Any], tokenizer) -> list[str]:
        """The arg-max answer string of each example."""
        index = self(batch).logits.argmax(dim=-1).tolist()
        vocab = batch["label2ans"]
        return [vocab[i] for i in index]

    # ------------------------------------------------------------------ reporting
    def parameter_report(self) -> dict:
        """VL-Adapter's trainable / total (total = everything the model holds, the online ViT included), plus the
        trainable parameters by group."""
        counts = count_parameters(self)
        groups = {"peft": 0, "peft_base_bias": 0, "classifier": 0, "layer_norms": 0, "other": 0}
        peft_ids = {id(p) for _, p in peft_parameters(self.roberta)}
        owner = getattr(self, "peft_owner", None)
        if isinstance(owner, nn.Module):
            peft_ids |= {id(p) for p in owner.parameters()}
        wrapped = {id(p) for w in peft_wrappers(self.roberta) for p in w.base_layer.parameters()}
        ln = {id(p) for m in self.roberta.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
        cls = {id(p) for p in self.classifier.parameters()}
        seen: set[int] = set()
        for p in self.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            key = ("peft" if id(p) in peft_ids else "peft_base_bias" if id(p) in wrapped else
                   "classifier" if id(p) in cls else "layer_norms" if id(p) in ln else "other")
            groups[key] += p.numel()
        counts["breakdown"] = groups
        return counts


# ---------------------------------------------------------------------- building
def load_tokenizer(model_cfg: ViTRobertaConfig):
    """RoBERTa's tokenizer (``<s> … </s>``, pad id 1)."""
    from vlrouting.models.base import pretrained_tokenizer

    name = model_cfg.tokenizer or model_cfg.backbone
    tok = pretrained_tokenizer(model_cfg)
    if tok.pad_token_id is None:
        raise DataError(f"the tokenizer '{name}' has no padding token; use RoBERTa's tokenizer (pad id 1).")
    return tok


def _dropout_overrides(model_cfg: ViTRobertaConfig) -> dict:
    if model_cfg.dropout is None:
        return {}
    return {"hidden_dropout_prob": model_cfg.dropout, "attention_probs_dropout_prob": model_cfg.dropout}


@register_family("vit_roberta", config=ViTRobertaConfig, load_tokenizer=load_tokenizer, objectives=("classify",),
                 description="frozen ViT pooler output as prefix and x_R + RoBERTa + VQA classifier (paper §4, "
                             "Tables 1-3, B2, B4)")
def build_vit_roberta(model_cfg: ViTRobertaConfig, peft_cfg: PeftConfig | None, *, pretrained: bool = True,
                      tokenizer=None, device: str | torch.device | None = None) -> ViTRoberta:
    """Build ViT+RoBERTa. ``pretrained=True`` loads RoBERTa (and, online, the ViT) with ``from_pretrained``;
    ``pretrained=False`` builds the packaged architectures without weights on ``device`` (``meta`` for counting).
    The released recipe's pooler is kept as loaded where the checkpoint has one, else drawn N(0, 0.02) as
    roberta-base's missing pooler was — from a generator seeded with :data:`POOLER_SEED`, not the global RNG: it
    never trains and is not saved with the PEFT weights, so every rebuild must draw the same values."""
    from transformers import RobertaConfig, RobertaModel

    from vlrouting.models.arch import hf_config
    from vlrouting.models.vit import load_vit, vit_config

    pooler = model_cfg.classifier_input == "prefix_pooler"
    if pretrained:
        roberta, info = pretrained_backbone(RobertaModel, model_cfg.backbone, add_pooling_layer=pooler,
                                            output_loading_info=True, **_dropout_overrides(model_cfg))
        if pooler and any("pooler" in k for k in info.get("missing_keys", ())):
            _hf_init_(roberta.pooler, roberta.config.initializer_range,
                      generator=torch.Generator().manual_seed(POOLER_SEED))
        vit = load_vit(model_cfg.vit) if model_cfg.features == "online" else None
        model = ViTRoberta(roberta, vit, model_cfg, peft_cfg)
    else:
        config = hf_config(model_cfg.arch or model_cfg.backbone, RobertaConfig)
        for key, value in _dropout_overrides(model_cfg).items():
            setattr(config, key, value)
        with torch.device(device or "cpu"):
            roberta = RobertaModel(config, add_pooling_layer=pooler)
            vit = None
            if model_cfg.features == "online":
                vit = load_vit(model_cfg.vit, pretrained=False, config=vit_config(model_cfg.vit_arch or model_cfg.vit),
                               device=device)
            model = ViTRoberta(roberta, vit, model_cfg, peft_cfg)
    d = roberta.config.hidden_size
    width = vit.config.hidden_size if vit is not None else model_cfg.visual_width()
    if width != d:
        raise ConfigError(f"the visual vectors are {width}-dimensional but RoBERTa '{model_cfg.backbone}' is "
                          f"{d}-dimensional; pair ViT-B with roberta-base and ViT-L with roberta-large (the "
                          "family has no projection between them, paper §4.1).")
    return model
