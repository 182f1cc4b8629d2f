"""PEFT modules with routing (DESIGN §4, §5, §9): formulas, initialisation, parameter counts, training,
generation with beams, task selection, save/load, gradient checkpointing, other backbones, errors.

Everything runs on tiny backbones on the CPU; bart-base-sized counts are taken on the meta device.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from vlrouting.errors import ConfigError, DataError
from vlrouting.peft import (
    PEFT_METHODS,
    PeftConfig,
    RoutingState,
    attach_peft,
    count_parameters,
    get_peft_method,
    load_peft,
    mark_trainable,
    peft_parameters,
    peft_wrappers,
    save_peft,
)
from vlrouting.peft.io import CONFIG_NAME, WEIGHTS_NAME
from vlrouting.routing import ROUTING_FUNCTIONS, ROUTING_MIXES, resolve_routing, route

from conftest import TINY_VOCAB

pytestmark = pytest.mark.usefixtures("single_thread")

TASKS4 = ["vqa", "gqa", "nlvr", "caption"]
D = 64  # d_model of the tiny BART (vlrouting.models.tiny.tiny_bart_config)
ALL_ROUTINGS = list(ROUTING_FUNCTIONS) + list(ROUTING_MIXES)
BOTH_SIDES = ["encoder", "decoder"]


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def make_batch(seed=1, b=3, l_in=7, l_out=5):
    g = _gen(seed)
    return torch.randint(5, TINY_VOCAB, (b, l_in), generator=g), torch.randint(5, TINY_VOCAB, (b, l_out), generator=g)


def make_x_r(seed=2, b=3, l_v=1, d=D, scale=1.0):
    return scale * torch.randn(b, l_v, d, generator=_gen(seed))


def attach(model, method="adapter", **kw):
    cfg = PeftConfig(method=method, **kw)
    return cfg, attach_peft(model, cfg)


def logits(model, ids, labels):
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).logits


def gelu_new_ref(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def standalone_wrapper(method, base, routing="none", tasks=("vqa",), shared=True, **cfg_kw):
    """One wrapper built through the method registry (as attach_peft does), routing on its (decoder) side."""
    cfg = PeftConfig(method=method, tasks=list(tasks), shared=shared, routing=routing, **cfg_kw)
    state = RoutingState()
    wrapper = get_peft_method(method).wrapper(
        base, cfg, side="decoder", routing_map=resolve_routing(routing, tuple(tasks)), route_enabled=True,
        state=state,
    )
    return wrapper, state


def randomize_(params, seed=0, std=0.3):
    g = _gen(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


def train_steps(model, state, steps, lr, ids, labels, x_r, tasks=("vqa",), sides=BOTH_SIDES):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for i in range(steps):
        state.set(tasks[i % len(tasks)], **{s: x_r for s in sides})
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


# ---------------------------------------------------------------------------------------------------------------
# 1. Module formulas against hand computations from the module's own weights
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("l_v", [1, 3])
@pytest.mark.parametrize("routing", list(ROUTING_FUNCTIONS))
def test_adapter_equals_hand_formula(routing, l_v):
    """h + W_up·gelu_new(route(W_down h, W_down x_R)) with the same W_down (bias included) for x_R."""
    torch.manual_seed(0)
    base = nn.Linear(12, 16).double()
    wrapper, state = standalone_wrapper("adapter", base, routing, tasks=("vqa", "gqa"), shared=False,
                                        reduction_factor=4)
    wrapper.double().eval()
    randomize_(p for n, p in wrapper.named_parameters() if not n.startswith("base_layer"))  # biases non-zero
    x = torch.randn(4, 5, 12, dtype=torch.float64)
    x_r = torch.randn(2, l_v, 16, dtype=torch.float64)  # 2 examples, the module sees 4 rows (2 beams each)
    state.set("gqa", decoder=x_r)
    out = wrapper(x)

    blk = wrapper.peft_block["gqa"]
    wd, bd, wu, bu = blk.down.weight, blk.down.bias, blk.up.weight, blk.up.bias
    assert wd.shape == (4, 16) and wu.shape == (16, 4)  # bottleneck d // reduction_factor
    h = x @ base.weight.T + base.bias
    z = h @ wd.T + bd
    if routing != "none":
        z = route(routing, z, x_r.repeat_interleave(2, dim=0) @ wd.T + bd)
    expected = h + gelu_new_ref(z) @ wu.T + bu
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("base_kind", ["linear", "conv1d"])
@pytest.mark.parametrize("l_v", [1, 3])
@pytest.mark.parametrize("routing", list(ROUTING_FUNCTIONS))
def test_lora_equals_hand_formula(routing, l_v, base_kind):
    """W0 x + b + (α/r)·B·route(A x, A x_R), dropout off in eval; Conv1D stores W0 as (in, out)."""
    torch.manual_seed(0)
    if base_kind == "linear":
        base = nn.Linear(12, 10).double()
    else:
        base = Conv1D(10, 12).double()  # GPT-2 style: nf = out, nx = in
        torch.nn.init.normal_(base.bias)
    wrapper, state = standalone_wrapper("lora", base, routing, r=6, lora_alpha=3.0, lora_dropout=0.1)
    wrapper.double().eval()
    randomize_([wrapper.peft_block.lora_B], seed=3)  # B is zero at init
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    x_r = torch.randn(3, l_v, 12, dtype=torch.float64)
    state.set("vqa", decoder=x_r)
    out = wrapper(x)

    a, b = wrapper.peft_block.lora_A, wrapper.peft_block.lora_B
    assert a.shape == (6, 12) and b.shape == (10, 6)
    w0 = base.weight.T if base_kind == "conv1d" else base.weight
    z = x @ a.T
    if routing != "none":
        z = route(routing, z, x_r @ a.T)
    expected = x @ w0.T + base.bias + (3.0 / 6) * z @ b.T
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_x_r_rows_must_divide_the_module_batch():
    wrapper, state = standalone_wrapper("adapter", nn.Linear(8, 8), "mul")
    state.set("vqa", decoder=torch.randn(4, 1, 8))
    with pytest.raises(RuntimeError, match="x_R has 4 rows"):
        wrapper(torch.randn(6, 2, 8))


# ---------------------------------------------------------------------------------------------------------------
# 2. LoRA at init is the identity on the backbone; routing adds no parameters
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False])
def test_lora_at_init_returns_base_output_for_every_routing(make_tiny_bart, shared):
    base = make_tiny_bart(seed=0).eval()
    ids, labels = make_batch()
    x_r = make_x_r(l_v=2)
    ref = logits(base, ids, labels)
    for routing in ALL_ROUTINGS:
        model = copy.deepcopy(base)
        _, state = attach(model, "lora", tasks=TASKS4, shared=shared, routing=routing, route_sides=BOTH_SIDES)
        model.eval()
        for task in TASKS4:
            state.set(task, encoder=x_r, decoder=x_r)
            assert torch.equal(logits(model, ids, labels), ref), (routing, task)


@pytest.mark.parametrize("method", ["adapter", "lora"])
def test_routing_adds_zero_parameters(make_tiny_bart, method):
    base = make_tiny_bart(seed=0)
    for shared in (True, False):
        counts, names = {}, {}
        for routing in ALL_ROUTINGS:
            model = copy.deepcopy(base)
            attach(model, method, tasks=TASKS4, shared=shared, routing=routing, route_sides=BOTH_SIDES)
            mark_trainable(model, method)
            counts[routing] = count_parameters(model)
            names[routing] = [n for n, _ in peft_parameters(model)]
        assert all(c == counts["none"] for c in counts.values()), counts
        assert all(n == names["none"] for n in names.values())


# ---------------------------------------------------------------------------------------------------------------
# 3. bart-base parameter counts (meta device: nothing allocated)
# ---------------------------------------------------------------------------------------------------------------

BART_BASE_TOTAL = 139_420_416
ADAPTER_ONE = 2 * 768 * 96 + 96 + 768  # Down (768→96) + Up (96→768), both with bias
LORA_ONE = 128 * 768 + 768 * 128  # A (r × in) + B (out × r), q_proj/v_proj are 768 → 768
LAYER_NORMS = (6 * 2 + 1 + 6 * 3 + 1) * 2 * 768  # encoder 2/layer + embedding LN; decoder 3/layer + embedding LN
BIASES = 6 * (4 * 768 + 3072 + 768 + 2 * 768) + 6 * (8 * 768 + 3072 + 768 + 3 * 768) + 2 * 768


@pytest.mark.parametrize(
    "method, shared, n_wrapped, peft_params, also_trainable",
    [
        ("adapter", True, 30, 4_449_600, 49_152),
        ("adapter", False, 30, 4 * 4_449_600, 49_152),
        ("lora", True, 36, 7_077_888, 125_952),
        ("lora", False, 36, 4 * 7_077_888, 125_952),
    ],
)
def test_bart_base_parameter_counts(make_bart_base_meta, method, shared, n_wrapped, peft_params, also_trainable):
    assert 30 * ADAPTER_ONE == 4_449_600 and 36 * LORA_ONE == 7_077_888
    assert LAYER_NORMS == 49_152 and BIASES == 125_952
    model = make_bart_base_meta()
    assert count_parameters(model)["total"] == BART_BASE_TOTAL
    with torch.device("meta"):
        cfg = PeftConfig(method=method, tasks=TASKS4, shared=shared, routing="comb1", r=128,
                         reduction_factor=8)
        attach_peft(model, cfg)
    wrappers = peft_wrappers(model)
    assert len(wrappers) == n_wrapped
    sides = [w.side for w in wrappers]
    enc = 12  # adapter: 6 layers × (self-attn, FFN); lora: 6 layers × (q, v)
    assert sides.count("encoder") == enc and sides.count("decoder") == n_wrapped - enc
    assert all(p.is_meta for _, p in peft_parameters(model))
    assert sum(p.numel() for _, p in peft_parameters(model)) == peft_params

    mark_trainable(model, method, always=("visual_embedding",))
    counts = count_parameters(model)
    assert counts["trainable"] == peft_params + also_trainable
    assert counts["total"] == BART_BASE_TOTAL + peft_params
    assert counts["percent"] == pytest.approx(100 * counts["trainable"] / counts["total"])


# ---------------------------------------------------------------------------------------------------------------
# 4. Initialisation after from_pretrained (DESIGN §9)
# ---------------------------------------------------------------------------------------------------------------


def _check_peft_init(model, method, d_in=D):
    if method == "adapter":
        weights = torch.cat([p.flatten() for n, p in peft_parameters(model) if n.endswith("weight")])
        biases = torch.cat([p.flatten() for n, p in peft_parameters(model) if n.endswith("bias")])
        assert weights.std().item() == pytest.approx(0.02, rel=0.05)
        assert abs(weights.mean().item()) < 0.002
        assert not biases.any()
    else:
        a = torch.cat([p.flatten() for n, p in peft_parameters(model) if n.endswith("lora_A")])
        b = torch.cat([p.flatten() for n, p in peft_parameters(model) if n.endswith("lora_B")])
        bound = 1 / math.sqrt(d_in)
        assert a.abs().max().item() <= bound
        assert (a != 0).float().mean().item() > 0.999
        assert a.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)  # U(±bound)
        assert not b.any()


@pytest.mark.parametrize("method", ["adapter", "lora"])
def test_peft_initialised_after_from_pretrained(tiny_bart_dir, method):
    from transformers import BartForConditionalGeneration

    saved = load_file(str(tiny_bart_dir / "model.safetensors"))
    model = BartForConditionalGeneration.from_pretrained(str(tiny_bart_dir))
    attach(model, method, tasks=TASKS4, shared=False, r=32)
    _check_peft_init(model, method)
    # the backbone keeps its loaded weights (attach does not re-initialise the wrapped layers)
    state = model.state_dict()
    wrapped = "model.encoder.layers.0.self_attn.q_proj" if method == "lora" else "model.decoder.layers.1.fc2"
    for key in (f"{wrapped}.weight", f"{wrapped}.bias", "model.encoder.layers.1.fc1.weight"):
        assert torch.equal(state[key.replace(wrapped, f"{wrapped}.base_layer")], saved[key]), key


@pytest.mark.parametrize("method", ["adapter", "lora"])
def test_peft_initialised_under_transformers_init_skipping(make_tiny_bart, method):
    """Under ``no_init_weights`` (what from_pretrained uses) torch.nn.init is a no-op; PEFT weights must not be."""
    from transformers.initialization import no_init_weights

    model = make_tiny_bart(seed=0)
    with no_init_weights():
        probe = torch.zeros(100)
        torch.nn.init.normal_(probe)
        assert not probe.any(), "the context should disable torch.nn.init (else this test checks nothing)"
        attach(model, method, tasks=TASKS4, shared=False, r=32)
    _check_peft_init(model, method)


# ---------------------------------------------------------------------------------------------------------------
# 5. Training, generation with beams, task selection
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["adapter", "lora"])
def test_wrapped_tiny_bart_trains(make_tiny_bart, method):
    model = make_tiny_bart(seed=0)
    _, state = attach(model, method, tasks=["vqa"], routing="mul", route_sides=BOTH_SIDES, r=16, lora_dropout=0.0)
    mark_trainable(model, method)
    before = {n: p.detach().clone() for n, p in peft_parameters(model)}
    ids, labels = make_batch(b=4)
    losses = train_steps(model, state, 20, 1e-2, ids, labels, make_x_r(b=4, l_v=2))
    assert losses[-1] < losses[0] - 0.3, losses
    assert all(math.isfinite(v) for v in losses)
    changed = [n for n, p in peft_parameters(model) if not torch.equal(p, before[n])]
    assert len(changed) == len(before)


@pytest.mark.parametrize("method", ["adapter", "lora"])
def test_generate_with_beams_equals_per_example_loop(make_tiny_bart, method):
    """generate() runs the encoder on B rows and the decoder on B·3 beams: x_R must follow (DESIGN §9)."""
    model = make_tiny_bart(seed=0)
    _, state = attach(model, method, tasks=["vqa"], routing="proj", route_sides=BOTH_SIDES, r=16, lora_dropout=0.0)
    mark_trainable(model, method)
    ids, labels = make_batch(b=4, l_in=6)
    x_r = make_x_r(b=4, l_v=1, scale=2.0)
    train_steps(model, state, 8, 2e-2, ids, labels, x_r)  # non-trivial PEFT weights (LoRA's B leaves zero)
    kw = dict(num_beams=3, max_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_scores=True)

    state.set("vqa", encoder=x_r, decoder=x_r)
    batched = model.generate(ids, **kw)
    assert batched.sequences.shape[0] == 4
    pad = model.generation_config.pad_token_id
    for i in range(4):
        state.set("vqa", encoder=x_r[i:i + 1], decoder=x_r[i:i + 1])
        alone = model.generate(ids[i:i + 1], **kw)
        n = alone.sequences.shape[1]
        assert torch.equal(batched.sequences[i, :n], alone.sequences[0]), i
        assert (batched.sequences[i, n:] == pad).all()
        torch.testing.assert_close(batched.sequences_scores[i], alone.sequences_scores[0], rtol=1e-5, atol=1e-5)

    # non-vacuous: x_R really steers the beams (another example's x_R gives other scores)
    state.set("vqa", encoder=x_r, decoder=x_r.roll(1, dims=0))
    swapped = model.generate(ids, **kw)
    assert (swapped.sequences_scores - batched.sequences_scores).abs().max() > 1e-3


def test_task_selects_the_per_task_module(make_tiny_bart):
    ids, labels = make_batch()
    x_r = make_x_r()

    multiple = make_tiny_bart(seed=0).eval()
    _, state = attach(multiple, "adapter", tasks=TASKS4, shared=False, routing="none")
    outs = {}
    for task in TASKS4:
        state.set(task)
        outs[task] = logits(multiple, ids, labels)
    for t1 in TASKS4:
        for t2 in TASKS4:
            if t1 < t2:
                assert (outs[t1] - outs[t2]).abs().max() > 1e-6, (t1, t2)

    single = make_tiny_bart(seed=0).eval()
    _, state = attach(single, "adapter", tasks=TASKS4, shared=True, routing="none")
    state.set("vqa")
    ref = logits(single, ids, labels)
    for task in TASKS4:
        state.set(task)
        assert torch.equal(logits(single, ids, labels), ref)

    # a single module with a mix routes by task: vqa/gqa share `mul`, nlvr uses `proj` (Table 8, comb1)
    single_mix = make_tiny_bart(seed=0).eval()
    _, state = attach(single_mix, "adapter", tasks=TASKS4, shared=True, routing="comb1")
    outs = {}
    for task in TASKS4:
        state.set(task, decoder=x_r)
        outs[task] = logits(single_mix, ids, labels)
    assert torch.equal(outs["vqa"], outs["gqa"])
    assert not torch.equal(outs["vqa"], outs["nlvr"])

    state.set("retrieval", decoder=x_r)
    with pytest.raises(KeyError, match="retrieval"):
        logits(single_mix, ids, labels)


def test_route_sides_decide_which_modules_route(make_tiny_bart):
    """Default x_R source `encoder` feeds the decoder's modules only (DESIGN §4)."""
    ids, labels = make_batch()
    model = make_tiny_bart(seed=0).eval()
    _, state = attach(model, "adapter", tasks=["vqa"], routing="mul")  # route_sides default ["decoder"]
    assert {w.side for w in peft_wrappers(model) if w.route_enabled} == {"decoder"}
    x_r = make_x_r()
    state.set("vqa", decoder=x_r)  # no encoder x_R needed
    ref = logits(model, ids, labels)
    state.set("vqa", encoder=make_x_r(seed=9), decoder=x_r)  # an encoder x_R is ignored
    assert torch.equal(logits(model, ids, labels), ref)
    state.set("vqa", decoder=make_x_r(seed=9))
    assert not torch.equal(logits(model, ids, labels), ref)


