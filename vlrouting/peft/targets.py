"""Where PEFT modules go, per architecture: one table, no model-specific code paths.

Each entry is ``(regex, side)`` or ``(regex, side, stream)``; the regex is searched in the module's qualified name
(anchored at a name boundary), ``side`` says whose x_R the module sees and ``stream`` which token sequence the
module reads (default: its side) — a decoder's cross-attention keys and values read the *encoder's* tokens, so
per-token inputs such as modality ids come from the encoder stream there (:class:`vlrouting.peft.RoutingState`). BART follows VL-Adapter (reference §3.5, §3.7): adapters
after self-attention and FFN in the encoder, after self-, cross-attention and FFN in the decoder (30 positions),
each inside the residual branch (wrapping ``out_proj``/``fc2`` puts it before dropout and the residual add);
LoRA on ``q_proj``/``v_proj`` of encoder self-, decoder self- and decoder cross-attention (36 linears).
Compacter, Hyperformer and half-shared adapters use the adapter positions; prompt tuning wraps nothing — its
entry names the encoder's embedding LayerNorm, which the prompts pass through and which sizes them (§3.3, §3.8).
RoBERTa and GPT-2 follow the paper's released code (reference/routing_official_spec.md §2): RoBERTa adapters in
Houlsby placement, LoRA on ``query``/``value``; GPT-2 adapters after the attention and MLP output projections
(``c_proj``, before dropout and the residual add) and the merged q|v LoRA (``merged_qv_lora``) on the fused ``c_attn``
(a Conv1D, q|k|v output) — GPT-2 has no ``lora`` entry because a plain LoRA there would adapt k too. T5 is analogous.
DMA (PETAL's dynamic mode approximation, reference/petal_spec.md §5.1) mirrors PETAL's Q/K/V-only choice: q, k and
v of encoder self-, decoder self- and decoder cross-attention (54 linears on bart-base).
"""

from __future__ import annotations

import re

from vlrouting.errors import ConfigError

_B = r"(?:^|\.)"

TARGETS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "bart": {
        "adapter": [
            (_B + r"encoder\.layers\.\d+\.self_attn\.out_proj$", "encoder"),
            (_B + r"encoder\.layers\.\d+\.fc2$", "encoder"),
            (_B + r"decoder\.layers\.\d+\.self_attn\.out_proj$", "decoder"),
            (_B + r"decoder\.layers\.\d+\.encoder_attn\.out_proj$", "decoder"),
            (_B + r"decoder\.layers\.\d+\.fc2$", "decoder"),
        ],
        "lora": [
            (_B + r"encoder\.layers\.\d+\.self_attn\.(?:q_proj|v_proj)$", "encoder"),
            (_B + r"decoder\.layers\.\d+\.(?:self_attn|encoder_attn)\.(?:q_proj|v_proj)$", "decoder"),
        ],
        "dma": [
            (_B + r"encoder\.layers\.\d+\.self_attn\.(?:q_proj|k_proj|v_proj)$", "encoder"),
            (_B + r"decoder\.layers\.\d+\.self_attn\.(?:q_proj|k_proj|v_proj)$", "decoder"),
            (_B + r"decoder\.layers\.\d+\.encoder_attn\.q_proj$", "decoder"),
            (_B + r"decoder\.layers\.\d+\.encoder_attn\.(?:k_proj|v_proj)$", "decoder", "encoder"),
        ],
        "prompt": [(_B + r"encoder\.layernorm_embedding$", "encoder")],  # sizes the prompts; not wrapped
    },
    "roberta": {
        "adapter": [
            (_B + r"encoder\.layer\.\d+\.attention\.output\.dense$", "encoder"),
            (_B + r"encoder\.layer\.\d+\.output\.dense$", "encoder"),
        ],
        "lora": [(_B + r"encoder\.layer\.\d+\.attention\.self\.(?:query|value)$", "encoder")],
        "dma": [(_B + r"encoder\.layer\.\d+\.attention\.self\.(?:query|key|value)$", "encoder")],
    },
    "gpt2": {
        "adapter": [(_B + r"h\.\d+\.attn\.c_proj$", "decoder"), (_B + r"h\.\d+\.mlp\.c_proj$", "decoder")],
        "merged_qv_lora": [(_B + r"h\.\d+\.attn\.c_attn$", "decoder")],
        "dma": [(_B + r"h\.\d+\.attn\.c_attn$", "decoder")],
    },
    "t5": {
        "adapter": [
            (_B + r"encoder\.block\.\d+\.layer\.0\.SelfAttention\.o$", "encoder"),
            (_B + r"encoder\.block\.\d+\.layer\.1\.DenseReluDense\.wo$", "encoder"),
            (_B + r"decoder\.block\.\d+\.layer\.0\.SelfAttention\.o$", "decoder"),
            (_B + r"decoder\.block\.\d+\.layer\.1\.EncDecAttention\.o$", "decoder"),
            (_B + r"decoder\.block\.\d+\.layer\.2\.DenseReluDense\.wo$", "decoder"),
        ],
        "lora": [
            (_B + r"encoder\.block\.\d+\.layer\.0\.SelfAttention\.(?:q|v)$", "encoder"),
            (_B + r"decoder\.block\.\d+\.layer\.[01]\.(?:SelfAttention|EncDecAttention)\.(?:q|v)$", "decoder"),
        ],
        "dma": [
            (_B + r"encoder\.block\.\d+\.layer\.0\.SelfAttention\.(?:q|k|v)$", "encoder"),
            (_B + r"decoder\.block\.\d+\.layer\.0\.SelfAttention\.(?:q|k|v)$", "decoder"),
            (_B + r"decoder\.block\.\d+\.layer\.1\.EncDecAttention\.q$", "decoder"),
            (_B + r"decoder\.block\.\d+\.layer\.1\.EncDecAttention\.(?:k|v)$", "decoder", "encoder"),
        ],
    },
}


def targets_for(model_type: str, method: str, override: list | None = None) -> list[tuple[re.Pattern, str]]:
    """Compiled (pattern, side[, stream]) entries for an architecture and method, or the user's override."""
    if override:
        pairs = [tuple(p) for p in override]
        bad = [list(p) for p in pairs if len(p) not in (2, 3)]
        if bad:
            raise ConfigError(f"peft.targets entries must be [regex, side] or [regex, side, stream], got {bad[0]}.")
    else:
        if model_type not in TARGETS:
            raise ConfigError(
                f"no PEFT target table for architecture '{model_type}'; known: {', '.join(TARGETS)} "
                "(or pass peft.targets as a list of [regex, side])."
            )
        if method not in TARGETS[model_type]:
            raise ConfigError(f"no '{method}' targets for architecture '{model_type}'.")
        pairs = TARGETS[model_type][method]
    return [(re.compile(p[0]), *p[1:]) for p in pairs]


def match_side(name: str, targets: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, side, *_ in targets:
        if pattern.search(name):
            return side
    return None


def match_stream(name: str, targets: list[tuple[re.Pattern, str]]) -> str | None:
    """The token stream the module ``name`` reads: the entry's third element, else its side (None: no match)."""
    for pattern, side, *stream in targets:
        if pattern.search(name):
            return stream[0] if stream else side
    return None
