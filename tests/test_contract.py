"""The model-family / task / PEFT contract (DESIGN §10): registries, one layout table, task sets, loss units,
model-level PEFT owners and their auxiliary losses. Tiny models only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlrouting.config import load_config
from vlrouting.data import layout
from vlrouting.data.tasks import (
    TASKS, LossTerm, get_task, report_columns, table_values, task_set_of,
)
from vlrouting.errors import ConfigError
from vlrouting.models.base import ModelOutput
from vlrouting.models.registry import FAMILIES, build_model, get_family

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------- registries
def test_family_registry_and_config_section():
    family = get_family("clip_bart")
    assert family.objectives == ("seq2seq",) and "clip_bart" in FAMILIES
    cfg = load_config("multitask_adapter_comb3")
    assert isinstance(cfg.model, family.config_cls) and cfg.model.family == "clip_bart"
    assert cfg.model.data_spec() == layout.DataSpec("clip", 36, 2048, 1024)
    assert cfg.peft.route_sides == cfg.model.route_sides() == ["decoder"]
    visual = load_config("multitask_adapter_comb3", ["model.x_r_source=visual"])
    assert visual.peft.route_sides == ["encoder", "decoder"]
    with pytest.raises(ConfigError, match="unknown model family 'nope'; valid families: clip_bart"):
        load_config("multitask_adapter_comb3", ["model.family=nope"])
    with pytest.raises(ConfigError, match="valid keys in 'model'"):
        load_config("multitask_adapter_comb3", ["model.not_a_field=1"])


def test_task_objective_must_be_served_by_the_family(monkeypatch):
    import dataclasses

    monkeypatch.setitem(TASKS, "vqa", dataclasses.replace(TASKS["vqa"], objective="classify"))
    with pytest.raises(ConfigError, match="task 'vqa' needs the classify objective, which model family "
                                          "'clip_bart' does not serve"):
        load_config("multitask_adapter_comb3")


def test_layout_table_is_consistent(tmp_path):
    for benchmark, splits in layout.ANNOTATIONS.items():
        for split, sources in splits.items():
            for src in sources:
                assert src.collection in layout.COLLECTIONS, (benchmark, split, src)
    assert layout.feature_file(tmp_path, "coco", "val2014") == tmp_path / "COCO" / "clip_features" / "val2014.h5"
    assert layout.feature_folder(tmp_path, "VG", "vit") == tmp_path / "VG" / "vit_features"
    assert layout.image_id("x/COCO_val2014_000000000042.jpg") == "COCO_val2014_000000000042"
    with pytest.raises(ConfigError, match="unknown feature kind"):
        layout.feature_folder(tmp_path, "COCO", "sift")
    # every task reads its splits from the table
    assert get_task("gqa").sources("train") == layout.ANNOTATIONS["gqa"]["train"]


# ------------------------------------------------------------------------------------------- task sets, columns
def test_report_columns_and_table_values():
    cols = report_columns(["caption", "vqa", "gqa", "nlvr"])
    assert [c.key for c in cols] == ["vqa", "gqa", "nlvr", "caption", "avg"]
    assert [c.title for c in cols] == ["VQA", "GQA", "NLVR²", "COCO CIDEr", "Avg"]
    assert [c.key for c in report_columns(["vqa"])] == ["vqa"]  # no average without the whole set
    assert task_set_of(["nlvr", "caption", "vqa", "gqa"]).name == "vl4"
    test = {"vqa": {"overall": 60.0}, "gqa": {"accuracy": 50.0}, "nlvr": {"accuracy": 70.0},
            "caption": {"CIDEr": 120.0, "BLEU-4": 30.0}}
    assert table_values(test) == {"vqa": 60.0, "gqa": 50.0, "nlvr": 70.0, "caption": 120.0, "avg": 75.0}
    assert table_values({"vqa": {"overall": 60.0}}) == {"vqa": 60.0}
    with pytest.raises(ConfigError, match="unknown task"):
        report_columns(["vqa", "flickr"])


# ------------------------------------------------------------------------------------------- loss units
def test_loss_terms_count_examples_or_tokens():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7)
    labels = torch.tensor([[1, 2, -100, -100], [3, -100, -100, -100], [1, 1, 1, 1]])
    out = ModelOutput(logits, labels)
    batch = {"loss_weights": torch.tensor([1.0, 0.5, 0.0])}
    for name in ("vqa", "gqa", "nlvr"):
        term = get_task(name).loss_term(out, batch)
        assert isinstance(term, LossTerm) and term.weight.item() == 3.0  # per-example mean: 3 examples
    cap = get_task("caption").loss_term(out, batch)
    assert cap.weight.item() == 7.0  # token mean: 7 target tokens
    ce = nn.functional.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), ignore_index=-100, reduction="sum")
    assert cap.value.item() == pytest.approx(ce.item() / 7, rel=1e-6)
    # the global mean over two "ranks" = Σ value·weight / Σ weight = the one-process token mean
    half_a, half_b = ModelOutput(logits[:2], labels[:2]), ModelOutput(logits[2:], labels[2:])
    ta, tb = get_task("caption").loss_term(half_a, {}), get_task("caption").loss_term(half_b, {})
    merged = (ta.value * ta.weight + tb.value * tb.weight) / (ta.weight + tb.weight)
    assert merged.item() == pytest.approx(cap.value.item(), rel=1e-6)
    assert (ta.value + tb.value).item() / 2 != pytest.approx(cap.value.item(), rel=1e-3)  # a mean of means is not


# ------------------------------------------------------------------------------------------- PEFT owner seam
class _Owner(nn.Module):
    """A model-level parameter shared by every wrapper, with an auxiliary loss (stands in for PETAL's factors)."""

    built = 0

    def __init__(self, cfg, targets):
        super().__init__()
        type(self).built += 1
        self.n_targets = len(targets)
        self.scale = nn.Parameter(torch.ones(()))
        self._last = None

    def aux_losses(self):
        return {"owner_reg": 0.1 * (self.scale - 1.0) ** 2 + 0.0 * self._last} if self._last is not None else {}


@pytest.fixture
def owner_method():
    from vlrouting.peft.adapter import AdapterWrapper
    from vlrouting.peft.registry import PEFT_METHODS, layer_norm_params, register_peft_method

    class OwnedAdapter(AdapterWrapper):
        def forward(self, x, *args, **kwargs):
            y = super().forward(x, *args, **kwargs)
            self.owner._last = y.mean()
            return y * self.owner.scale

    register_peft_method("owned_adapter_test", also_trainable=layer_norm_params, owner=_Owner,
                         placement="adapter")(OwnedAdapter)
    _Owner.built = 0
    yield "owned_adapter_test"
    del PEFT_METHODS["owned_adapter_test"]


def test_peft_owner_is_built_once_trained_saved_and_its_aux_loss_reaches_the_output(owner_method, tiny_bart_dir,
                                                                                      tmp_path):
    from vlrouting.models.registry import load_tokenizer
    from vlrouting.peft import load_peft, save_peft

    cfg = load_config("multitask_adapter_single_none", [f"peft.method={owner_method}",
                                                        f"model.backbone={tiny_bart_dir}", "model.feat_dim=8"])
    tok = load_tokenizer(cfg.model)
    model = build_model(cfg.model, cfg.peft, pretrained=True, tokenizer=tok)
    assert _Owner.built == 1 and model.peft_owner.n_targets == 2 * 2 + 3 * 2  # 2+2 layers: 10 adapter positions
    assert model.peft_owner.scale.requires_grad
    wrappers = [m for m in model.modules() if hasattr(m, "owner") and m.owner is not None]
    assert len(wrappers) == 10 and all(w.owner is model.peft_owner for w in wrappers)
    assert sum(1 for n, _ in model.named_parameters() if n.startswith("peft_owner.")) == 1  # registered once
    b = 2
    batch = {"task": "vqa", "input_ids": torch.tensor([[0, 5, 6, 2]] * b), "attention_mask": torch.ones(b, 4, dtype=torch.long),
             "vis_feats": torch.randn(b, 3, 8), "img_order_ids": torch.zeros(b, 3, dtype=torch.long),
             "obj_order_ids": torch.arange(3).repeat(b, 1), "labels": torch.tensor([[0, 7, 2]] * b)}
    with torch.no_grad():
        model.peft_owner.scale.fill_(2.0)
    out = model(batch)
    assert set(out.aux_losses) == {"owner_reg"} and out.aux_losses["owner_reg"].item() == pytest.approx(0.1)
    save_peft(model, tmp_path, {})
    fresh = build_model(cfg.model, cfg.peft, pretrained=True, tokenizer=tok)
    load_peft(fresh, tmp_path)
    assert fresh.peft_owner.scale.item() == 2.0


def test_routing_that_reaches_no_module_is_an_error(make_tiny_bart):
    from vlrouting.peft import PeftConfig, attach_peft

    with pytest.raises(ConfigError, match="peft.route_sides"):
        attach_peft(make_tiny_bart(), PeftConfig(method="lora", routing="mul", route_sides=["decoder"],
                                                 targets=[[r"encoder\.layers\.\d+\.self_attn\.q_proj$", "encoder"]]))


BACKBONE_CONFIGS = {"clip_bart": "vladapter_single_adapter", "vit_roberta": "vit_roberta_vqa_adapter_r64_none",
                    "vit_gpt2": "vit_gpt2_coco_adapter_r64_none"}


def test_every_family_names_a_backbone_it_cannot_load_in_one_sentence(tmp_path):
    """All families load their language backbone through models.base.pretrained_backbone: one DataError sentence."""
    from vlrouting.errors import DataError
    from vlrouting.models.registry import FAMILY_MODULES

    assert set(BACKBONE_CONFIGS) == set(FAMILY_MODULES)
    missing = tmp_path / "no_backbone"
    for family, config in BACKBONE_CONFIGS.items():
        cfg = load_config(config, [f"model.backbone={missing}"])
        assert cfg.model.family == family
        with pytest.raises(DataError, match=f"cannot load the backbone '{missing}' \\(OSError\\); give a local "
                                            "folder saved with save_pretrained"):
            build_model(cfg.model, cfg.peft, pretrained=True)
        assert not missing.exists()