# ---------------------------------------------------------------------------------------------------------------
# 6. Save / load
# ---------------------------------------------------------------------------------------------------------------


def _load_tiny(tiny_bart_dir):
    from transformers import BartForConditionalGeneration

    return BartForConditionalGeneration.from_pretrained(str(tiny_bart_dir))


@pytest.mark.parametrize("method", ["adapter", "lora"])
def test_save_then_load_reproduces_outputs_bit_for_bit(tiny_bart_dir, tmp_path, method):
    ids, labels = make_batch()
    x_r = make_x_r()
    torch.manual_seed(0)
    trained = _load_tiny(tiny_bart_dir)
    cfg, state = attach(trained, method, tasks=TASKS4, shared=False, routing="comb1", r=16)
    mark_trainable(trained, method, always=("visual_embedding",))
    train_steps(trained, state, 4, 1e-2, ids, labels, x_r, tasks=TASKS4, sides=["decoder"])
    save_peft(trained, tmp_path, cfg.to_dict())
    assert (tmp_path / WEIGHTS_NAME).is_file() and (tmp_path / CONFIG_NAME).is_file()

    torch.manual_seed(123)  # different PEFT init in the fresh model
    fresh = _load_tiny(tiny_bart_dir)
    saved_cfg = json.loads((tmp_path / CONFIG_NAME).read_text())
    cfg2, state2 = attach(fresh, **saved_cfg)
    assert cfg2 == cfg
    mark_trainable(fresh, method, always=("visual_embedding",))
    fresh.eval()
    state.set("nlvr", decoder=x_r)
    state2.set("nlvr", decoder=x_r)
    assert not torch.equal(logits(fresh, ids, labels), logits(trained, ids, labels))

    assert load_peft(fresh, tmp_path) == cfg.to_dict()
    for task in TASKS4:
        state.set(task, decoder=x_r)
        state2.set(task, decoder=x_r)
        assert torch.equal(logits(fresh, ids, labels), logits(trained, ids, labels)), task


