"""The step on an accelerator, measured on the CPU: torch.compile agrees with eager, the loader timer's accounting,
evaluation visits every example once in input-length order."""

from __future__ import annotations

import pytest
import torch

from vlrouting.config import load_config
from vlrouting.data.multitask import ShardSampler
from vlrouting.models.registry import build_model, load_tokenizer
from vlrouting.train.accel import LoaderTimer, adamw, maybe_compile

pytestmark = pytest.mark.usefixtures("single_thread")


def _batch(task: str, length: int, feat_dim: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, v = 3, 4
    return {"task": task, "input_ids": torch.randint(5, 60, (b, length), generator=g),
            "attention_mask": torch.ones(b, length, dtype=torch.long),
            "vis_feats": torch.randn(b, v, feat_dim, generator=g), "img_order_ids": torch.zeros(b, v, dtype=torch.long),
            "obj_order_ids": torch.arange(v).repeat(b, 1), "labels": torch.randint(5, 60, (b, 4), generator=g),
            "loss_weights": torch.ones(b)}


def test_compiled_forward_and_backward_equal_eager(tiny_bart_dir):
    """``train.compile``: dynamo captures the family forward with its per-forward routing state (task, x_R) and AOT
    autograd its backward; losses and gradients equal eager ones (the inductor code generator itself is PyTorch's
    to test, and costs minutes of compilation on a CPU, so this test uses the ``aot_eager`` backend)."""
    from vlrouting.data.tasks import get_task

    cfg = load_config("multitask_lora_single_none", ["peft.routing=comb1", f"model.backbone={tiny_bart_dir}",
                                                     "model.feat_dim=8", "model.x_r_source=visual"])
    tok = load_tokenizer(cfg.model)
    model = build_model(cfg.model, cfg.peft, pretrained=True, tokenizer=tok).eval()  # eval: no dropout draws
    compiled = maybe_compile(model, True, backend="aot_eager")
    assert maybe_compile(model, False) is model
    for task, length, seed in (("nlvr", 6, 0), ("caption", 5, 1)):  # proj and expand routing, two shapes
        batch = _batch(task, length, 8, seed)
        grads = []
        for fn in (model, compiled):
            model.zero_grad(set_to_none=True)
            out = fn(batch)
            loss = get_task(task).loss_term(out, batch).value
            loss.backward()
            grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                          if p.requires_grad and p.grad is not None}))
        (le, ge), (lc, gc) = grads
        assert torch.allclose(le, lc, rtol=1e-6, atol=1e-7)
        assert ge.keys() == gc.keys() and len(ge) > 0
        for name in ge:
            assert torch.allclose(ge[name], gc[name], rtol=1e-5, atol=1e-7), name


def test_adamw_is_fused_only_on_cuda():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = adamw([{"params": [p], "weight_decay": 0.0}], lr=1e-3, eps=1e-6, device=torch.device("cpu"))
    assert not opt.defaults.get("fused") and opt.defaults["eps"] == 1e-6 and opt.defaults["betas"] == (0.9, 0.999)


def test_loader_timer_counts_wait_and_compute():
    import time

    class Slow:
        def __iter__(self):
            for i in range(3):
                time.sleep(0.02)
                yield {"ids": [i, i + 10]}

    timer = LoaderTimer(Slow())
    for _ in timer:
        time.sleep(0.01)
    s = timer.summary()
    assert (s["batches"], s["samples"]) == (3, 6)
    assert timer.wait >= 0.06 and timer.compute >= 0.02  # the last step's compute ends the loop, not counted
    assert 0.5 < s["data_wait_fraction"] < 1.0


def test_length_order_shards_cover_every_example_once():
    order = [4, 0, 3, 1, 2]
    shards = [list(ShardSampler(5, 2, r, order)) for r in range(2)]
    assert shards == [[4, 3, 2], [0, 1]] and sorted(shards[0] + shards[1]) == list(range(5))
    with pytest.raises(ValueError):
        ShardSampler(3, 1, 0, [0, 0, 1])
