"""Model family ``clip_bart`` — VL-BART ("CLIP-BART"): Hugging Face ``BartForConditionalGeneration`` plus CLIP grid
features, serving the ``seq2seq`` task objective (VQAv2, GQA, NLVR², COCO captions; paper §5, Tables 7, 8).

Follows VL-Adapter (reference/vladapter_spec.md §3, DESIGN §5), wrapping HF modules — no modeling file is copied:

- Visual embedding (§3.2): LN(Linear(2048→d)) + LN(Linear(5→d)) on all-zero boxes + image-order embedding
  (2 rows) + object-order embedding, which is the frozen last rows of the word-embedding matrix
  (``<vis_extra_id_k>`` ↦ row V−1−k).
- Encoder input (§3.3): [text ; visual]. Text gets BART's learned positions and ``layernorm_embedding``;
  visual tokens get neither. Dropout on the concatenation, then BART's own encoder layers. Mask = text mask
  followed by ones. A PEFT owner with ``encoder_prefix`` (prompt tuning) puts its embeddings before the text,
  without positions but through ``layernorm_embedding``, and its mask before the text mask.
- PEFT modules with routing (:mod:`vlrouting.peft`) and the two x_R sources of the paper (§5.1, Fig. 6):
  ``encoder`` — the last encoder hidden state mean-pooled over valid positions, fed to the decoder's modules;
  ``visual`` — the projected visual tokens, pooled, fed to encoder and decoder modules.
  The decoder's x_R is computed in a forward pre-hook on the BART decoder from the ``encoder_hidden_states``
  it receives, so it follows ``generate``'s beam expansion automatically (DESIGN §9). ``peft.x_r_replace``
  (Table B2) needs nothing here: the routing state replaces x_R where it is written (:mod:`vlrouting.peft.state`).
- Trainable sets (§3.9): always the visual embedding; adapters + every LayerNorm; LoRA + every bias; full
  fine-tuning trains everything.
- For model-level PEFT owners (:mod:`vlrouting.peft.registry`): explicit per-token ``modality_ids`` (0 = text,
  1 = visual) of the joint encoder input; decoder tokens are text; cross-attention keys/values read the encoder's
  ids (the ``encoder`` stream). An owner's ``encoder_text`` hook may rewrite the embedded text segment (PETAL's
  instructions and experts) before the visual tokens join it; ``bind_host`` gets the tokenizer, ``embed_text``,
  the output embedding and the special token ids.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.bart.modeling_bart import shift_tokens_right

from vlrouting.data.layout import DataSpec
from vlrouting.errors import ConfigError, DataError
from vlrouting.models.base import FamilyConfig, FamilyModel, ModelOutput, pretrained_backbone
from vlrouting.models.registry import register_family
from vlrouting.peft import PeftConfig, RoutingState, attach_peft, mark_trainable, masked_mean

XRSource = Literal["encoder", "visual"]
VISUAL_NAME = "visual_embedding.safetensors"  # the visual embedding beside an exported backbone


@dataclass
class ModelConfig(FamilyConfig):
    """How to build VL-BART. ``backbone``/``tokenizer`` are hub names or local ``save_pretrained`` folders."""

    family: str = "clip_bart"
    backbone: str = "facebook/bart-base"
    tokenizer: str | None = None
    arch: str = "bart-base"  # packaged architecture (bart-base, bart-tiny) for builds without weights (counting)
    feat_dim: int = 2048
    n_boxes: int = 36
    n_images: int = 2
    extra_vocab: int = 200  # VL-Adapter adds <extra_id_0..99> and <vis_extra_id_0..99>
    x_r_source: XRSource = "encoder"
    gradient_checkpointing: bool = False
    dropout: float | None = None  # override the backbone's dropout (None keeps it)
    visual_init: str | None = None  # folder with visual_embedding.safetensors (see vlrouting.models.export)

    def __post_init__(self) -> None:
        if self.x_r_source not in ("encoder", "visual"):
            raise ConfigError(f"model.x_r_source must be 'encoder' or 'visual', got '{self.x_r_source}'.")

    def data_spec(self) -> DataSpec:
        """CLIP grid tokens pooled to ``n_boxes`` per image, ``feat_dim`` channels (DESIGN §3)."""
        return DataSpec(feature_kind="clip", n_boxes=self.n_boxes, feat_dim=self.feat_dim)

    def route_sides(self) -> list[str]:
        """DESIGN §4: x_R from the ``encoder`` feeds the decoder's modules only; ``visual`` x_R feeds both sides."""
        return ["decoder"] if self.x_r_source == "encoder" else ["encoder", "decoder"]

    def tiny(self) -> "ModelConfig":
        """The packaged ``bart-tiny`` architecture: bart-base's structure and vocabulary at d_model 32, 2+2 layers."""
        return replace(self, arch="bart-tiny")