def test_strict_load_names_missing_and_unexpected_keys(tiny_bart_dir, tmp_path):
    single = _load_tiny(tiny_bart_dir)
    cfg, _ = attach(single, "adapter", tasks=TASKS4, shared=True)
    mark_trainable(single, "adapter")
    save_peft(single, tmp_path, cfg.to_dict())

    multiple = _load_tiny(tiny_bart_dir)
    attach(multiple, "adapter", tasks=TASKS4, shared=False)
    mark_trainable(multiple, "adapter")
    before = {n: p.detach().clone() for n, p in multiple.named_parameters()}
    with pytest.raises(DataError) as err:
        load_peft(multiple, tmp_path)
    msg = str(err.value)
    assert "missing keys" in msg and "unexpected keys" in msg
    missing = sorted(set(n for n, p in multiple.named_parameters() if p.requires_grad)
                     - set(load_file(str(tmp_path / WEIGHTS_NAME))))
    assert missing[0] in msg and "peft_block.caption." in msg
    assert "model.decoder.layers.0.encoder_attn.out_proj.peft_block.down.bias" in msg  # first unexpected key
    assert all(torch.equal(p, before[n]) for n, p in multiple.named_parameters()), "nothing half-loaded"

    # a shape mismatch is named too
    lora8, lora4 = _load_tiny(tiny_bart_dir), _load_tiny(tiny_bart_dir)
    cfg8, _ = attach(lora8, "lora", tasks=["vqa"], r=8)
    attach(lora4, "lora", tasks=["vqa"], r=4)
    for m in (lora8, lora4):
        mark_trainable(m, "lora")
    with torch.no_grad():
        for n, p in lora8.named_parameters():
            if p.requires_grad and n.endswith("bias"):
                p.add_(1.0)  # trained biases: their shapes match, the LoRA tensors' do not
    save_peft(lora8, tmp_path / "r8", cfg8.to_dict())
    before = {n: p.detach().clone() for n, p in lora4.named_parameters()}
    with pytest.raises(DataError, match="lora_A' has shape"):
        load_peft(lora4, tmp_path / "r8")
    assert all(torch.equal(p, before[n]) for n, p in lora4.named_parameters()), "nothing half-loaded"

    with pytest.raises(DataError, match="no PEFT weights"):
        load_peft(single, tmp_path / "nowhere")


