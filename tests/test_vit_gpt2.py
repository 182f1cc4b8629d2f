"""ViT+GPT-2 captioning family (paper §4.3, Tables 4, 5, B5; reference/routing_official_spec.md §1.2, §1.3, §2, §4.2,
§6, §7) on tiny models: a GPT-2 of width 32 and a tiny ViT whose pooler output is the x_R / prefix of each image.

Checks: the merged q|v bottleneck against the hand formula (and against per-projection routing), the k slice of
``c_attn`` untouched, B = 0 equal to the frozen model, both loss recipes, explicit generation options, batched beam
search against a per-example loop, save → load, 2-process DDP against 1 process, and parameter counts of the
full-size architectures (built on the meta device, no downloads).
"""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import losses, run_train

from vlrouting.errors import ConfigError
from vlrouting.models.vit_gpt2 import ModelConfig, align_captions, build_vit_gpt2, load_tokenizer
from vlrouting.peft import PeftConfig, peft_wrappers
from vlrouting.peft.io import load_peft, save_peft
from vlrouting.routing import route

pytestmark = pytest.mark.usefixtures("single_thread")

D = 32  # width of the tiny GPT-2 and of the tiny ViT (x_R = prefix)
COLOURS = ["red", "blue", "green", "yellow", "purple"]
SHAPES = ["circle", "square", "triangle"]