#: The name every other module uses for this family's config section.
ClipBartConfig = ModelConfig


class VisualEmbedding(nn.Module):
    """Sum of the four visual terms of VL-Adapter's ``VisualEmbedding`` (reference §3.2)."""

    def __init__(self, feat_dim: int, d_model: int, n_images: int, word_embeddings: nn.Embedding):
        super().__init__()
        self.feat_embedding = nn.Sequential(nn.Linear(feat_dim, d_model), nn.LayerNorm(d_model))
        self.absolute_vis_pos_embedding = nn.Sequential(nn.Linear(5, d_model), nn.LayerNorm(d_model))
        self.img_order_embedding = nn.Embedding(n_images, d_model)
        object.__setattr__(self, "word_embeddings", word_embeddings)  # shared, not re-registered
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        for lin in (self.feat_embedding[0], self.absolute_vis_pos_embedding[0]):
            lin.weight.normal_(0.0, std)
            lin.bias.zero_()
        for ln in (self.feat_embedding[1], self.absolute_vis_pos_embedding[1]):
            ln.weight.fill_(1.0)
            ln.bias.zero_()
        self.img_order_embedding.weight.normal_(0.0, std)

    def forward(self, feats, img_order_ids, obj_order_ids):
        boxes = feats.new_zeros(feats.shape[0], feats.shape[1], 5)  # the CLIP loaders pass all-zero boxes
        vocab = self.word_embeddings.weight.shape[0]
        obj = nn.functional.embedding(vocab - 1 - obj_order_ids, self.word_embeddings.weight)
        return (self.feat_embedding(feats) + self.absolute_vis_pos_embedding(boxes)
                + self.img_order_embedding(img_order_ids) + obj)


