"""Model family ``vit_gpt2`` — a frozen ViT + frozen GPT-2 prefix language model for COCO captioning, serving the
``prefix_lm`` objective (paper §4.1, §4.3, Tables 4 and B5; reference/routing_official_spec.md §1–§6).

Wraps Hugging Face's ``GPT2LMHeadModel`` (no modeling file is copied):

- Visual input: the ViT pooler output tanh(dense(LN(h_CLS))) of each image, (B, 1, d), read from the offline
  ``vit_features`` files (feature kind ``vit``, :mod:`vlrouting.models.vit`). The same un-normalised vector is the
  one-token visual prefix — ``inputs_embeds = [x_R ; wte(caption)]``, GPT-2 adds its position embeddings, so the image
  takes position 0 — and x_R of every PEFT module (the ``decoder`` side).
- PEFT (:mod:`vlrouting.peft`): ``merged_qv_lora`` on every block's fused ``c_attn`` (one 2r bottleneck for q|v,
  routing on the concatenated 2r vector, k untouched) or ``adapter`` after the attention and MLP output projections.
  GPT-2, ``wte``/``wpe``/``ln_f`` and the tied LM head stay frozen.
- Generation: beam search from the prefix embedding with every option explicit; x_R follows ``generate``'s
  ``repeat_interleave`` beam expansion through :func:`vlrouting.peft.state.expand_to_batch`, and beam reordering
  never mixes examples (it permutes beams within each example), so the beams of an example always see its x_R.

Two recipes (``model.recipe``), each released-code quirk one documented switch; a switch left unset takes the
recipe's value (reference §6 and §4.2):

=====================  ======================  ====================================================================
switch                 paper / released        meaning
=====================  ======================  ====================================================================
``loss_first_token``   true / false            the image position predicts the first caption token; the released
                                               loss slices ``logits[:, 1:-1]`` against ``tokens[:, 1:]``, so t0 is
                                               never a target (off-by-one, §6.6) although decoding predicts it
``loss_pad_targets``   false / true            false: one EOS target after the caption, padding ignored; true:
                                               captions padded with EOS to the caption limit (50) and every padded
                                               position is an EOS target (released)
``loss_ignore_id_0``   false / true            the released ``cross_entropy(ignore_index=0)`` drops targets equal
                                               to token id 0 ("!" in GPT-2's vocabulary)
``max_new_tokens``     50 / 19                 decoding length: the caption limit, or HF 4.29's default
                                               ``max_length=20`` that counted a dummy BOS (§6.7)
``train_layer_norms``  false / true            ln_1/ln_2 of every block train (the shipped scripts never pass
                                               ``--freeze_ln``; §6.12); ln_f is always frozen
``train_c_attn_bias``  true / true             ``merged_qv_lora`` also trains ``c_attn``'s bias (loralib freezes only
                                               the weight); Table 5's 4,746,240 counts it (§6.13, §7)
``adapter_placement``  houlsby_pair /          two adapters per block (paper text) or one adapter per block shared
                       shared_per_block        by the attention and MLP positions (released ``Adapter``, §6.14)
=====================  ======================  ====================================================================

Both recipes: one training sample per caption, captions ≤ 50 GPT-2 tokens, beam 5 without n-gram blocking,
``length_penalty`` 1, ``early_stopping`` false (HF 4.29's defaults, the released decoding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
from torch import nn

from vlrouting.data.layout import DataSpec
from vlrouting.errors import ConfigError, DataError
from vlrouting.models.base import FamilyConfig, FamilyModel, ModelOutput, pretrained_backbone
from vlrouting.models.registry import register_family
from vlrouting.peft import PeftConfig, RoutingState, attach_peft, get_peft_method, mark_trainable, peft_wrappers

Recipe = Literal["paper", "released"]
IGNORE = -100

#: The value of every recipe switch per recipe (module docstring).
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"loss_first_token": True, "loss_pad_targets": False, "loss_ignore_id_0": False, "max_new_tokens": 50,
              "train_layer_norms": False, "train_c_attn_bias": True, "adapter_placement": "houlsby_pair"},
    "released": {"loss_first_token": False, "loss_pad_targets": True, "loss_ignore_id_0": True, "max_new_tokens": 19,
                 "train_layer_norms": True, "train_c_attn_bias": True, "adapter_placement": "shared_per_block"},
}
ADAPTER_PLACEMENTS = ("houlsby_pair", "shared_per_block")
#: PEFT target placements this family has targets for (vlrouting.peft.targets, architecture ``gpt2``).
PLACEMENTS = ("merged_qv_lora", "adapter")


@dataclass
class ModelConfig(FamilyConfig):
    """How to build ViT+GPT-2. ``backbone``/``tokenizer`` are hub names or local ``save_pretrained`` folders;
    ``arch`` the packaged architecture used without weights (``params``); ``vit`` the ViT whose pooled features the
    run reads (it fixes ``feat_dim`` unless that is given). Switches set to null take the recipe's value."""

    family: str = "vit_gpt2"
    backbone: str = "gpt2"
    tokenizer: str | None = None
    arch: str = "gpt2"
    vit: str = "google/vit-base-patch16-224-in21k"
    feat_dim: int | None = None
    dropout: float | None = None  # override GPT-2's attn/resid/embd dropout (None keeps 0.1)
    recipe: str = "paper"
    loss_first_token: bool | None = None
    loss_pad_targets: bool | None = None
    loss_ignore_id_0: bool | None = None
    max_new_tokens: int | None = None
    train_layer_norms: bool | None = None
    train_c_attn_bias: bool | None = None
    adapter_placement: str | None = None

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"model.recipe must be one of {', '.join(RECIPES)}, got '{self.recipe}'.")
        for key, value in RECIPES[self.recipe].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.adapter_placement not in ADAPTER_PLACEMENTS:
            raise ConfigError(f"model.adapter_placement must be one of {', '.join(ADAPTER_PLACEMENTS)}, got "
                              f"'{self.adapter_placement}'.")
        if self.max_new_tokens < 1:
            raise ConfigError(f"model.max_new_tokens must be a positive number of tokens, got {self.max_new_tokens}.")

    def width(self) -> int:
        """d of x_R and of the prefix: ``feat_dim``, else the ViT's hidden size."""
        if self.feat_dim is not None:
            return int(self.feat_dim)
        try:
            return int(arch_dict(self.vit)["hidden_size"])
        except ConfigError as exc:
            raise ConfigError(f"{exc} Or set model.feat_dim to the width of the extracted ViT features.") from None

    def data_spec(self) -> DataSpec:
        """One pooled ViT vector per image, (1, d), from ``<DS>/vit_features/`` (feature kind ``vit``)."""
        return DataSpec(feature_kind="vit", n_boxes=1, feat_dim=self.width())

    def route_sides(self) -> list[str]:
        """Every PEFT module of GPT-2 sits on the ``decoder`` side and receives the image's x_R."""
        return ["decoder"]