def _caption(rng: np.random.Generator) -> str:
    """Captions of 3 to ~12 words, so batches hold different numbers of target tokens."""
    words = f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)}"
    for _ in range(int(rng.integers(0, 3))):
        words += f" next to a {rng.choice(COLOURS)} {rng.choice(SHAPES)}"
    return words + "."


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Tokenizer + tiny GPT-2 saved with save_pretrained, and a Karpathy-layout COCO root whose ``vit_features`` are
    the pooler outputs of a tiny random ViT on random images (the real extraction path, :mod:`vlrouting.models.vit`)."""
    from vlrouting.models.tiny import save_tiny_gpt2, train_tiny_gpt2_tokenizer
    from vlrouting.models.vit import load_vit, preprocess, tiny_vit_config, vit_pooled

    base = tmp_path_factory.mktemp("vit_gpt2")
    rng = np.random.default_rng(0)
    images, feats = [], {"train2014": {}, "val2014": {}}
    for i, split in enumerate(["train"] * 16 + ["val"] * 2 + ["test"] * 3 + ["restval"]):
        src = "train2014" if split == "train" else "val2014"
        name = f"COCO_{src}_{i:012d}"
        images.append({"filepath": src, "filename": name + ".jpg", "split": split, "cocoid": i,
                       "sentences": [{"raw": _caption(rng), "tokens": []} for _ in range(2)]})
        feats[src][name] = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    corpus = [s["raw"] for img in images for s in img["sentences"]]
    train_tiny_gpt2_tokenizer(base / "tok", corpus, vocab_size=300)
    tok = load_tokenizer(ModelConfig(tokenizer=str(base / "tok"), feat_dim=D))  # the family's: EOS pads
    save_tiny_gpt2(base / "gpt", len(tok), seed=0)
    torch.manual_seed(0)
    vit = load_vit("tiny", pretrained=False, config=tiny_vit_config(hidden_size=D))
    root = base / "datasets"
    (root / "COCO" / "vit_features").mkdir(parents=True)
    (root / "COCO" / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    for src, arrays in feats.items():
        pooled = vit_pooled(vit, preprocess(torch.from_numpy(np.stack(list(arrays.values())))))
        with h5py.File(root / "COCO" / "vit_features" / f"{src}.h5", "w") as f:
            for name, vec in zip(arrays, pooled):
                f.create_dataset(name, data=vec.numpy().astype(np.float16))
    return {"base": base, "root": root, "gpt": base / "gpt", "tok": base / "tok", "tokenizer": tok}


def build(bench, method="merged_qv_lora", routing="proj", recipe="paper", seed=0, randomize=True, **model_kw):
    """A tiny family model in eval mode; ``randomize`` gives every PEFT weight (B included) non-zero values."""
    model_kw = {"feat_dim": D, **model_kw}
    mc = ModelConfig(backbone=str(bench["gpt"]), tokenizer=str(bench["tok"]), recipe=recipe, **model_kw)
    pc = PeftConfig(method=method, tasks=["coco_lm"], routing=routing, r=4, lora_alpha=8, lora_dropout=0.0,
                    reduction_factor=8)
    torch.manual_seed(seed)
    model = build_vit_gpt2(mc, pc)
    if randomize:
        with torch.no_grad():
            for w in peft_wrappers(model.gpt):
                for p in w.peft_block.parameters():
                    p.normal_(0.0, 0.5)
    return model.eval()


def prefixes(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, D, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------- merged q|v LoRA


def test_merged_bottleneck_equals_the_hand_formula_and_leaves_k_untouched(bench):
    """c_attn(x) + (α/r)[B_q z_q, 0, B_v z_v] with z = route(A x, A x_R) over the concatenated 2r vector (§1.3)."""
    model = build(bench, routing="proj")
    c_attn = model.gpt.transformer.h[0].attn.c_attn
    blk = c_attn.peft_block
    assert blk.lora_A.shape == (8, D) and blk.lora_B.shape == (2 * D, 4)
    assert [(p.down, p.up, p.groups) for p in c_attn.delta_pairs()] == [  # ΔW analysis: q and v halves apart
        ("peft_block.lora_A", "peft_block.lora_B", ("q", "v"))]
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(3))
    x_r = prefixes(2)
    base = x @ c_attn.base_layer.weight + c_attn.base_layer.bias  # Conv1D: weight (in, out)
    xt, xv = x @ blk.lora_A.T, x_r @ blk.lora_A.T  # (2, 5, 8), (2, 1, 8)
    s = 8 / 4
    expected = {}
    for routing in ("proj", "expand", "mul", "add"):
        if routing == "proj":  # one scalar <x_t, x_v> over all 2r entries scales both halves
            z = (xt * xv).sum(-1, keepdim=True) * xv
        elif routing == "expand":  # row sum over all 2r entries
            z = xt.sum(-1, keepdim=True) * xv
        elif routing == "mul":
            z = xt * xv
        else:
            z = xt + xv
        dq, dv = z[..., :4] @ blk.lora_B[:D].T, z[..., 4:] @ blk.lora_B[D:].T
        expected[routing] = torch.cat([base[..., :D] + s * dq, base[..., D:2 * D], base[..., 2 * D:] + s * dv], -1)
    with torch.no_grad():
        for routing, want in expected.items():
            c_attn.routing_map = {"coco_lm": routing}
            model.routing_state.set("coco_lm", decoder=x_r)
            got = c_attn(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            assert torch.equal(got[..., D:2 * D], c_attn.base_layer(x)[..., D:2 * D])  # k: exactly the frozen c_attn
            assert (got[..., :D] - base[..., :D]).abs().max() > 1e-2  # q and v are adapted
            assert (got[..., 2 * D:] - base[..., 2 * D:]).abs().max() > 1e-2
        # separate q and v LoRAs (per projection, as peft would build them) route differently for proj and expand
        for routing in ("proj", "expand"):
            zq, zv = route(routing, xt[..., :4], xv[..., :4]), route(routing, xt[..., 4:], xv[..., 4:])
            split = torch.cat([base[..., :D] + s * zq @ blk.lora_B[:D].T, base[..., D:2 * D],
                               base[..., 2 * D:] + s * zv @ blk.lora_B[D:].T], -1)
            assert (split - expected[routing]).abs().max() > 1e-2
        for routing in ("mul", "add"):  # per-entry routings do not mix the halves
            zq, zv = route(routing, xt[..., :4], xv[..., :4]), route(routing, xt[..., 4:], xv[..., 4:])
            torch.testing.assert_close(torch.cat([zq, zv], -1) @ torch.block_diag(blk.lora_B[:D], blk.lora_B[D:]).T,
                                       (expected[routing] - base)[..., [*range(D), *range(2 * D, 3 * D)]] / s)


def test_b_zero_equals_the_frozen_model_and_only_peft_weights_train(bench):
    from transformers import GPT2LMHeadModel

    model = build(bench, routing="proj", randomize=False)
    frozen = GPT2LMHeadModel.from_pretrained(str(bench["gpt"])).eval()
    enc = bench["tokenizer"](["a red circle.", "a blue square next to a green triangle."], padding=True,
                             return_tensors="pt")
    batch = {"task": "coco_lm", "vis_feats": prefixes(2), "caption_ids": enc.input_ids,
             "caption_mask": enc.attention_mask, "caption_limit": 50}
    with torch.no_grad():
        out = model(batch)
        inputs, attn, _ = align_captions(enc.input_ids, enc.attention_mask, 50, frozen.config.eos_token_id,
                                         model.model_cfg)
        embeds = torch.cat([batch["vis_feats"], frozen.transformer.wte(inputs)], dim=1)
        ref = frozen(inputs_embeds=embeds, attention_mask=attn).logits
    assert torch.equal(out.logits, ref)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 3  # per block: lora_A, lora_B, c_attn bias (paper: LayerNorms frozen)
    assert all(n.endswith(("lora_A", "lora_B", "c_attn.base_layer.bias")) for n in trainable)
    released = build(bench, recipe="released", randomize=False)
    assert sum(p.requires_grad for p in released.parameters()) == 2 * 3 + 2 * 4  # + ln_1, ln_2 (never ln_f)


def test_refusals_name_the_option(bench):
    from vlrouting.errors import DataError

    with pytest.raises(ConfigError, match="merged_qv_lora"):  # GPT-2 has no plain lora target (k would adapt)
        build(bench, method="lora")
    with pytest.raises(ConfigError, match="model.recipe must be one of paper, released"):
        ModelConfig(recipe="faithful")
    with pytest.raises(ConfigError, match="model.adapter_placement"):
        ModelConfig(adapter_placement="parallel")
    with pytest.raises(ConfigError, match="pair ViT-B/16 with gpt2"):
        build(bench, feat_dim=2 * D)
    with pytest.raises(DataError, match="one pooled ViT vector of width 32"):
        build(bench).generate({"task": "coco_lm", "vis_feats": torch.zeros(2, 197, D)})


def test_coco_lm_reads_karpathy_train_one_example_per_caption(bench):
    from vlrouting.data.tasks import get_task

    task = get_task("coco_lm")
    train = task.load_records(bench["root"], "train")
    test = task.load_records(bench["root"], "test")
    assert len(train) == 16 * 2 and {r["img_id"][5:14] for r in train} == {"train2014"}  # restval excluded
    assert len(test) == 3 and all(len(r["references"]) == 2 for r in test)
    assert [c.title for c in task.columns()] == ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "Avg"]


# ----------------------------------------------------------------------------------------------- loss recipes


def test_released_loss_never_targets_the_first_token_and_paper_loss_ignores_padding(bench):
    eos = bench["tokenizer"].eos_token_id
    ids = torch.tensor([[7, 0, 9, 11], [13, 14, eos, eos]])  # id 0 is "!"-like: an ordinary token
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    paper, released = ModelConfig(recipe="paper", feat_dim=D), ModelConfig(recipe="released", feat_dim=D)
    inputs, attn, targets = align_captions(ids, mask, 6, eos, paper)
    assert targets.tolist() == [[7, 0, 9, 11, eos], [13, 14, eos, -100, -100]]  # t0 from the image; padding ignored
    assert inputs.tolist() == [[7, 0, 9, 11], [13, 14, eos, eos]] and attn.tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    inputs, attn, targets = align_captions(ids, mask, 6, eos, released)
    # logits[:, 1:-1] against tokens[:, 1:] of the EOS-padded 6-token captions; ignore_index=0 drops token id 0
    assert targets[:, 1:].tolist() == [[-100, 9, 11, eos, eos], [14, eos, eos, eos, eos]]
    assert inputs.tolist() == [[7, 0, 9, 11, eos], [13, 14, eos, eos, eos]]
    assert attn.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]  # padding is a target, never attended to

    model_p = build(bench, recipe="paper")
    model_r = build(bench, recipe="released")
    captions = ["a red circle.", "a blue square next to a green triangle."]
    enc = bench["tokenizer"](captions, padding=True, return_tensors="pt")
    batch = {"task": "coco_lm", "vis_feats": prefixes(2), "caption_ids": enc.input_ids,
             "caption_mask": enc.attention_mask, "caption_limit": 50}
    with torch.no_grad():
        out_p, out_r = model_p(batch), model_r(batch)
    lengths = enc.attention_mask.sum(1)
    assert out_r.logits.shape[1] == out_r.targets.shape[1] == 49
    for i, n in enumerate(lengths.tolist()):
        first = int(enc.input_ids[i, 0])
        assert out_p.targets[i, 0] == first and (out_p.targets[i] != -100).sum() == n + 1
        assert out_r.targets[i].tolist() == enc.input_ids[i, 1:n].tolist() + [eos] * (50 - n)  # t0 never a target
    # same weights (seed): the logits the released loss uses at position p are the paper's at p + 1 (causal)
    m = int(lengths.min())
    torch.testing.assert_close(out_r.logits[:, : m - 1], out_p.logits[:, 1:m], rtol=1e-5, atol=1e-5)
    from vlrouting.data.tasks import get_task

    term_p = get_task("coco_lm").loss_term(out_p, batch)
    assert term_p.weight == int(lengths.sum()) + 2
    loss = torch.nn.functional.cross_entropy(out_p.logits.flatten(0, 1), out_p.targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(term_p.value, loss)


# ----------------------------------------------------------------------------------------------- generation


def test_generation_options_are_explicit(bench):
    from vlrouting.data.tasks import get_task

    task = get_task("coco_lm")
    for recipe, n in (("paper", 50), ("released", 19)):
        g = build(bench, recipe=recipe, randomize=False).generation_config(task)
        assert (g.num_beams, g.max_new_tokens, g.do_sample, g.no_repeat_ngram_size, g.early_stopping,
                g.length_penalty, g.num_return_sequences) == (5, n, False, 0, False, 1.0, 1)
        eos = bench["tokenizer"].eos_token_id
        assert g.eos_token_id == g.pad_token_id == g.bos_token_id == eos


@pytest.mark.parametrize("method, routing, recipe", [("merged_qv_lora", "proj", "released"),
                                                     ("adapter", "expand", "paper")])
def test_beams_on_a_batch_equal_a_per_example_loop(bench, method, routing, recipe):
    """x_R follows generate()'s beam expansion and reordering: each example's beams see its own image."""
    model = build(bench, method=method, routing=routing, recipe=recipe)
    feats = prefixes(4, seed=5)
    config = model.generation_config()
    assert config.num_beams == 5
    batched = model.generate({"task": "coco_lm", "vis_feats": feats}, config)
    eos = bench["tokenizer"].eos_token_id
    singles = [model.generate({"task": "coco_lm", "vis_feats": feats[i:i + 1]}, config)[0] for i in range(4)]
    for row, one in zip(batched, singles):
        assert torch.equal(row[: len(one)], one) and bool((row[len(one):] == eos).all())
    assert len({tuple(s.tolist()) for s in singles}) > 1  # the captions depend on the image
    # routing matters: the same weights without x_R in the bottleneck decode something else
    for w in peft_wrappers(model.gpt):
        w.routing_map = {"coco_lm": "none"}
    assert not torch.equal(model.generate({"task": "coco_lm", "vis_feats": feats}, config), batched)
    captions = model.predict(None, {"task": "coco_lm", "vis_feats": feats}, bench["tokenizer"])
    assert len(captions) == 4 and all("\n" not in c and c == c.strip() for c in captions)


# ----------------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("method, recipe, n_tensors", [("merged_qv_lora", "paper", 2 * 3),
                                                       ("adapter", "released", 2 * 4 + 2 * 4),
                                                       ("adapter", "paper", 2 * 2 * 4)])
def test_save_load_round_trip(bench, tmp_path, method, recipe, n_tensors):
    model = build(bench, method=method, routing="mul", recipe=recipe, seed=0)
    h0 = model.gpt.transformer.h[0]
    if method == "adapter":  # released: one adapter per block at both positions; paper: the Houlsby pair
        assert (h0.mlp.c_proj.peft_block is h0.attn.c_proj.peft_block) == (recipe == "released")
    save_peft(model, tmp_path, {})
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert len(saved) == n_tensors
    assert not any("mlp.c_proj.peft_block" in k for k in saved) or recipe == "paper"
    other = build(bench, method=method, routing="mul", recipe=recipe, seed=1)
    enc = bench["tokenizer"](["a red circle next to a blue square."], return_tensors="pt")
    batch = {"task": "coco_lm", "vis_feats": prefixes(1), "caption_ids": enc.input_ids,
             "caption_mask": enc.attention_mask, "caption_limit": 50}
    with torch.no_grad():
        want = model(batch).logits
        assert not torch.equal(other(batch).logits, want)
        load_peft(other, tmp_path)
        assert torch.equal(other(batch).logits, want)



def test_full_fine_tuning_exports_a_backbone_later_runs_load(bench, tmp_path):
    """peft: null trains all of GPT-2; export_pretrained writes it (and the tokenizer) as a backbone folder."""
    mc = ModelConfig(backbone=str(bench["gpt"]), tokenizer=str(bench["tok"]), feat_dim=D)
    full = build_vit_gpt2(mc, None).eval()
    assert all(p.requires_grad for p in full.parameters())
    with torch.no_grad():
        full.gpt.transformer.h[1].mlp.c_fc.weight.add_(0.5)
    full.export_pretrained(tmp_path / "warm", bench["tokenizer"])
    warm = build_vit_gpt2(ModelConfig(backbone=str(tmp_path / "warm"), tokenizer=str(tmp_path / "warm"), feat_dim=D),
                          None).eval()
    enc = bench["tokenizer"](["a red circle next to a blue square."], return_tensors="pt")
    batch = {"task": "coco_lm", "vis_feats": prefixes(1), "caption_ids": enc.input_ids,
             "caption_mask": enc.attention_mask, "caption_limit": 50}
    with torch.no_grad():
        assert torch.equal(warm(batch).logits, full(batch).logits)
        assert not torch.equal(build_vit_gpt2(mc, None).eval()(batch).logits, full(batch).logits)
    with pytest.raises(ConfigError, match="has PEFT modules"):
        build(bench).export_pretrained(tmp_path / "no", bench["tokenizer"])

# ----------------------------------------------------------------------------------------------- DDP


def test_ddp_two_processes_match_one_process(bench, tmp_path):
    """gloo, 2 × batch 4 against 1 × batch 8 on the paper recipe (padding ignored, so the ranks hold different
    numbers of target tokens): the token-count-weighted reduction makes both optimise the global token mean.
    Dropout is off here only because 2 processes cannot draw the masks 1 process draws."""
    name = "vit_gpt2_coco_lora_r64_proj"
    opts = {"data.root": bench["root"], "model.backbone": bench["gpt"], "model.tokenizer": bench["tok"],
            "model.feat_dim": D, "peft.r": 4, "peft.lora_alpha": 4, "data.num_workers": 0,
            "train.eval_every": 0, "train.test_after": "false", "train.log_every": 0, "model.dropout": 0.0,
            "train.max_steps": 4, "train.warmup_steps": 1, "train.lr": 1e-2, "data.limit_train": 32}
    args = [f"{k}={v}" for k, v in opts.items()]
    one = run_train(["--config", name, *args, f"output.snap_dir={tmp_path / 'one'}", "train.batch_size=8"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_train(["--config", name, *args, f"output.snap_dir={tmp_path / 'two'}", "train.batch_size=4"], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    run_a, run_b = (tmp_path / d / name / "seed9898" for d in ("one", "two"))
    a, b = losses(run_a), losses(run_b)
    assert len(a) == len(b) == 4 and all(t == "coco_lm" for t, _ in a)
    for (_, la), (_, lb) in zip(a, b):
        assert lb == pytest.approx(la, rel=1e-4)
    assert a[-1][1] != a[0][1]
    wa = load_file(str(run_a / "adapter_model.safetensors"))
    wb = load_file(str(run_b / "adapter_model.safetensors"))
    assert len(wa) == 2 * 3 and max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


# ----------------------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("name, paper, released", [
    ("vit_gpt2_coco_lora_r128_proj", 4_746_240, 4_783_104),  # Table 5's 4.746M; the shipped script's 4.783M
    ("vit_gpt2_coco_lora_r128_none", 4_746_240, 4_783_104),  # routing adds no parameters
    ("vit_gpt2_coco_lora_r64_expand", 2_386_944, 2_423_808),
    ("vit_gpt2_coco_adapter_r128_proj", 4_740_096, 2_406_912),  # Houlsby pair / one shared adapter + LNs
    ("vit_gpt2_coco_adapter_r64_mul", 2_379_264, 1_226_496),
    ("vit_gpt2_medium_coco_adapter_r64_add", 6_343_680, 3_270_144),
])
def test_params_of_the_full_size_configs(name, paper, released, capsys):
    from vlrouting.__main__ import main

    for recipe, want in (("paper", paper), ("released", released)):
        assert main(["params", "--config", name, f"model.recipe={recipe}"]) == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith(f"trainable: {want:,} | total: ")


def test_full_size_architectures_match_the_hub_configs():
    """The packaged gpt2 / ViT-B/16 architectures are transformers' defaults (GPT2Config(), ViTConfig()): 124.4M
    frozen GPT-2 parameters, ViT-B/16 of width 768 = GPT-2's (the pooler vector is fed unprojected)."""
    from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig

    from vlrouting.models.vit import load_vit
    from vlrouting.models.vit_gpt2 import arch_dict

    default = GPT2Config()
    packaged = arch_dict("gpt2")
    assert {k: getattr(default, k) for k in ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size")} == \
        {k: packaged[k] for k in ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size")}
    with torch.device("meta"):
        gpt = GPT2LMHeadModel(default)
    assert sum(p.numel() for p in gpt.parameters()) == 124_439_808
    vit = load_vit("google/vit-base-patch16-224-in21k", pretrained=False, config=ViTConfig(), device="meta")
    assert sum(p.numel() for p in vit.parameters()) == 86_389_248
    assert ModelConfig(recipe="paper").width() == ViTConfig().hidden_size == default.n_embd == 768
    assert ModelConfig(vit="google/vit-large-patch16-224-in21k").width() == arch_dict("gpt2-medium")["n_embd"] == 1024
    # 12 blocks × (A 2r×d + B 2d×r + c_attn bias 3d) with r = 128: Table 5's count
    assert 12 * (4 * 128 * 768 + 3 * 768) == 4_746_240 and math.isclose(4_746_240 / 1e6, 4.746, abs_tol=5e-4)
