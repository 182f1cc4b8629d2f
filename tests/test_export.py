"""``python -m vlrouting.models.export``: a fully fine-tuned run becomes a backbone folder, published atomically."""

from __future__ import annotations

import os

import torch

from vlrouting.config import dump_config, load_config
from vlrouting.models.export import main
from vlrouting.models.vlbart import VISUAL_NAME, build_vlbart, load_tokenizer
from vlrouting.peft import save_peft


def test_export_writes_a_loadable_backbone_and_nothing_else(synthetic_bench, tmp_path):
    cfg = load_config("vladapter_full_finetuning", [f"model.backbone={synthetic_bench['tiny']}", "model.feat_dim=512"])
    run = tmp_path / "snap" / "run"
    torch.manual_seed(3)
    model = build_vlbart(cfg.model, cfg.peft, pretrained=True, vocab_size=len(load_tokenizer(cfg.model)))
    with torch.no_grad():
        model.visual_embedding.state_dict()[next(iter(model.visual_embedding.state_dict()))].add_(0.5)
    save_peft(model, run, {})
    (run / "config.yaml").write_text(dump_config(cfg))
    out = tmp_path / "exported"
    assert main(["--run", str(run), "--out", str(out)]) == 0
    names = sorted(os.listdir(out))
    assert VISUAL_NAME in names and "config.json" in names and "tokenizer.json" in names
    assert any(n.endswith(".safetensors") and n != VISUAL_NAME for n in names)  # the BART weights
    assert sorted(os.listdir(tmp_path)) == ["exported", "snap"]  # no temporary folder left beside it
    umask = os.umask(0)
    os.umask(umask)
    assert all((out / n).stat().st_mode & 0o777 == 0o666 & ~umask for n in names)
    # the folder is a backbone: a model built from it (backbone + visual_init) equals the exported one
    again = load_config("vladapter_full_finetuning", [f"model.backbone={out}", f"model.visual_init={out}",
                                                      "model.feat_dim=512"])
    reloaded = build_vlbart(again.model, again.peft, pretrained=True, vocab_size=len(load_tokenizer(again.model)))
    want, got = model.state_dict(), reloaded.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