ViTGPT2Config = ModelConfig


def arch_dict(name: str) -> dict:
    """Architecture hyperparameters of ``name`` (:func:`vlrouting.models.arch.arch_dict`: a folder's
    ``config.json``, a ``.json`` path or the packaged ``gpt2``, ``gpt2-medium``, in21k ViTs), without the keys a
    transformers config class does not take."""
    from vlrouting.models import arch

    data = arch.arch_dict(name)
    for key in ("model_type", "architectures", "transformers_version", "torch_dtype", "dtype"):
        data.pop(key, None)
    return data


# ---------------------------------------------------------------------------------------------- teacher forcing
def align_captions(ids: torch.Tensor, mask: torch.Tensor, limit: int, eos_id: int, cfg: ModelConfig
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token inputs, attention mask (prefix included) and the targets aligned with the logits the model returns.

    ``ids``/``mask`` (B, T) hold each caption's GPT-2 tokens (at most ``limit``), right-padded. The model reads
    ``[image, x_1, …]``; the logits at position p predict ``seq[p]``, where ``seq`` is the caption followed by EOS
    (padding ignored) or the caption padded with EOS to ``limit`` (``loss_pad_targets``, released). Without
    ``loss_first_token`` position 0 (the image) is dropped from logits and targets: t0 is never a target.
    """
    b = ids.shape[0]
    lengths = mask.sum(dim=1)
    if cfg.loss_pad_targets:
        width = limit
        n = lengths.clamp(max=limit)
    else:
        n = lengths.clamp(max=limit - 1)  # room for the EOS target within the caption limit
        width = int(n.max().item()) + 1 if b else 1
    pos = torch.arange(width, device=ids.device).unsqueeze(0)
    real = pos < n.unsqueeze(1)
    src = torch.full((b, width), eos_id, dtype=ids.dtype, device=ids.device)
    t = min(width, ids.shape[1])
    src[:, :t] = ids[:, :t]
    seq = torch.where(real, src, torch.full_like(src, eos_id))
    if cfg.loss_pad_targets:
        targets = seq.clone()
    else:
        targets = torch.where(pos <= n.unsqueeze(1), seq, torch.full_like(seq, IGNORE))
    if cfg.loss_ignore_id_0:
        targets = targets.masked_fill(targets == 0, IGNORE)
    inputs = seq[:, :-1]  # the last token's logits would predict past the sequence: never fed
    attn = torch.cat([mask.new_ones(b, 1), real[:, :-1].to(mask.dtype)], dim=1)
    return inputs, attn, targets


class ViTGPT2(FamilyModel):
    """GPT-2 reading a one-token ViT prefix, with routed PEFT modules (module docstring)."""

    def __init__(self, gpt, model_cfg: ModelConfig, peft_cfg: PeftConfig | None):
        super().__init__()
        self.gpt = gpt
        self.model_cfg = model_cfg
        self.peft_cfg = peft_cfg
        self.routing_state = RoutingState()
        method = peft_cfg.method if peft_cfg is not None else None
        placement = None
        if peft_cfg is not None:
            placement = get_peft_method(method).placement
            if placement not in PLACEMENTS:
                hint = " (GPT-2's q, k and v share one c_attn: use merged_qv_lora)" if placement == "lora" else ""
                raise ConfigError(f"peft.method={method} has no GPT-2 targets{hint}; model family vit_gpt2 supports "
                                  f"methods placed like {' or '.join(PLACEMENTS)}.")
            attach_peft(self.gpt, peft_cfg, state=self.routing_state, model_type="gpt2", owner_parent=self)
            if placement == "adapter" and model_cfg.adapter_placement == "shared_per_block":
                share_adapters_per_block(self.gpt)
        mark_trainable(self, method)
        if method is not None:
            self._recipe_trainables(placement)

    def _recipe_trainables(self, placement: str) -> None:
        """LayerNorms per ``train_layer_norms`` (ln_1/ln_2 only; ln_f stays frozen), ``c_attn`` bias per
        ``train_c_attn_bias`` — whatever the PEFT method's generic rule said."""
        for module in self.gpt.modules():
            if isinstance(module, nn.LayerNorm):
                module.requires_grad_(False)
        if self.model_cfg.train_layer_norms:
            for block in self.gpt.transformer.h:
                block.ln_1.requires_grad_(True)
                block.ln_2.requires_grad_(True)
        if placement == "merged_qv_lora":
            for wrapper in peft_wrappers(self.gpt):
                if wrapper.base_layer.bias is not None:
                    wrapper.base_layer.bias.requires_grad_(bool(self.model_cfg.train_c_attn_bias))

    # ------------------------------------------------------------------ forward
    def _prefix(self, batch: Mapping[str, Any]) -> torch.Tensor:
        feats = batch["vis_feats"]
        d = self.gpt.config.n_embd
        if feats.dim() != 3 or feats.shape[1] != 1 or feats.shape[2] != d:
            raise DataError(f"vit_gpt2 reads one pooled ViT vector of width {d} per image, got visual features of "
                            f"shape {tuple(feats.shape)}; extract vit_features with a ViT of width {d}.")
        prefix = feats.to(self.gpt.get_input_embeddings().weight.dtype)
        # x_R = the prefix vector itself (peft.x_r_replace swaps x_R only; the prefix stays the real image)
        self.routing_state.set(batch.get("task"), batch_size=prefix.shape[0], decoder=prefix)
        return prefix

    def forward(self, batch: dict) -> ModelOutput:
        """Teacher-forced logits and targets aligned per recipe (:func:`align_captions`)."""
        prefix = self._prefix(batch)
        eos = self.gpt.config.eos_token_id
        inputs, attn, targets = align_captions(batch["caption_ids"], batch["caption_mask"], int(batch["caption_limit"]),
                                               eos, self.model_cfg)
        embeds = torch.cat([prefix, self.gpt.get_input_embeddings()(inputs)], dim=1)
        logits = self.gpt(inputs_embeds=embeds, attention_mask=attn, use_cache=False).logits
        if not self.model_cfg.loss_first_token:
            logits, targets = logits[:, 1:], targets[:, 1:]
        return ModelOutput(logits, targets, self.aux_losses())

    # ------------------------------------------------------------------ decoding
    def generation_config(self, task=None):
        """Every decoding option explicit: beams from the task (5), no sampling, no n-gram blocking, length
        penalty 1, no early stopping, ``max_new_tokens`` per recipe, EOS = pad = BOS."""
        from transformers import GenerationConfig

        decode = getattr(task, "decode", None)
        eos = self.gpt.config.eos_token_id
        return GenerationConfig(
            num_beams=decode.num_beams if decode is not None else 5,
            max_new_tokens=int(self.model_cfg.max_new_tokens), min_new_tokens=0, do_sample=False,
            no_repeat_ngram_size=decode.no_repeat_ngram_size if decode is not None else 0,
            early_stopping=decode.early_stopping if decode is not None else False,
            length_penalty=1.0, repetition_penalty=1.0, num_return_sequences=1, use_cache=True,
            bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        )

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any], generation_config=None) -> torch.Tensor:
        """New token ids (B, ≤ max_new_tokens) continuing each image's prefix; EOS-padded."""
        prefix = self._prefix(batch)
        attn = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        return self.gpt.generate(inputs_embeds=prefix, attention_mask=attn,
                                 generation_config=generation_config or self.generation_config())

    @torch.no_grad()
    def predict(self, task, batch: Mapping[str, Any], tokenizer) -> list[str]:
        """One caption per image: beam search, decoded without special tokens, whitespace (newlines) collapsed."""
        ids = self.generate(batch, self.generation_config(task))
        return [" ".join(text.split()) for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def export_pretrained(self, out_dir, tokenizer) -> None:
        """GPT-2 + tokenizer with ``save_pretrained`` (load with ``model.backbone=DIR``): a fully fine-tuned or
        warmed-up captioner that later PEFT runs start from, the way they start from ``gpt2``."""
        if peft_wrappers(self.gpt):
            raise ConfigError("export writes a fully fine-tuned GPT-2 as a backbone folder, but this run has PEFT "
                              "modules; export a run trained with peft: null.")
        self.gpt.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))