@pytest.mark.parametrize("shared, copies", [(True, 1), (False, 4)])
def test_shared_adapter_is_stored_once(tiny_bart_dir, tmp_path, shared, copies):
    model = _load_tiny(tiny_bart_dir)
    cfg, _ = attach(model, "adapter", tasks=TASKS4, shared=shared, routing="comb3")
    mark_trainable(model, "adapter", always=("visual_embedding",))
    save_peft(model, tmp_path, cfg.to_dict())
    keys = set(load_file(str(tmp_path / WEIGHTS_NAME)))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(keys) == len(trainable) and keys == set(trainable)
    peft_keys = [k for k in keys if ".peft_block." in k]
    assert len(peft_keys) == 4 * copies * len(peft_wrappers(model))  # down/up weight and bias per copy
    per_task = [k for k in peft_keys if any(f".peft_block.{t}." in k for t in TASKS4)]
    assert len(per_task) == (0 if shared else len(peft_keys))
    assert not any(".base_layer." in k and "layer_norm" not in k for k in keys)


# ---------------------------------------------------------------------------------------------------------------
# 7. Gradient checkpointing (DESIGN §9, HF PEFT #2826)
# ---------------------------------------------------------------------------------------------------------------


def _grads_one_step(model, state, ids, labels, x_r_init, count_calls_on):
    calls = []
    handle = count_calls_on.register_forward_hook(lambda *a: calls.append(1))
    x_r = x_r_init.clone().requires_grad_(True)
    model.train()
    state.set("caption", encoder=x_r, decoder=x_r)
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=labels).loss.backward()
    handle.remove()
    grads = {n: p.grad.clone() if p.grad is not None else None for n, p in peft_parameters(model)}
    return grads, x_r.grad, len(calls)


