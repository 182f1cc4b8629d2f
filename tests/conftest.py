"""Shared, generic fixtures: tiny BART backbones built locally (no downloads) and bart-base on the meta device.

Keep this file small and generic; test-specific helpers belong in the test module that uses them.
"""

from __future__ import annotations

import pytest
import torch

# The longest test files start first: `make test` runs the files on two pytest-xdist workers (one file per worker
# at a time, see the scheduler below), so the suite takes about as long as its longest file if that file is not
# left for the end.
FIRST = ("test_learning.py", "test_scripts.py", "test_bad_input.py", "test_train.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: the rest keep their order


try:
    from xdist.scheduler import LoadFileScheduling
except ImportError:  # plain pytest: no scheduling to adjust
    pass
else:
    class _NextFileWhenLastTestRuns(LoadFileScheduling):
        """``--dist loadfile`` that gives a worker its next file only when it starts the last test of the current
        one (a worker holds its last test until it knows the next, so one queued test is the least it can have).

        xdist's own rule queues a new file whenever a worker has two tests or fewer left, so the worker that
        starts the 2-test learning file at once also gets the next long file, which then waits ~9 minutes behind
        it while the other worker runs out of work.
        """

        def _reschedule(self, node) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) <= 1:
                self._assign_work_unit(node)

    def pytest_xdist_make_scheduler(config, log):
        if config.getvalue("dist") != "loadfile":
            return None
        # keep the order above: xdist would otherwise queue the files by their number of tests, which puts the
        # 2-test learning file last (the suite then took its ~9 minutes plus most of the rest)
        config.option.loadscopereorder = False
        return _NextFileWhenLastTestRuns(config, log)


#: Vocabulary size of the tiny test BART (ids 0..4 are BART's specials <s>, <pad>, </s>, <unk>, <mask>).
TINY_VOCAB = 64


@pytest.fixture
def single_thread():
    """Run the test with one intra-op thread, restoring the previous setting afterwards.

    Tiny models gain nothing from a second thread, and on a shared 2-core machine OpenMP threads competing
    with other processes made the tiny-BART tests ~10x slower. Use with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_tiny_bart():
    """Factory: a fresh tiny ``BartForConditionalGeneration`` with random weights fixed by ``seed``.

    ``dropout=0.0`` (the default here) zeroes every dropout of the backbone so train-mode runs are
    deterministic; pass ``dropout=None`` to keep bart-base's dropout rates. Extra keyword arguments override
    :func:`vlrouting.models.tiny.tiny_bart_config`.
    """
    from transformers import BartForConditionalGeneration

    from vlrouting.models.tiny import tiny_bart_config

    def build(seed: int = 0, dropout: float | None = 0.0, **overrides):
        if dropout is not None:
            overrides = {"dropout": dropout, "attention_dropout": dropout, "activation_dropout": dropout,
                         **overrides}
        torch.manual_seed(seed)
        return BartForConditionalGeneration(tiny_bart_config(TINY_VOCAB, **overrides))

    return build


@pytest.fixture(scope="session")
def tiny_bart_dir(tmp_path_factory):
    """A tiny BART saved with ``save_pretrained`` (seed 0, dropout 0), for tests of the ``from_pretrained`` path."""
    from vlrouting.models.tiny import save_tiny_bart

    out = tmp_path_factory.mktemp("tiny_bart")
    return save_tiny_bart(out, TINY_VOCAB, seed=0, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


@pytest.fixture
def make_bart_base_meta():
    """Factory: ``BartForConditionalGeneration`` with the packaged bart-base architecture on the meta device.

    Nothing is allocated, so parameter counts of the full-size model cost milliseconds. Build anything that is
    attached to it under ``with torch.device("meta"):`` as well.
    """
    from transformers import BartConfig, BartForConditionalGeneration

    from vlrouting.models.tiny import bart_base_config_dict

    def build():
        cfg = bart_base_config_dict()
        cfg.pop("model_type", None)
        with torch.device("meta"):
            return BartForConditionalGeneration(BartConfig(**cfg))

    return build


@pytest.fixture(scope="session")
def synthetic_bench(tmp_path_factory):
    """A small synthetic four-task benchmark with real tiny-CNN features and a tiny backbone, built once.

    Returns a dict with ``root`` (datasets root with ``<DS>/clip_features/*.h5``), ``tiny`` (tokenizer + tiny BART
    saved with save_pretrained) and ``card`` (the benchmark card with the blind baselines).
    """
    from feature_extraction.extract import extract_dataset
    from vlrouting.data.synthetic import generate
    from vlrouting.models.tiny import main as tiny_main

    base = tmp_path_factory.mktemp("synthetic_bench")
    root = base / "datasets"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        card = generate(root, seed=0, scale=0.25)
        extract_dataset(root, "synthetic", model="RN-tiny-w16", pretrained="none", recalibrate_bn=64,
                        workers=0, progress=False, verbose=False)
        tiny_main(["--out", str(base / "tiny"), "--corpus-root", str(root)])
    finally:
        torch.set_num_threads(before)
    return {"root": root, "tiny": base / "tiny", "card": card, "base": base}
