"""Tiny backbones and tokenizers built locally, for tests and the CPU demo.

Nothing here downloads: a byte-level BPE tokenizer is trained with ``tokenizers`` on a small corpus and saved
with ``save_pretrained``; a BART (or a GPT-2 with a GPT-2-style tokenizer) of a few hundred thousand parameters is
built from a config with random weights and saved the same way. Everything downstream then loads them through the
*real* ``from_pretrained`` path, exactly as it would load ``facebook/bart-base`` or ``gpt2`` on a user's machine.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Iterable

BART_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4 as in facebook/bart-base (<mask> aside)

DEFAULT_CORPUS = [
    "vqa: what color is the circle?", "gqa: is the square left of the triangle?",
    "nlvr: the left image has more circles than the right image.", "caption:",
    "a red circle and a blue square on a white background", "how many shapes are there?",
    "yes", "no", "true", "false", "one two three four five", "green yellow purple orange",
]


def bart_base_config_dict() -> dict:
    """The packaged facebook/bart-base architecture hyperparameters (a plain dict, no weights)."""
    text = resources.files("vlrouting.configs").joinpath("arch/bart-base.json").read_text()
    cfg = json.loads(text)
    cfg.pop("_comment", None)
    return cfg


def train_tiny_tokenizer(out_dir: str | Path, texts: Iterable[str] | None = None, vocab_size: int = 800):
    """Train a byte-level BPE tokenizer with BART's special tokens and save it as a HF tokenizer directory.

    The post-processor wraps every sequence as ``<s> … </s>`` like BartTokenizer. Returns the loaded tokenizer
    (``AutoTokenizer.from_pretrained(out_dir)``), so callers exercise the real loading code.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    corpus = list(texts) if texts is not None else []
    corpus += DEFAULT_CORPUS
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BART_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        mask_token="<mask>", cls_token="<s>", sep_token="</s>",
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return AutoTokenizer.from_pretrained(str(out_dir))


def tiny_bart_config(vocab_size: int, **overrides):
    """A BartConfig with bart-base's structure (post-LN, learned positions, gelu) at toy size."""
    from transformers import BartConfig

    cfg = bart_base_config_dict()
    cfg.update(
        d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128, vocab_size=vocab_size,
        num_hidden_layers=2,
    )
    cfg.update(overrides)
    cfg.pop("model_type", None)
    return BartConfig(**cfg)


def save_tiny_bart(out_dir: str | Path, vocab_size: int, seed: int = 0, **overrides) -> Path:
    """Build a randomly initialised tiny BartForConditionalGeneration and ``save_pretrained`` it to ``out_dir``."""
    import torch
    from transformers import BartForConditionalGeneration

    torch.manual_seed(seed)
    model = BartForConditionalGeneration(tiny_bart_config(vocab_size, **overrides))
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    return out_dir


GPT2_EOS = "<|endoftext|>"


def train_tiny_gpt2_tokenizer(out_dir: str | Path, texts: Iterable[str] | None = None, vocab_size: int = 400):
    """A byte-level BPE tokenizer laid out like GPT-2's: no post-processor (nothing is added around a text) and
    ``<|endoftext|>`` as BOS = EOS = UNK with the *last* id (id 0 is an ordinary token, as "!" is in GPT-2).
    Saved with ``save_pretrained``; returns ``AutoTokenizer.from_pretrained(out_dir)``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    corpus = list(texts) if texts is not None else []
    corpus += DEFAULT_CORPUS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"eos_token": GPT2_EOS, "bos_token": GPT2_EOS, "unk_token": GPT2_EOS})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return AutoTokenizer.from_pretrained(str(out_dir))


def tiny_gpt2_config(vocab_size: int, **overrides):
    """A GPT2Config with gpt2's structure (pre-LN, learned positions, gelu_new, tied head) at toy size; BOS = EOS =
    the last id, as in GPT-2."""
    from transformers import GPT2Config

    cfg = dict(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=vocab_size - 1,
               eos_token_id=vocab_size - 1)
    cfg.update(overrides)
    return GPT2Config(**cfg)


def save_tiny_gpt2(out_dir: str | Path, vocab_size: int, seed: int = 0, **overrides) -> Path:
    """Build a randomly initialised tiny GPT2LMHeadModel and ``save_pretrained`` it to ``out_dir``."""
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(tiny_gpt2_config(vocab_size, **overrides))
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    return out_dir


def corpus_from_datasets(root: str | Path) -> list[str]:
    """Every question, statement, answer and caption of a VL-Adapter-layout datasets root (for the tokenizer)."""
    root = Path(root)
    texts: list[str] = []
    for rel in ("vqa/karpathy_train.json", "GQA/train.json", "GQA/valid.json", "nlvr/train.json"):
        path = root / rel
        if path.is_file():
            for rec in json.loads(path.read_text()):
                texts.append(str(rec.get("sent", "")))
                label = rec.get("label")
                if isinstance(label, dict):
                    texts.extend(str(a) for a in label)
        texts += ["true", "false"]
    coco = root / "COCO/dataset_coco.json"
    if coco.is_file():
        for img in json.loads(coco.read_text())["images"]:
            texts.extend(s["raw"] for s in img["sentences"])
    return texts


def main(argv: list[str] | None = None) -> int:
    """``python -m vlrouting.models.tiny --out DIR [--corpus-root DATASETS]``: a tiny tokenizer + BART folder."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vlrouting.models.tiny", description=main.__doc__)
    ap.add_argument("--out", required=True, help="folder for the tokenizer and the tiny BART (save_pretrained)")
    ap.add_argument("--corpus-root", help="datasets root whose texts train the tokenizer")
    ap.add_argument("--vocab-size", type=int, default=800)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    texts = corpus_from_datasets(args.corpus_root) if args.corpus_root else []
    tok = train_tiny_tokenizer(args.out, texts, vocab_size=args.vocab_size)
    save_tiny_bart(args.out, len(tok), seed=args.seed, d_model=args.d_model, encoder_layers=args.layers,
                   decoder_layers=args.layers, num_hidden_layers=args.layers, encoder_ffn_dim=2 * args.d_model,
                   decoder_ffn_dim=2 * args.d_model)
    print(f"tiny tokenizer ({len(tok)} tokens) and BART (d_model {args.d_model}, {args.layers}+{args.layers} "
          f"layers) saved to {args.out}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
