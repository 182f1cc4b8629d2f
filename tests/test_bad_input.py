"""Bad input fails early and clearly and leaves nothing behind (issue 11), through the real entry points.

Each case builds one kind of bad input on the synthetic benchmark (a datasets root made of symlinks to the shared
one, with the files of the case replaced) and runs the command a user runs: ``python -m vlrouting.train`` (``--check``
where the pre-flight must catch it, a real run where only reading the data can), ``scripts/<row>.sh`` under torchrun
with 2 processes where the error arises inside one worker, ``python -m feature_extraction extract``,
``python -m vlrouting.models.export`` and ``python -m vlrouting eval``. Every case asserts exit status 2, exactly one
line ``error: <sentence>`` on stderr holding the case's key words, no traceback, and that the files under the test's
folder are exactly those that were there before (no run directory, no partial output, no temporary file).

Cases marked ``process=True`` run as subprocesses (every entry point at least once, and every case whose error
crosses a process boundary: DataLoader workers, torchrun workers, training runs); the others call the same
``main(argv)`` that ``python -m`` calls, in this process, so that the 20-odd pre-flight cases cost milliseconds
instead of an interpreter start (torch + transformers imports) each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


# ---------------------------------------------------------------------------------------------------- helpers


def overlay(src: Path, dst: Path, changes: dict[str, Callable[[Path, Path], None]]) -> Path:
    """``dst`` mirrors the datasets root ``src`` with symlinks, except each relative path of ``changes``, which is a
    real file written by ``change(source_file, target_file)``; its parent folders are real folders."""
    dst.mkdir(parents=True, exist_ok=True)
    groups: dict[str, dict[str, Callable]] = {}
    for rel, change in changes.items():
        head, *rest = Path(rel).parts
        groups.setdefault(head, {})["/".join(rest)] = change
    for child in sorted(src.iterdir()):
        if child.name not in groups:
            (dst / child.name).symlink_to(child)
    for head, sub in groups.items():
        if "" in sub:
            sub[""](src / head, dst / head)
        else:
            overlay(src / head, dst / head, sub)
    return dst


def edit_json(edit: Callable) -> Callable[[Path, Path], None]:
    def change(source: Path, target: Path) -> None:
        data = json.loads(source.read_text())
        target.write_text(json.dumps(edit(data)))
    return change


def set_field(index: int, field: str, value):
    def edit(records):
        records[index][field] = value
        return records
    return edit_json(edit)


def tree(folder: Path) -> list[str]:
    """Every path under ``folder`` (symlinks not followed), with a marker for files vs folders."""
    out = []
    for base, dirs, files in os.walk(folder):
        rel = Path(base).relative_to(folder)
        out += [f"{rel / d}/" for d in dirs] + [str(rel / f) for f in files]
    return sorted(out)


def env() -> dict:
    bindir = str(Path(PY).parent)
    return {**os.environ, "PYTHON": PY, "PATH": f"{bindir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def train(bench, root: Path, snap: Path, *extra: str, check: bool = True) -> list[str]:
    """argv of ``python -m vlrouting.train`` for the comb3 row on ``root``."""
    return ["--config", "multitask_adapter_comb3", *run_overrides(bench, root, snap), *extra,
            *(["--check"] if check else [])]


def run_overrides(bench, root: Path, snap: Path) -> list[str]:
    return [f"data.root={root}", f"model.backbone={bench['tiny']}", f"output.snap_dir={snap}", "model.feat_dim=512",
            "data.num_workers=0", "data.limit_train=24", "data.limit_eval=8", "train.epochs=1", "train.batch_size=8",
            "train.num_beams=2", "train.log_every=0"]


def first_vqa_train_image(bench) -> str:
    return json.loads((bench["root"] / "vqa" / "karpathy_train.json").read_text())[0]["img_id"]


def nan_features(img_id: str) -> Callable[[Path, Path], None]:
    """A copy of a feature file with one NaN in the features of ``img_id``."""
    def change(source: Path, target: Path) -> None:
        target.write_bytes(source.read_bytes())
        with h5py.File(target, "r+") as f:
            block = f[img_id][()]
            block[3, 7] = np.nan
            f[img_id][...] = block
    return change


def _main(entry: str):
    if entry == "train":
        from vlrouting.train.trainer import main
    elif entry == "extract":
        from feature_extraction.__main__ import main
    elif entry == "export":
        from vlrouting.models.export import main
    else:
        from vlrouting.__main__ import main
    return main


MODULES = {"train": "vlrouting.train", "extract": "feature_extraction", "export": "vlrouting.models.export",
           "eval": "vlrouting"}


def command(entry: str, argv: list[str]) -> list[str]:
    if entry == "script":
        return ["bash", *argv]
    return [PY, "-m", MODULES[entry], *argv]


# ---------------------------------------------------------------------------------------------------- cases
# Each case: (bench, tmp) -> dict(entry, argv, needles[, process]). tmp is empty; the case may prepare files in it.
# entry: train | extract (argv starts with "extract") | export | eval (argv starts with "eval") | script (bash).

CASES: dict[str, Callable] = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


@case
def empty_train_split(bench, tmp):
    root = overlay(bench["root"], tmp / "ds", {"vqa/karpathy_train.json": edit_json(lambda r: [])})
    return dict(entry="train", argv=train(bench, root, tmp / "snap"),
                needles=["vqa train", "karpathy_train.json", "no train examples"])


@case
def empty_val_split(bench, tmp):
    root = overlay(bench["root"], tmp / "ds", {"nlvr/valid.json": edit_json(lambda r: [])})
    return dict(entry="train", argv=train(bench, root, tmp / "snap"),
                needles=["nlvr val", "valid.json", "train.eval_every=0"])


@case
def empty_test_split(bench, tmp):
    def no_test(data):
        data["images"] = [im for im in data["images"] if im["split"] != "test"]
        return data
    root = overlay(bench["root"], tmp / "ds", {"COCO/dataset_coco.json": edit_json(no_test)})
    return dict(entry="train", argv=train(bench, root, tmp / "snap"),
                needles=["caption test", "dataset_coco.json", "train.test_after=false"])


@case
def vqa_label_is_a_string(bench, tmp):
    root = overlay(bench["root"], tmp / "ds", {"vqa/karpathy_train.json": set_field(3, "label", "yes")})
    return dict(entry="train", argv=train(bench, root, tmp / "snap"),
                needles=["Record 3", "karpathy_train.json", "label 'yes'", "VQA label"])


@case
def gqa_label_score_is_a_string(bench, tmp):
    root = overlay(bench["root"], tmp / "ds", {"GQA/testdev.json": set_field(0, "label", {"left": "1"})})
    return dict(entry="train", argv=train(bench, root, tmp / "snap"),
                needles=["Record 0", "testdev.json", "'left': '1'", "scores"])


@case
def nlvr_label_is_a_word(bench, tmp):
    root = overlay(bench["root"], tmp / "ds", {"nlvr/train.json": set_field(5, "label", "true")})
    return dict(entry="train", argv=train(bench, root, tmp / "snap"),
                needles=["Record 5", "nlvr/train.json", "label 'true'", "1 (true) or 0"])


@case
def caption_is_not_a_string(bench, tmp):
    def number(data):
        data["images"][2]["sentences"][0]["raw"] = 42
        return data
    root = overlay(bench["root"], tmp / "ds", {"COCO/dataset_coco.json": edit_json(number)})
    return dict(entry="train", argv=train(bench, root, tmp / "snap"),
                needles=["Image entry 2", "dataset_coco.json", "42"])


@case
def image_id_escapes_its_folder(bench, tmp):
    root = overlay(bench["root"], tmp / "ds", {"vqa/karpathy_val.json": set_field(1, "img_id", "../../etc/passwd")})
    return dict(entry="train", argv=train(bench, root, tmp / "snap"),
                needles=["Record 1", "karpathy_val.json", "'../../etc/passwd'", "plain image id"])


@case
def feature_files_of_different_dimension(bench, tmp):
    def narrow(source: Path, target: Path) -> None:
        with h5py.File(target, "w") as f:
            f.create_dataset("COCO_val2014_000000000001", data=np.zeros((36, 256), np.float16))
    root = overlay(bench["root"], tmp / "ds", {"COCO/clip_features/val2014.h5": narrow})
    return dict(entry="train", argv=train(bench, root, tmp / "snap"), process=True,
                needles=["differ in their number of channels", "train2014.h5: 512", "val2014.h5: 256"])


@case
def feat_dim_does_not_match_the_features(bench, tmp):
    return dict(entry="train", argv=train(bench, bench["root"], tmp / "snap", "model.feat_dim=256"),
                needles=["512 channels", "model.feat_dim=512"])


@case
def missing_datasets_root(bench, tmp):
    return dict(entry="train", argv=train(bench, tmp / "nowhere", tmp / "snap"),
                needles=[str(tmp / "nowhere"), "does not exist"])


@case
def image_id_without_features(bench, tmp):
    root = overlay(bench["root"], tmp / "ds", {"GQA/testdev.json": set_field(0, "img_id", "n999999999")})
    return dict(entry="train", argv=train(bench, root, tmp / "snap"),
                needles=["gqa val", "'n999999999'", "has no features", "extract_features.sh gqa"])


@case
def unknown_config_name(bench, tmp):
    return dict(entry="train", argv=["--config", "no_such_config"], needles=["'no_such_config'", "--list"])


BAD_VALUES = {
    "unknown_task": ("data.tasks=[vqa,foo]", ["Unknown task 'foo'", "vqa, gqa, nlvr, caption"]),
    "unknown_routing": ("peft.routing=bogus", ["bogus"]),
    "unknown_mix": ("peft.routing=comb9", ["comb9"]),
    "unknown_key": ("train.bogus=1", ["train.bogus", "valid keys"]),
    "unknown_x_r_source": ("model.x_r_source=text", ["x_r_source", "text"]),
}


def _bad_value(override: str, needles: list[str]):
    def build(bench, tmp):
        return dict(entry="train", argv=train(bench, bench["root"], tmp / "snap", override), needles=needles)
    return build


for _name, (_override, _needles) in BAD_VALUES.items():
    CASES[_name] = _bad_value(_override, _needles)


@case
def batch_size_zero(bench, tmp):
    return dict(entry="train", argv=train(bench, bench["root"], tmp / "snap", "train.batch_size=0"),
                needles=["train.batch_size", "positive"])


@case
def learning_rate_zero(bench, tmp):
    return dict(entry="train", argv=train(bench, bench["root"], tmp / "snap", "train.lr=0"),
                needles=["train.lr", "positive learning rate"])


@case
def learning_rate_negative(bench, tmp):
    return dict(entry="train", argv=train(bench, bench["root"], tmp / "snap", "train.lr=-1e-3"),
                needles=["train.lr", "-0.001"])


@case
def zero_epochs(bench, tmp):
    return dict(entry="train", argv=train(bench, bench["root"], tmp / "snap", "train.epochs=0"),
                needles=["train.epochs", "at least 1"])


@case
def tasks_given_as_one_string(bench, tmp):
    return dict(entry="train", argv=train(bench, bench["root"], tmp / "snap", "data.tasks=vqa"),
                needles=["data.tasks", "'vqa'", "data.tasks=[vqa]"])


@case
def experiment_name_escapes_snap_dir(bench, tmp):
    return dict(entry="train", argv=train(bench, bench["root"], tmp / "snap", "output.experiment=../elsewhere"),
                needles=["output.experiment", "'../elsewhere'", "plain folder name"])


@case
def run_name_with_a_folder(bench, tmp):
    return dict(entry="train", argv=train(bench, bench["root"], tmp / "snap", "output.run=a/b"),
                needles=["output.run", "'a/b'", "plain folder name"])


@case
def snap_dir_under_a_file(bench, tmp):
    (tmp / "a_file").write_text("not a folder")
    return dict(entry="train", argv=train(bench, bench["root"], tmp / "a_file" / "snap"),
                needles=["output.snap_dir", str(tmp / "a_file"), "not a folder"])


@case
def unknown_vqa_evaluator_version(bench, tmp):
    return dict(entry="train", argv=train(bench, bench["root"], tmp / "snap", "train.vqa_eval_version=2019"),
                needles=["train.vqa_eval_version", "2017 or 2021", "'2019'"])


@case
def nan_features_in_a_dataloader_worker(bench, tmp):
    img = first_vqa_train_image(bench)
    root = overlay(bench["root"], tmp / "ds", {"COCO/clip_features/train2014.h5": nan_features(img)})
    argv = train(bench, root, tmp / "snap", "data.num_workers=1", "train.eval_every=0", "train.test_after=false",
                 check=False)
    return dict(entry="train", argv=argv, process=True,
                needles=[f"image '{img}'", str(root / "COCO" / "clip_features" / "train2014.h5"), "NaN or Inf"])


@case
def nan_features_in_one_of_two_torchrun_workers(bench, tmp):
    img = first_vqa_train_image(bench)
    root = overlay(bench["root"], tmp / "ds", {"COCO/clip_features/train2014.h5": nan_features(img)})
    argv = ["scripts/multitask_adapter_comb3.sh", "2", *run_overrides(bench, root, tmp / "snap"),
            "data.num_workers=1", "train.eval_every=0", "train.test_after=false"]
    return dict(entry="script", argv=argv, process=True, needles=[f"image '{img}'", "train2014.h5", "NaN or Inf"])


@case
def diverging_loss_without_a_checkpoint(bench, tmp):
    argv = train(bench, bench["root"], tmp / "snap", "train.lr=1e30", "train.eval_every=0", "train.test_after=false",
                 check=False)
    return dict(entry="train", argv=argv, process=True,
                needles=["loss became NaN/Inf", "no checkpoint had been written yet", "train.lr"])


@case
def extraction_output_under_a_file(bench, tmp):
    (tmp / "a_file").write_text("not a folder")
    argv = ["extract", "--images", str(bench["root"] / "COCO" / "images" / "val2014"),
            "--output", str(tmp / "a_file" / "val.h5"), "--model", "RN-tiny", "--pretrained", "none", "--workers", "0"]
    return dict(entry="extract", argv=argv, process=True, needles=["--output", str(tmp / "a_file"), "not a folder"])


@case
def extraction_image_id_escapes_its_folder(bench, tmp):
    ann = tmp / "annotations.json"
    ann.write_text(json.dumps([{"img_id": "../train2014/COCO_train2014_000000121628", "question_id": 1}]))
    argv = ["extract", "--images", str(bench["root"] / "COCO" / "images" / "val2014"),
            "--output", str(tmp / "out" / "val.h5"), "--annotations", str(ann), "--model", "RN-tiny",
            "--pretrained", "none", "--workers", "0"]
    return dict(entry="extract", argv=argv,
                needles=[str(ann), "'../train2014/COCO_train2014_000000121628'", "outside its image folder"])


@case
def export_of_a_corrupt_weights_file(bench, tmp):
    from vlrouting.config import dump_config, load_config

    run = tmp / "run"
    run.mkdir()
    cfg = load_config("vladapter_full_finetuning", [f"model.backbone={bench['tiny']}", "model.feat_dim=512"])
    (run / "config.yaml").write_text(dump_config(cfg))
    (run / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated")
    return dict(entry="export", argv=["--run", str(run), "--out", str(tmp / "backbone")], process=True,
                needles=[str(run / "adapter_model.safetensors"), "not a readable safetensors file"])


def _trainer_style_vqa_predictions(bench, tmp, extra_id=None) -> Path:
    refs = json.loads((bench["root"] / "vqa" / "karpathy_test.json").read_text())
    rows = [{"id": r["question_id"], "prediction": "yes"} for r in refs]
    if extra_id is not None:
        rows.append({"id": extra_id, "prediction": "no"})
    path = tmp / "test_vqa_epoch1.json"
    path.write_text(json.dumps(rows))
    return path


@case
def eval_metrics_under_a_file(bench, tmp):
    preds = _trainer_style_vqa_predictions(bench, tmp)
    (tmp / "a_file").write_text("not a folder")
    argv = ["eval", "--task", "vqa", "--predictions", str(preds), "--references",
            str(bench["root"] / "vqa" / "karpathy_test.json"), "--out", str(tmp / "a_file" / "metrics.json")]
    return dict(entry="eval", argv=argv, process=True, needles=["cannot write", str(tmp / "a_file" / "metrics.json")])


@case
def eval_prediction_for_an_unknown_question(bench, tmp):
    preds = _trainer_style_vqa_predictions(bench, tmp, extra_id=987654321)
    argv = ["eval", "--task", "vqa", "--predictions", str(preds), "--references",
            str(bench["root"] / "vqa" / "karpathy_test.json"), "--vqa-version", "2021"]
    return dict(entry="eval", argv=argv, needles=["1 prediction(s)", "987654321", "not in the references"])


# ---------------------------------------------------------------------------------------------------- the test


def test_there_are_at_least_twenty_kinds_of_bad_input():
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_early_with_one_sentence_and_leaves_nothing(name, synthetic_bench, tmp_path, capfd):
    spec = CASES[name](synthetic_bench, tmp_path)
    before = tree(tmp_path)
    if spec.get("process"):
        proc = subprocess.run(command(spec["entry"], spec["argv"]), cwd=REPO, env=env(), capture_output=True,
                              text=True)
        code, stderr = proc.returncode, proc.stderr
    else:
        capfd.readouterr()
        code = _main(spec["entry"])(spec["argv"])  # an exception escaping here fails the test (= a traceback)
        stderr = capfd.readouterr().err
    assert code == 2, (code, stderr[-4000:])
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in spec["needles"]:
        assert needle in lines[0], (needle, lines[0])
    assert tree(tmp_path) == before, "the failed command left files behind"

