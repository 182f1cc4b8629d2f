"""A tiny RoBERTa pre-trained on text only, for the ViT+RoBERTa CPU demo and tests.

The language half of the paper's "pre-trained apart" premise (§4.1), at laptop scale: a byte-level BPE tokenizer
with RoBERTa's special tokens (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` 4; trained with
``tokenizers``) and a randomly initialised ``RobertaForMaskedLM`` trained by masked language modelling (RoBERTa's
15 % masking, 80/10/10, through transformers' ``DataCollatorForLanguageModeling``) on the benchmark's *text*: the
training questions and the captions of the training images. No image is involved. Model and tokenizer are saved
with ``save_pretrained``; ``RobertaModel.from_pretrained`` then loads the encoder as it loads ``roberta-base``
(including the missing pooler, initialised at load time like roberta-base's).

``python -m vlrouting.models.tiny_roberta --out DIR --corpus-root DATASETS [--steps N --hidden 64]``
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from vlrouting.data.layout import ANNOTATIONS
from vlrouting.fileio import atomic_write_text


def text_corpus(root: str | Path) -> list[str]:
    """The training questions of VQA (``karpathy_train``) and the captions of the Karpathy train + restval images."""
    root = Path(root)
    texts: list[str] = []
    questions = root / ANNOTATIONS["vqa"]["train"][0].annotation
    if questions.is_file():
        texts += [str(r.get("sent", "")) for r in json.loads(questions.read_text())]
    coco = root / ANNOTATIONS["coco_captions"]["train"][0].annotation
    if coco.is_file():
        for img in json.loads(coco.read_text())["images"]:
            if img.get("split") in ("train", "restval"):
                texts += [s["raw"] for s in img["sentences"]]
    return [t for t in texts if t.strip()]


def tiny_roberta_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, max_positions: int = 64,
                        **overrides):
    """A RobertaConfig with roberta-base's structure (post-LN, learned positions offset by the pad id) at toy size."""
    from transformers import RobertaConfig

    cfg = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
               intermediate_size=4 * hidden, max_position_embeddings=max_positions + 2, pad_token_id=1,
               bos_token_id=0, eos_token_id=2, type_vocab_size=1, layer_norm_eps=1e-5)
    cfg.update(overrides)
    return RobertaConfig(**cfg)


def warmup_tiny_roberta(out_dir: str | Path, corpus_root: str | Path, *, hidden: int = 64, layers: int = 2,
                        heads: int = 4, vocab_size: int = 800, steps: int = 400, batch_size: int = 64,
                        lr: float = 1e-3, seed: int = 0, log=print) -> dict:
    """Train the tokenizer and the masked LM; save both to ``out_dir``; returns the held-out masked-token accuracy."""
    from transformers import DataCollatorForLanguageModeling, RobertaForMaskedLM

    from vlrouting.models.tiny import train_tiny_tokenizer

    texts = text_corpus(corpus_root)
    if not texts:
        from vlrouting.errors import DataError

        raise DataError(f"no questions or captions under {corpus_root}; create the synthetic set there first.")
    out = Path(out_dir)
    tok = train_tiny_tokenizer(out, texts, vocab_size=vocab_size)
    torch.manual_seed(seed)
    model = RobertaForMaskedLM(tiny_roberta_config(len(tok), hidden, layers, heads))
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    held = [texts[i] for i in order[: max(1, len(texts) // 20)]]
    train = [texts[i] for i in order[len(held):]] or held
    collate = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15, seed=seed)
    encode = lambda batch: collate([tok(t, truncation=True, max_length=62) for t in batch])  # noqa: E731
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    t0 = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        batch = encode(rng.sample(train, min(batch_size, len(train))))
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 5) == 0 or step == steps:
            log(f"tiny RoBERTa MLM step {step}/{steps}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)")
    model.eval()
    hits = total = 0
    with torch.no_grad():
        for i in range(0, len(held), batch_size):
            batch = encode(held[i:i + batch_size])
            pred = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
            mask = batch["labels"] != -100
            hits += (pred[mask] == batch["labels"][mask]).sum().item()
            total += mask.sum().item()
    metrics = {"masked_token_accuracy": round(hits / max(total, 1), 4), "held_out_texts": len(held),
               "train_texts": len(train), "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
               "hidden": hidden, "layers": layers, "heads": heads, "vocab": len(tok),
               "seconds": round(time.perf_counter() - t0, 1)}
    model.save_pretrained(str(out))
    atomic_write_text(out / "warmup.json", json.dumps({"task": "masked LM on questions and captions (text only)",
                                                        **metrics}, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vlrouting.models.tiny_roberta",
                                 description="Train a tiny tokenizer and RoBERTa (masked LM, text only) and save them.")
    ap.add_argument("--out", required=True, help="folder for the tokenizer and the model (save_pretrained)")
    ap.add_argument("--corpus-root", required=True, help="datasets root whose training questions/captions to use")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab-size", type=int, default=800)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    m = warmup_tiny_roberta(args.out, args.corpus_root, hidden=args.hidden, layers=args.layers, heads=args.heads,
                            vocab_size=args.vocab_size, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            seed=args.seed)
    print(f"tiny RoBERTa (d {args.hidden}, {args.layers} layers, {m['vocab']} tokens) saved to {args.out}: held-out "
          f"masked-token accuracy {m['masked_token_accuracy']:.3f} ({m['seconds']}s)")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
