"""The paper's ablations (issue 14, the family-independent part): Table 6 / B2 / B3 rows as data, replacing x_R
(Table B2: ``peft.x_r_replace``), the step-0 PEFT weights and ``analyze deltas`` (Fig. B2), and the inference-time
benchmark's smoke run (Table B3).

Models are tiny (CLIP-BART, d_model 32); the one training run is the real trainer on the synthetic benchmark.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlrouting.__main__ import main as cli_main
from vlrouting.config import load_config
from vlrouting.errors import ConfigError
from vlrouting.models.vlbart import ModelConfig, VLBart
from vlrouting.peft import PeftConfig, attach_peft, mark_trainable, peft_wrappers, save_peft_init
from vlrouting.peft.io import DELTA_PAIRS_KEY, INIT_NAME, WEIGHTS_NAME

from conftest import TINY_VOCAB
from test_train import common, run_train

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
D = 32
TINY = dict(d_model=D, encoder_ffn_dim=64, decoder_ffn_dim=64)


# ------------------------------------------------------------------------------------------------ paper rows
def test_table6_and_b2_rows_as_printed():
    from vlrouting.paper_results import PAPER_ROWS, get_paper_row
    from vlrouting.paper_results.ablations import TABLEB2_X_R_REPLACE

    relu = get_paper_row("table6/lora/proj_relu")
    assert relu.values == {"vqa_cls": 53.45, "coco_lm.BLEU-4": 25.3, "coco_lm": 86.1, "coco_lm.Avg": 39.84}
    assert relu.routing == "proj_relu" and relu.table == "Table 6" and not relu.baseline
    assert [relu.format(c) for c in relu.values] == ["53.45", "25.3", "86.1", "39.84"]  # mixed decimals as printed
    assert get_paper_row("table6/adapter/proj").values == {"vqa_cls": 54.48, "coco_lm.BLEU-4": 26.1,
                                                          "coco_lm": 85.4, "coco_lm.Avg": 39.78}
    assert get_paper_row("table6/adapter/proj_relu").format("coco_lm.BLEU-4") == "25.0"
    # Table B2: the baseline, the real x_R (= Table 6's VQA numbers) and the two replacements
    for method in ("lora", "adapter"):
        assert PAPER_ROWS[f"tableb2/{method}/cls"].values["vqa_cls"] == PAPER_ROWS[f"table6/{method}/proj"].values[
            "vqa_cls"]
    assert {k: PAPER_ROWS[f"tableb2/adapter/{k}"].values["vqa_cls"] for k in TABLEB2_X_R_REPLACE} == {
        "none": 44.16, "cls": 54.48, "noise": 43.48, "ones": 24.42}
    assert PAPER_ROWS["tableb2/lora/ones"].values == {"vqa_cls": 45.59}
    assert TABLEB2_X_R_REPLACE == {"none": "none", "cls": "none", "noise": "noise", "ones": "ones"}
    assert PAPER_ROWS["tableb2/lora/none"].routing == "none" and PAPER_ROWS["tableb2/lora/noise"].routing == "proj"
    assert len([k for k in PAPER_ROWS if k.startswith(("table6/", "tableb2/"))]) == 4 + 8


def test_table_b3_ratios_span_the_papers_range():
    from vlrouting.paper_results.ablations import INFERENCE_MS, inference_ratio

    assert len(INFERENCE_MS) == 2 * 2 * 5
    assert INFERENCE_MS[("coco_lm", "adapter", "expand")] == 19.0058
    assert inference_ratio("vqa_cls", "lora", "none") == 1.0
    assert inference_ratio("vqa_cls", "lora", "proj") == pytest.approx(0.2536 / 0.2375)
    assert inference_ratio("vqa", "lora", "proj") is None  # CLIP-BART is not in Table B3
    ratios = [inference_ratio(*key) for key in INFERENCE_MS if key[2] != "none"]
    assert (round(min(ratios), 3), round(max(ratios), 3)) == (0.975, 1.100)


# ------------------------------------------------------------------------------------------------ x_R replaced
def tiny_vlbart(make_tiny_bart, *, x_r_replace="none", x_r_source="visual", method="lora", seed=0):
    bart = make_tiny_bart(seed=seed, **TINY)
    torch.manual_seed(seed + 1)
    sides = ["encoder", "decoder"] if x_r_source == "visual" else ["decoder"]
    cfg = PeftConfig(method=method, tasks=["vqa"], routing="proj", route_sides=sides, r=4, x_r_replace=x_r_replace)
    model = VLBart(bart, ModelConfig(feat_dim=8, n_boxes=3, x_r_source=x_r_source), cfg)
    with torch.no_grad():  # LoRA's B starts at zero: give it weights so that x_R changes the output
        g = torch.Generator().manual_seed(seed + 2)
        for w in peft_wrappers(model):
            w.peft_block.lora_B.copy_(0.5 * torch.randn(w.peft_block.lora_B.shape, generator=g))
    return model.eval()


def vl_batch(b=2, l_in=5, l_out=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {"task": "vqa", "input_ids": torch.randint(5, TINY_VOCAB - 10, (b, l_in), generator=g),
            "attention_mask": torch.ones(b, l_in, dtype=torch.long),
            "vis_feats": torch.randn(b, 3, 8, generator=g), "img_order_ids": torch.zeros(b, 3, dtype=torch.long),
            "obj_order_ids": torch.arange(3).expand(b, 3).clone(),
            "labels": torch.randint(5, TINY_VOCAB - 10, (b, l_out), generator=g)}


def record_x_r(model) -> list[tuple[str, torch.Tensor]]:
    """Every x_R a routed wrapper reads, as (side, x_R expanded to the module's batch)."""
    seen = []
    for w in peft_wrappers(model):
        original = w.routing_inputs

        def spy(batch, _original=original, _w=w):
            out = _original(batch)
            if out[3] is not None:
                seen.append((_w.side, out[3]))
            return out

        w.routing_inputs = spy
    return seen


def test_x_r_replace_config_and_the_readme_example():
    with pytest.raises(ConfigError, match=r"peft.x_r_replace must be one of none, noise, ones, got 'zeros'"):
        PeftConfig(method="lora", routing="proj", x_r_replace="zeros")
    with pytest.raises(ConfigError, match="routes no task, so nothing reads x_R"):
        PeftConfig(method="lora", routing="none", x_r_replace="noise")
    cfg = load_config("multitask_adapter_comb3", ["peft.x_r_replace=noise"])
    assert cfg.peft.x_r_replace == "noise" and cfg.peft.routing == "comb3"
    assert load_config("multitask_adapter_comb3").peft.x_r_replace == "none"


def test_noise_is_drawn_once_per_forward_for_every_consumer_and_changes_per_call(make_tiny_bart):
    """Visual x_R (both sides): all routed modules of one forward read the same fresh N(0, 1) draw, one row per
    example — exactly torch.randn from the global generator at the forward's start — and the next forward another."""
    model = tiny_vlbart(make_tiny_bart, x_r_replace="noise")
    seen = record_x_r(model)
    batch = vl_batch()
    torch.manual_seed(7)
    expected = torch.randn(2, 1, D)
    torch.manual_seed(7)
    with torch.no_grad():
        model(batch)
    assert {side for side, _ in seen} == {"encoder", "decoder"}
    assert len(seen) == 2 * 2 + 2 * 2 * 2  # q, v LoRA of 2 layers: encoder self-attn; decoder self-, cross-attn
    for _, x_r in seen:
        assert torch.equal(x_r, expected)
    first = seen[0][1]
    seen.clear()
    with torch.no_grad():
        model(batch)
    assert not torch.allclose(seen[0][1], first) and all(torch.equal(x, seen[0][1]) for _, x in seen)


@pytest.mark.parametrize("replace", ["noise", "ones"])
def test_only_the_routing_input_is_replaced_the_visual_tokens_stay_real(make_tiny_bart, replace):
    real, replaced = tiny_vlbart(make_tiny_bart), tiny_vlbart(make_tiny_bart, x_r_replace=replace)
    replaced.load_state_dict(real.state_dict())
    inputs, seen = {}, record_x_r(replaced)
    for name, m in (("real", real), ("replaced", replaced)):  # the encoder's input: [text ; visual tokens]
        m.bart.model.encoder.layers[0].register_forward_pre_hook(
            lambda mod, args, _name=name: inputs.__setitem__(_name, args[0].clone()))
    batch = vl_batch()
    with torch.no_grad():
        out_real, out_replaced = real(batch).logits, replaced(batch).logits
        vis = real.visual_embedding(batch["vis_feats"], batch["img_order_ids"], batch["obj_order_ids"])
    assert torch.equal(inputs["real"], inputs["replaced"])
    torch.testing.assert_close(inputs["replaced"][:, -3:], vis)  # the last 3 positions: the real visual tokens
    x_r = seen[0][1]
    assert x_r.shape == (2, 1, D)
    if replace == "ones":
        assert torch.equal(x_r, torch.ones(2, 1, D))
    assert not torch.allclose(x_r, vis.mean(dim=1, keepdim=True))  # not the real (visual-token mean) x_R
    assert (out_real - out_replaced).abs().max() > 1e-3  # and the replacement reaches the output


def test_beam_search_with_replaced_x_r_equals_decoding_with_that_x_r(make_tiny_bart):
    """Encoder x_R (decoder side): generate() writes x_R from beam-expanded encoder states at every step; the
    replacement is drawn once per forward, one row per example, and every beam of an example reads its row. The
    beams equal those of the same weights decoding with that tensor as x_R."""
    kw = dict(num_beams=3, max_new_tokens=5, return_dict_in_generate=True, output_scores=True)
    noisy = tiny_vlbart(make_tiny_bart, x_r_replace="noise", x_r_source="encoder")
    seen = record_x_r(noisy)
    batch = vl_batch(b=3)
    with torch.no_grad():
        got = noisy.generate(batch, **kw)
    drawn = noisy.routing_state.x_r["decoder"]
    assert drawn.shape == (3, 1, D)
    assert len(seen) >= 5 * 4 and {side for side, _ in seen} == {"decoder"}  # every step, 4 LoRA modules
    for _, x_r in seen:
        assert torch.equal(x_r, drawn.repeat_interleave(3, dim=0))

    plain = tiny_vlbart(make_tiny_bart, x_r_source="encoder")
    plain.load_state_dict(noisy.state_dict())

    def force(module, args, kwargs):  # runs after the family's hook, which wrote the real encoder-mean x_R
        plain.routing_state.x_r["decoder"] = drawn
    plain.bart.model.decoder.register_forward_pre_hook(force, with_kwargs=True)
    with torch.no_grad():
        want = plain.generate(batch, **kw)
        real = tiny_vlbart(make_tiny_bart, x_r_source="encoder")
        real.load_state_dict(noisy.state_dict())
        unforced = real.generate(batch, **kw)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(got.sequences_scores, want.sequences_scores, rtol=1e-6, atol=1e-6)
    assert (got.sequences_scores - unforced.sequences_scores).abs().max() > 1e-4  # the real x_R decodes otherwise


# ------------------------------------------------------------------------------------------------ ΔW (Fig. B2)
def write_pair_files(run: Path, init: dict, final: dict, pairs: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    save_file(init, str(run / INIT_NAME), metadata={DELTA_PAIRS_KEY: json.dumps(pairs)})
    save_file(final, str(run / WEIGHTS_NAME))


def test_analyze_deltas_equals_hand_computation_on_constructed_files(tmp_path, capsys):
    """One plain pair and one merged q|v pair whose row halves are reported separately; changes chosen so that
    every Frobenius norm is a whole number."""
    g = torch.Generator().manual_seed(0)  # whole-number weights: W_t − W_0 is exact in float32

    def w0(*shape):
        return torch.randint(-3, 4, shape, generator=g).float()

    a0, b0 = w0(4, 6), w0(6, 4)
    qa0, qb0 = w0(4, 6), w0(12, 2)  # merged: A (2r=4, d=6), B (2d=12, r=2)
    da, db = torch.zeros(4, 6), torch.zeros(6, 4)
    da[0, 0], da[3, 5] = 3.0, 4.0  # ‖ΔA‖ = 5
    db[1, 1] = -2.0  # ‖ΔB‖ = 2
    dqa, dqb = torch.zeros(4, 6), torch.zeros(12, 2)
    dqa[0, 1], dqa[1, 2] = 6.0, 8.0  # q rows (0, 1): 10
    dqa[3, 0] = 1.0  # v rows (2, 3): 1
    dqb[0, 0] = 5.0  # q rows (0..5): 5
    dqb[7, 1], dqb[11, 0] = 12.0, 5.0  # v rows (6..11): 13
    pairs = [{"position": "model.layers.3.attn.q", "block": "shared", "down": "model.layers.3.attn.q.A",
              "up": "model.layers.3.attn.q.B", "groups": []},
             {"position": "model.layers.0.attn.c_attn", "block": "vqa", "down": "m.A", "up": "m.B",
              "groups": ["q", "v"]}]
    run = tmp_path / "snap" / "exp" / "seed1"
    write_pair_files(run, {"model.layers.3.attn.q.A": a0, "model.layers.3.attn.q.B": b0, "m.A": qa0, "m.B": qb0,
                           "other.bias": torch.zeros(3)},
                     {"model.layers.3.attn.q.A": a0 + da, "model.layers.3.attn.q.B": b0 + db, "m.A": qa0 + dqa,
                      "m.B": qb0 + dqb, "other.bias": torch.ones(3)}, pairs)
    assert cli_main(["analyze", "deltas", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| model.layers.3.attn.q | shared | – | 5 | 2 | 2.5 |" in out
    assert "| model.layers.0.attn.c_attn | vqa | q | 10 | 5 | 2 |" in out
    assert "| model.layers.0.attn.c_attn | vqa | v | 1 | 13 | 0.07692 |" in out
    rows = list(csv.DictReader((run / "analysis" / "deltas.csv").open()))
    got = [(r["layer"], r["kind"], r["group"], float(r["delta_down"]), float(r["delta_up"]), float(r["ratio"]))
           for r in rows]
    assert got == [("3", "attn.q", "", 5.0, 2.0, 2.5), ("0", "attn.c_attn", "q", 10.0, 5.0, 2.0),
                   ("0", "attn.c_attn", "v", 1.0, 13.0, 1 / 13)]
    assert (run / "analysis" / "deltas.png").read_bytes()[:8] == PNG_MAGIC
    assert (run / "analysis" / "deltas.md").read_text().count("\n| ") == 4  # header + 3 rows


def test_analyze_deltas_without_step0_weights_is_one_sentence(tmp_path, capsys):
    run = tmp_path / "exp" / "seed1"
    run.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(run / WEIGHTS_NAME))
    assert cli_main(["analyze", "deltas", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run} has no peft_init.safetensors (the PEFT weights at step 0")
    assert len(err.splitlines()) == 1 and err.endswith(".") and not (run / "analysis").exists()


@pytest.mark.parametrize("method, shared, n_pairs, down, up", [
    ("lora", True, 12, "peft_block.lora_A", "peft_block.lora_B"),
    ("adapter", False, 10 * 2, "peft_block.gqa.down.weight", "peft_block.gqa.up.weight"),
    ("half_shared_adapter", False, 10 * 2, "peft_block.gqa.weight", "peft_shared.weight"),
    ("compacter", True, 0, None, None),
])
def test_step0_weights_name_every_down_up_pair(make_tiny_bart, tmp_path, capsys, method, shared, n_pairs, down, up):
    """The wrappers name their pairs (LoRA: A, B; adapters: down/up weights); the file holds the trainable tensors
    and the pairs. A method without plain down/up matrices (Compacter's are Kronecker sums) gets the one sentence."""
    bart = make_tiny_bart(seed=0, **TINY)
    cfg = PeftConfig(method=method, tasks=["vqa", "gqa"], shared=shared, routing="proj", reduction_factor=8, r=4,
                     phm_dim=2)
    attach_peft(bart, cfg)
    mark_trainable(bart, method)
    run = tmp_path / "run"
    path = save_peft_init(bart, run)
    with safe_open(str(path), framework="pt") as fh:
        pairs = json.loads(fh.metadata()[DELTA_PAIRS_KEY])
        names = set(fh.keys())
    assert names == {n for n, p in bart.named_parameters() if p.requires_grad}
    assert len(pairs) == n_pairs
    for pair in pairs:
        assert pair["down"] in names and pair["up"] in names and pair["groups"] == []
    if n_pairs:
        last = pairs[-1]
        assert last["down"] == f"{last['position']}.{down}" and last["up"] == f"{last['position']}.{up}"
        save_file(load_file(str(path)), str(run / WEIGHTS_NAME))
        assert cli_main(["analyze", "deltas", str(run), "--no-plot"]) == 0
        assert capsys.readouterr().out.count("| 0 | 0 | nan |") == n_pairs  # nothing trained yet: ΔW = 0
    else:
        save_file(load_file(str(path)), str(run / WEIGHTS_NAME))
        assert cli_main(["analyze", "deltas", str(run)]) == 2
        assert "name no down/up projection matrices" in capsys.readouterr().err
    assert save_peft_init(make_tiny_bart(seed=0, **TINY), tmp_path / "full") is None  # full fine-tuning: no file


def test_trainer_saves_step0_weights_on_a_fresh_run_only(synthetic_bench, tmp_path, capsys):
    """A fresh run writes peft_init.safetensors before its first step (LoRA's B is still zero there); a resumed
    run leaves it alone; ΔW of the finished run equals the norms computed from the two files by hand."""
    from vlrouting.train.trainer import main as train_main

    args = ["--config", "multitask_lora_single_proj",
            *common(synthetic_bench, tmp_path, **{"data.limit_train": 16, "train.batch_size": 4, "train.epochs": 1,
                                                  "train.lr": 1e-2, "train.max_steps": 3,
                                                  "train.checkpoint_every": 1})]
    run = tmp_path / "multitask_lora_single_proj" / "seed9595"
    killed = run_train(args, env_extra={"VLROUTING_FAULT_KILL_AT_STEP": "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    init_bytes = (run / INIT_NAME).read_bytes()
    init = load_file(str(run / INIT_NAME))
    b_names = [n for n in init if n.endswith("lora_B")]
    assert len(b_names) == 12 and all(not init[n].any() for n in b_names)  # step 0: B = 0
    assert train_main([*args, "--resume", "latest"]) == 0
    assert (run / INIT_NAME).read_bytes() == init_bytes  # not rewritten on resume
    final = load_file(str(run / WEIGHTS_NAME))
    assert set(final) == set(init)
    assert cli_main(["analyze", "deltas", str(run)]) == 0
    rows = list(csv.DictReader((run / "analysis" / "deltas.csv").open()))
    assert len(rows) == 12
    for r in rows:
        a, b = f"{r['position']}.peft_block.lora_A", f"{r['position']}.peft_block.lora_B"
        assert float(r["delta_down"]) == pytest.approx(float((final[a].double() - init[a].double()).norm()),
                                                       rel=1e-12)
        assert float(r["delta_up"]) == pytest.approx(float(final[b].double().norm()), rel=1e-12)
        assert float(r["delta_down"]) > 0 and float(r["delta_up"]) > 0
    assert {r["stack"] for r in rows} == {"bart.model.decoder.layers", "bart.model.encoder.layers"}
    assert (run / "analysis" / "deltas.png").read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------------------------------------------------------ Table B3 bench
def test_inference_benchmark_smoke(capsys):
    spec = importlib.util.spec_from_file_location("bench_inference", REPO / "scripts" / "bench" / "bench_inference.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--arch", "tiny", "--methods", "adapter", "--routings", "none", "proj", "--rounds", "2",
                       "--warmup", "0", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "| family | task | method | routing | ms / sample | ratio to none | 90 % CI | min–max | paper (B3) |" in out
    assert "commit " in out and "machine: " in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| clip_bart |")]
    assert [(r[1], r[3].rstrip(" †")) for r in rows] == [(t, rt) for t in ("vqa", "gqa", "nlvr", "caption")
                                             for rt in ("none", "proj")]
    for r in rows:
        assert float(r[4]) > 0 and (r[3] != "none" or r[5] == "1.000")
    assert "paper, Table B3: 0.975–1.100" in out