@pytest.mark.filterwarnings("ignore:`(gradient_checkpointing_enable|is_gradient_checkpointing)` is deprecated")
@pytest.mark.parametrize("method, routing", [("adapter", "comb1"), ("lora", "proj")])
def test_gradient_checkpointing_keeps_routing_and_gradients(make_tiny_bart, method, routing):
    ids, labels = make_batch()
    x_r = make_x_r(l_v=2)
    plain = make_tiny_bart(seed=0)  # dropout 0 everywhere: the two runs are comparable
    _, state = attach(plain, method, tasks=TASKS4, shared=False, routing=routing, route_sides=BOTH_SIDES,
                      r=8, lora_dropout=0.0)
    mark_trainable(plain, method)
    if method == "lora":  # B = 0 at init would zero the gradients of A and x_R
        randomize_([p for n, p in peft_parameters(plain) if n.endswith("lora_B")], std=0.1)
    ckpt = copy.deepcopy(plain)
    ckpt_state = peft_wrappers(ckpt)[0].state
    assert ckpt_state is not state
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert ckpt.is_gradient_checkpointing and not plain.is_gradient_checkpointing

    g_plain, xg_plain, n_plain = _grads_one_step(plain, state, ids, labels, x_r, peft_wrappers(plain)[0])
    g_ckpt, xg_ckpt, n_ckpt = _grads_one_step(ckpt, ckpt_state, ids, labels, x_r, peft_wrappers(ckpt)[0])
    assert (n_plain, n_ckpt) == (1, 2), "the checkpointed layer should be recomputed during backward"

    assert xg_plain is not None and xg_plain.abs().sum() > 0
    torch.testing.assert_close(xg_ckpt, xg_plain, rtol=1e-5, atol=1e-7)
    caption_grads = {n: g for n, g in g_plain.items() if ".caption." in n}
    assert caption_grads and all(g is not None and g.abs().sum() > 0 for g in caption_grads.values())
    assert all(g_plain[n] is None for n in g_plain if ".caption." not in n)  # other tasks' modules untouched
    for n, g in g_plain.items():
        if g is None:
            assert g_ckpt[n] is None
        else:
            torch.testing.assert_close(g_ckpt[n], g, rtol=1e-5, atol=1e-7, msg=n)