class VLBart(FamilyModel):
    """CLIP-BART with optional PEFT modules that route. ``forward(batch)`` returns the teacher-forced logits."""

    def __init__(self, bart, model_cfg: ModelConfig, peft_cfg: PeftConfig | None, tokenizer=None):
        super().__init__()
        self.bart = bart
        self.model_cfg = model_cfg
        self.peft_cfg = peft_cfg
        self.tokenizer = tokenizer
        d = bart.config.d_model
        self.visual_embedding = VisualEmbedding(model_cfg.feat_dim, d, model_cfg.n_images,
                                                bart.get_input_embeddings())
        self.routing_state = RoutingState()
        if peft_cfg is not None:
            attach_peft(self.bart, peft_cfg, state=self.routing_state, model_type="bart", owner_parent=self)
        bind = getattr(getattr(self, "peft_owner", None), "bind_host", None)
        if bind is not None:  # host-dependent parts of the owner exist before deciding what trains
            bind(self)
        mark_trainable(self, peft_cfg.method if peft_cfg else None, always=("visual_embedding",))
        self.bart.model.decoder.register_forward_pre_hook(self._decoder_x_r_hook, with_kwargs=True)
        if model_cfg.gradient_checkpointing:
            self.bart.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ------------------------------------------------------------------ x_R plumbing
    def _decoder_x_r_hook(self, module, args, kwargs):
        if self.model_cfg.x_r_source == "encoder":
            hidden = kwargs.get("encoder_hidden_states")
            if hidden is None and len(args) > 2:
                hidden = args[2]
            if hidden is not None:
                self.routing_state.x_r["decoder"] = masked_mean(hidden, kwargs.get("encoder_attention_mask"))
        return None

    # ------------------------------------------------------------------ encoder
    def encode(self, batch: dict) -> tuple[BaseModelOutput, torch.Tensor]:
        """Run the joint encoder on [text ; visual]; sets the task and the visual x_R in the routing state."""
        enc = self.bart.model.encoder
        input_ids, text_mask = batch["input_ids"], batch["attention_mask"]
        feats = batch["vis_feats"]
        text = enc.embed_tokens(input_ids)
        text = text + enc.embed_positions(input_ids).to(text.dtype)
        prefix = getattr(getattr(self, "peft_owner", None), "encoder_prefix", None)  # e.g. prompt tuning (§3.3)
        if prefix is not None:  # prepended without positions, through the embedding LayerNorm like the text
            embeds, prefix_mask = prefix(batch.get("task"), input_ids.shape[0])
            text = torch.cat([embeds.to(text.dtype), text], dim=1)
            text_mask = torch.cat([prefix_mask.to(text_mask.dtype), text_mask], dim=1)
        text = enc.layernorm_embedding(text)
        rewrite = getattr(getattr(self, "peft_owner", None), "encoder_text", None)
        if rewrite is not None:  # e.g. PETAL's instructions and instruction experts (vlrouting.peft.aim)
            text, text_mask = rewrite(text, text_mask, batch.get("task"))
        vis = self.visual_embedding(feats.to(text.dtype), batch["img_order_ids"], batch["obj_order_ids"])
        x_r_vis = vis.mean(dim=1, keepdim=True) if self.model_cfg.x_r_source == "visual" else None
        # batch_size: a replaced x_R (peft.x_r_replace) gets one row per example, even though the decoder hook
        # writes x_R from beam-expanded encoder states
        self.routing_state.set(batch.get("task"), batch_size=input_ids.shape[0], encoder=x_r_vis, decoder=x_r_vis)
        hidden = nn.functional.dropout(torch.cat([text, vis], dim=1), p=enc.dropout, training=self.training)
        mask = torch.cat([text_mask, text_mask.new_ones(vis.shape[:2])], dim=1)
        modality = torch.cat([torch.zeros_like(text_mask), text_mask.new_ones(vis.shape[:2])], dim=1)
        self.routing_state.set_tokens("encoder", modality_ids=modality, attention_mask=mask)
        self.routing_state.set_tokens("decoder", modality_ids=0)  # every decoder token is text
        self.routing_state.observe(encoder_inputs=hidden)
        attn = create_bidirectional_mask(config=enc.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in enc.layers:
            hidden = layer(hidden, attn)
        self.routing_state.observe(encoder_hidden=hidden)
        return BaseModelOutput(last_hidden_state=hidden), mask

    # ------------------------------------------------------------------ heads
    def forward(self, batch: dict) -> ModelOutput:
        """Teacher-forced decoder logits (B, T, V) for ``batch["labels"]`` (-100 = padding), which are the targets."""
        enc_out, mask = self.encode(batch)
        cfg = self.bart.config
        dec_in = shift_tokens_right(batch["labels"], cfg.pad_token_id, cfg.decoder_start_token_id)
        out = self.bart(encoder_outputs=enc_out, attention_mask=mask, decoder_input_ids=dec_in, use_cache=False)
        self.routing_state.observe(labels=batch["labels"])
        return ModelOutput(out.logits, batch["labels"], self.aux_losses())

    @torch.no_grad()
    def predict(self, task, batch: Mapping[str, Any], tokenizer) -> list[str]:
        """The task's decoding (reference §4.3): NLVR² compares the ``true``/``false`` logits at the first decoder
        step; the others generate with the task's explicit options and decode to stripped strings."""
        if task.decode.strategy == "true_false":
            true_id, false_id = task.answer_token_ids(tokenizer)
            logits = self.first_step_logits(batch)
            return ["true" if bool(t > f) else "false" for t, f in zip(logits[:, true_id], logits[:, false_id])]
        ids = self.generate(batch, **task.generate_kwargs())
        return [s.strip() for s in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    @torch.no_grad()
    def generate(self, batch: dict, **generation_kwargs) -> torch.Tensor:
        """``bart.generate`` on the joint encoder's outputs; options are passed explicitly by the task."""
        enc_out, mask = self.encode(batch)
        cfg = self.bart.config
        kwargs = dict(decoder_start_token_id=cfg.decoder_start_token_id, bos_token_id=cfg.bos_token_id,
                      eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, forced_bos_token_id=None,
                      forced_eos_token_id=None, do_sample=False)
        kwargs.update(generation_kwargs)
        return self.bart.generate(encoder_outputs=enc_out, attention_mask=mask, **kwargs)

    # ------------------------------------------------------------------ services for PEFT owners
    @property
    def hidden_size(self) -> int:
        return self.bart.config.d_model

    def embed_text(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None):
        """Text as :meth:`encode` embeds it: word embeddings (or given vectors) + learned positions, LayerNorm."""
        enc = self.bart.model.encoder
        if inputs_embeds is None:
            inputs_embeds = enc.embed_tokens(input_ids)
        positions = enc.embed_positions(inputs_embeds[..., 0]).to(inputs_embeds.dtype)
        return enc.layernorm_embedding(inputs_embeds + positions)

    def output_embeddings(self) -> torch.Tensor:
        return self.bart.get_output_embeddings().weight

    def special_token_ids(self) -> list[int]:
        cfg = self.bart.config
        ids = {cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id, cfg.decoder_start_token_id}
        return sorted(i for i in ids if i is not None)

    def export_pretrained(self, out_dir, tokenizer) -> None:
        """BART + tokenizer with ``save_pretrained`` and ``visual_embedding.safetensors`` beside them (load with
        ``model.backbone=DIR model.visual_init=DIR``)."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        self.bart.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
        tensors = {k: v.detach().contiguous() for k, v in self.visual_embedding.state_dict().items()}
        save_file(tensors, str(out_dir / VISUAL_NAME))

    @torch.no_grad()
    def first_step_logits(self, batch: dict) -> torch.Tensor:
        """Logits after the decoder has read ``[</s>, <s>]`` (VL-Adapter's NLVR2 scoring, reference §4.3)."""
        enc_out, mask = self.encode(batch)
        cfg = self.bart.config
        b = mask.shape[0]
        dec_in = torch.tensor([[cfg.decoder_start_token_id, cfg.bos_token_id]], device=mask.device).expand(b, 2)
        out = self.bart(encoder_outputs=enc_out, attention_mask=mask, decoder_input_ids=dec_in, use_cache=False)
        return out.logits[:, 1]


# ---------------------------------------------------------------------- building
def packaged_arch_config(name: str):
    """A BartConfig from a packaged architecture JSON (``bart-base``) or a path to a config.json."""
    import json
    from importlib import resources

    from transformers import BartConfig

    path = Path(name)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        data = json.loads(path.read_text())
    else:
        res = resources.files("vlrouting.configs").joinpath(f"arch/{name}.json")
        if not res.is_file():
            raise ConfigError(f"unknown architecture config '{name}'; use 'bart-base', 'bart-tiny' or a path to a "
                              "config.json.")
        data = json.loads(res.read_text())
    data.pop("_comment", None)
    data.pop("model_type", None)
    return BartConfig(**data)


def load_tokenizer(model_cfg: ModelConfig):
    """The backbone's tokenizer plus VL-Adapter's 200 added tokens (``<extra_id_k>``, ``<vis_extra_id_k>``)."""
    from vlrouting.models.base import pretrained_tokenizer

    tok = pretrained_tokenizer(model_cfg)
    half = model_cfg.extra_vocab // 2
    extra = [f"<extra_id_{i}>" for i in range(half)] + [f"<vis_extra_id_{i}>" for i in range(model_cfg.extra_vocab - half)]
    missing = [t for t in extra if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tok


def _resize_vocab(bart, new_size: int) -> None:
    old = bart.get_input_embeddings().weight.shape[0]
    if new_size == old:
        return
    bart.resize_token_embeddings(new_size, mean_resizing=False)
    with torch.no_grad():  # VL-Adapter's new rows are N(0, 0.02) (random at resize time)
        bart.get_input_embeddings().weight[old:].normal_(0.0, bart.config.init_std)


@register_family("clip_bart", config=ModelConfig, load_tokenizer=load_tokenizer, objectives=("seq2seq",),
                 description="CLIP RN101 grid features + BART (VL-Adapter's CLIP-BART; paper §5, Tables 7, 8)")
def build_vlbart(model_cfg: ModelConfig, peft_cfg: PeftConfig | None, *, pretrained: bool = True,
                 tokenizer=None, vocab_size: int | None = None, device: str | torch.device | None = None) -> VLBart:
    """Build VL-BART.

    ``pretrained=True`` loads the backbone with ``from_pretrained`` (hub name or local folder) and resizes its
    vocabulary to ``vocab_size`` (the tokenizer's length after adding the extra tokens). ``pretrained=False``
    builds the packaged architecture without weights (on ``device``, e.g. ``meta`` for counting); its vocabulary
    grows by ``extra_vocab`` rows. PEFT weights are initialised after loading, in :func:`attach_peft`.
    """
    from transformers import BartForConditionalGeneration

    if vocab_size is None and tokenizer is not None:
        vocab_size = len(tokenizer)
    overrides = {}
    if model_cfg.dropout is not None:
        overrides = dict(dropout=model_cfg.dropout, attention_dropout=model_cfg.dropout,
                         activation_dropout=model_cfg.dropout)
    if pretrained:
        bart = pretrained_backbone(BartForConditionalGeneration, model_cfg.backbone, **overrides)
        target = vocab_size if vocab_size is not None else bart.config.vocab_size + model_cfg.extra_vocab
    else:
        config = packaged_arch_config(model_cfg.arch)
        for key, value in overrides.items():
            setattr(config, key, value)
        with torch.device(device or "cpu"):
            bart = BartForConditionalGeneration(config)
        target = vocab_size if vocab_size is not None else config.vocab_size + model_cfg.extra_vocab
    _resize_vocab(bart, target)
    model = VLBart(bart, model_cfg, peft_cfg, tokenizer=tokenizer)
    if model_cfg.visual_init:
        _load_visual_embedding(model, model_cfg.visual_init)
    return model


def _load_visual_embedding(model: VLBart, folder: str) -> None:
    from safetensors.torch import load_file

    path = Path(folder) / VISUAL_NAME
    if not path.is_file():
        raise DataError(f"model.visual_init: {path} does not exist; export one with python -m vlrouting.models.export.")
    state = load_file(str(path))
    missing, unexpected = model.visual_embedding.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(f"{path} does not fit this visual embedding (missing {missing}, unexpected {unexpected}).")


def config_dict(model_cfg: ModelConfig) -> dict:
    return asdict(model_cfg)