def share_adapters_per_block(gpt) -> None:
    """One adapter per block at both positions (the released ``Adapter``): the MLP position uses the attention
    position's block, so its parameters are counted, trained and saved once (under ``attn.c_proj``)."""
    for block in gpt.transformer.h:
        block.mlp.c_proj.peft_block = block.attn.c_proj.peft_block


# ---------------------------------------------------------------------------------------------- building
def load_tokenizer(model_cfg: ModelConfig):
    """GPT-2's tokenizer; it has no pad token, so EOS pads (as in the released code)."""
    from vlrouting.models.base import pretrained_tokenizer

    name = model_cfg.tokenizer or model_cfg.backbone
    tok = pretrained_tokenizer(model_cfg)
    if tok.eos_token is None:
        raise DataError(f"the tokenizer '{name}' has no EOS token; GPT-2's tokenizer defines <|endoftext|>.")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@register_family("vit_gpt2", config=ModelConfig, load_tokenizer=load_tokenizer, objectives=("prefix_lm",),
                 description="frozen ViT pooler prefix + GPT-2 for COCO captioning (paper §4.3, Tables 4, B5)")
def build_vit_gpt2(model_cfg: ModelConfig, peft_cfg: PeftConfig | None, *, pretrained: bool = True,
                   tokenizer=None, device: str | torch.device | None = None, **_unused) -> ViTGPT2:
    """Build ViT+GPT-2: ``from_pretrained(model.backbone)`` or, with ``pretrained=False``, the packaged ``model.arch``
    without weights (on ``device``, e.g. ``meta``). PEFT weights are initialised after loading (:func:`attach_peft`)."""
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    overrides = {}
    if model_cfg.dropout is not None:
        overrides = dict(attn_pdrop=model_cfg.dropout, resid_pdrop=model_cfg.dropout, embd_pdrop=model_cfg.dropout)
    if pretrained:
        gpt = pretrained_backbone(GPT2LMHeadModel, model_cfg.backbone, **overrides)
    else:
        config = GPT2Config(**{**arch_dict(model_cfg.arch), **overrides})
        with torch.device(device or "cpu"):
            gpt = GPT2LMHeadModel(config)
    if tokenizer is not None and len(tokenizer) > gpt.config.vocab_size:
        raise DataError(f"the tokenizer has {len(tokenizer)} tokens but the backbone '{model_cfg.backbone}' only "
                        f"{gpt.config.vocab_size} embeddings; use the backbone's own tokenizer.")
    width = model_cfg.width()
    if width != gpt.config.n_embd:
        raise ConfigError(f"the ViT features are {width} wide but GPT-2 '{model_cfg.backbone}' embeds "
                          f"{gpt.config.n_embd} dimensions, and the pooled vector is fed as a prefix token "
                          "unprojected; pair ViT-B/16 with gpt2 and ViT-L/16 with gpt2-medium.")
    eos = gpt.config.eos_token_id
    gpt.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)  # nothing inherited
    gpt.requires_grad_(False)
    return ViTGPT2(gpt, model_cfg, peft_cfg)