# ---------------------------------------------------------------------------------------------------------------
# 8. Other backbones through the same target table (RoBERTa: encoder side, GPT-2: decoder side, Conv1D)
# ---------------------------------------------------------------------------------------------------------------


def _tiny_roberta():
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    return RobertaModel(RobertaConfig(vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=40))


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=TINY_VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                      bos_token_id=0, eos_token_id=0))


@pytest.mark.parametrize(
    "arch, side, method, n_wrapped",
    [
        ("roberta", "encoder", "adapter", 4),
        ("roberta", "encoder", "lora", 4),
        ("gpt2", "decoder", "adapter", 4),
        ("gpt2", "decoder", "merged_qv_lora", 2),
    ],
)
def test_other_backbones(arch, side, method, n_wrapped):
    model = (_tiny_roberta if arch == "roberta" else _tiny_gpt2)().eval()
    ids = torch.randint(3, TINY_VOCAB, (2, 9), generator=_gen(0))

    def out():
        with torch.no_grad():
            res = model(input_ids=ids)
        return res.last_hidden_state if arch == "roberta" else res.logits

    ref = out()
    _, state = attach(model, method, tasks=["vqa"], routing="proj", route_sides=[side], r=4, reduction_factor=4)
    wrappers = peft_wrappers(model)
    assert len(wrappers) == n_wrapped and {w.side for w in wrappers} == {side}
    if arch == "gpt2" and method == "merged_qv_lora":
        assert all(isinstance(w.base_layer, Conv1D) for w in wrappers)
        # c_attn: 32 → 96 (q, k, v); the merged bottleneck is 2r wide and B holds the q- and v-blocks only
        assert wrappers[0].peft_block.lora_A.shape == (2 * 4, 32)
        assert wrappers[0].peft_block.lora_B.shape == (2 * 32, 4)
    model.eval()

    x_r = make_x_r(b=2, d=32)
    state.set("vqa", **{side: x_r})
    if method in ("lora", "merged_qv_lora"):
        assert torch.equal(out(), ref)  # B = 0 at init
        randomize_([w.peft_block.lora_B for w in wrappers], std=0.1)
    routed = out()
    assert routed.shape == ref.shape and torch.isfinite(routed).all()
    assert not torch.equal(routed, ref)
    state.set("vqa", **{side: make_x_r(seed=5, b=2, d=32)})
    assert not torch.equal(out(), routed)  # x_R on this side reaches the modules

    other = "decoder" if side == "encoder" else "encoder"
    state.set("vqa", **{other: x_r})
    with pytest.raises(RuntimeError, match=f"needs x_R on the {side} side"):
        out()


