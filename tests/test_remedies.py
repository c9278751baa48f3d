"""Every fine-tuning remedy on both routes (the tiny config): the declared variants, WiSE-FT and
confusion matrices on text come with the default study; alignment and gradual unfreezing on text,
and continued pre-training on images, run on copies of the tiny project."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import BIN, run

REMEDIES = ("linear_probe", "lp_ft")


def _copy(tiny: Path, dest: Path) -> Path:
    for name in ("params.yaml", "data", "models"):
        src = tiny / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def test_the_text_study_has_every_declared_remedy_and_wise_ft(tiny_pipeline: Path) -> None:
    report = json.loads((tiny_pipeline / "reports/text/evaluate.json").read_text())
    for target in ("fortunes", "kjv"):
        entry = report["targets"][target]
        for r in REMEDIES:
            assert f"mlm/{r}" in entry and f"mlm/{r}" in entry["gains"], (target, r)
        for a in ("0", "0.5", "1"):
            assert f"mlm/wise_{a}" in entry
        # alpha = 1 is LP-FT (fine-tuned from the probe's head), alpha = 0 the probe (per seed)
        wise1, wise0 = entry["mlm/wise_1"]["per_seed"], entry["mlm/wise_0"]["per_seed"]
        lpft = entry["mlm/lp_ft"]["per_seed"]["test/acc"]
        assert wise1["test/acc"] == pytest.approx(lpft, abs=1e-6)
        lp = entry["mlm/linear_probe"]["per_seed"]["test/acc"]
        assert wise0["test/acc"] == pytest.approx(lp, abs=1e-6)
        # the floors of the linear probe: random-init backbone and bag of tokens
        assert {"floor/random_init", "floor/raw_input"} <= set(entry)
    confusion = json.loads((tiny_pipeline / "reports/text/confusion.json").read_text())
    assert {"fortunes/mlm", "fortunes/scratch"} <= set(confusion)
    assert (tiny_pipeline / "reports/text/plots/confusion.png").stat().st_size > 0


@pytest.mark.slow
def test_text_multitask_uses_the_token_shuffle_head(tiny_pipeline: Path, tmp_path: Path) -> None:
    """``tasks: [aux]`` is the route's own auxiliary task: shuffle detection on text (2 classes).
    The multi-task variant is in ``+experiment=remedies``, not the default study."""
    root = _copy(tiny_pipeline, tmp_path)
    run([str(BIN / "transferlab"), "params", "+debug=tiny", "+experiment=remedies"], root)
    run([str(BIN / "transferlab"), "finetune", "route=text", "logger.enabled=false"], root)
    ckpt = torch.load(
        root / "models/text/finetune/mlm/multitask/fortunes/seed0.pt", weights_only=True
    )
    history = json.loads((root / "models/text/finetune/history.json").read_text())
    last = history["targets"]["fortunes"]["mlm/multitask"]["seeds"]["0"]["history"][-1]
    assert "val/acc_shuffle" in last and "val/acc_rotation" not in last
    assert ckpt["meta"]["variant"] == "mlm/multitask"


@pytest.mark.slow
def test_alignment_and_gradual_unfreezing_run_on_text(tiny_pipeline: Path, tmp_path: Path) -> None:
    root = _copy(tiny_pipeline, tmp_path)
    args = [
        "route=text",
        "logger.enabled=false",
        "finetune.alignment.kind=mmd",
        "finetune.alignment.weight=0.5",
        "finetune.strategy=gradual",
        "finetune.unfreeze_every=1",
    ]
    run([str(BIN / "transferlab"), "finetune", *args], root)
    history = json.loads((root / "models/text/finetune/history.json").read_text())
    fit = history["targets"]["fortunes"]["mlm"]["seeds"]["0"]["history"][-1]
    assert "train/align" in fit and fit["train/align"] >= 0.0


@pytest.mark.slow
def test_continued_pretraining_runs_on_images(tiny_pipeline: Path, tmp_path: Path) -> None:
    root = _copy(tiny_pipeline, tmp_path)
    args = ["route=image", "logger.enabled=false", "finetune.dapt_epochs=1"]
    run([str(BIN / "transferlab"), "finetune", *args], root)
    run([str(BIN / "transferlab"), "evaluate", *args], root)
    history = json.loads((root / "models/image/finetune/history.json").read_text())
    assert set(history["dapt"]["digits"]) == {"mae_dapt"}  # supervised reads labels: not adapted
    entry = json.loads((root / "reports/image/evaluate.json").read_text())["targets"]["digits"]
    assert entry["gains"]["mae_dapt"] == pytest.approx(
        entry["mae_dapt"]["test/acc"] - entry["scratch"]["test/acc"], abs=1e-5
    )