# ---------------------------------------------------------------------------------------------------------------
# 9. Errors
# ---------------------------------------------------------------------------------------------------------------


def test_unknown_method_names_the_valid_ones(make_tiny_bart):
    with pytest.raises(ConfigError) as err:
        attach(make_tiny_bart(), "prefix")
    assert isinstance(err.value, ValueError)
    assert "prefix" in str(err.value)
    for name in PEFT_METHODS:
        assert name in str(err.value)
    assert set(PEFT_METHODS) >= {"adapter", "lora"}


@pytest.mark.parametrize("routing", ["projection", "comb5", {"vqa": "bogus"}])
def test_unknown_routing_or_mix_names_the_valid_ones(make_tiny_bart, routing):
    model = make_tiny_bart()
    with pytest.raises(ConfigError) as err:
        attach(model, "adapter", tasks=["vqa"], routing=routing)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    for name in ROUTING_FUNCTIONS:
        assert name in msg
    if not isinstance(routing, dict):
        assert routing in msg
        for mix in ROUTING_MIXES:
            assert mix in msg
    assert not peft_wrappers(model), "nothing half-attached"


def test_bad_config_values():
    with pytest.raises(ConfigError, match="route_sides"):
        PeftConfig(route_sides=["vision"])
    with pytest.raises(ConfigError, match="tasks"):
        PeftConfig(tasks=[])
    with pytest.raises(ConfigError, match="unknown PEFT config key"):
        PeftConfig.from_dict({"method": "lora", "rank": 8})


@pytest.mark.parametrize("method", ["adapter", "lora"])
def test_routed_module_without_x_r_raises_clear_error(make_tiny_bart, method):
    model = make_tiny_bart().eval()
    _, state = attach(model, method, tasks=["vqa"], routing="mul")
    ids, labels = make_batch()
    state.set("vqa")
    with pytest.raises(RuntimeError, match="routing 'mul' for task 'vqa' needs x_R on the decoder side"):
        logits(model, ids, labels)


@pytest.mark.parametrize("shared", [True, False])
def test_unconfigured_task_is_refused_even_if_the_routing_dict_names_it(make_tiny_bart, shared):
    model = make_tiny_bart().eval()
    _, state = attach(model, "adapter", tasks=["vqa"], shared=shared, routing={"vqa": "mul", "gqa": "add"})
    ids, labels = make_batch()
    state.set("gqa", decoder=make_x_r())
    with pytest.raises(KeyError, match="task 'gqa' has no PEFT module here; configured tasks: vqa"):
        logits(model, ids, labels)


def test_missing_task_only_allowed_for_a_shared_module_with_one_routing(make_tiny_bart):
    ids, labels = make_batch()
    single = make_tiny_bart().eval()
    _, state = attach(single, "adapter", tasks=TASKS4, shared=True, routing="mul")
    state.set(None, decoder=make_x_r())
    assert torch.isfinite(logits(single, ids, labels)).all()
    for kw in (dict(shared=False, routing="none"), dict(shared=True, routing="comb1")):
        model = make_tiny_bart().eval()
        _, state = attach(model, "adapter", tasks=TASKS4, **kw)
        state.set(None, decoder=make_x_r())
        with pytest.raises(RuntimeError, match="no task is set"):
            logits(model, ids, labels)
