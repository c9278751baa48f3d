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

REMEDIES = ("linear_probe", "lp_ft", "l2sp", "multitask")


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
        # alpha = 1 is the fully fine-tuned model, alpha = 0 the linear probe
        assert entry["mlm/wise_1"]["test/acc"] == pytest.approx(entry["mlm"]["test/acc"], abs=1e-6)
        assert entry["mlm/wise_0"]["test/acc"] == pytest.approx(
            entry["mlm/linear_probe"]["test/acc"], abs=1e-6
        )
    confusion = json.loads((tiny_pipeline / "reports/text/confusion.json").read_text())
    assert {"fortunes/mlm", "fortunes/scratch"} <= set(confusion)
    assert (tiny_pipeline / "reports/text/plots/confusion.png").stat().st_size > 0


def test_text_multitask_uses_the_token_shuffle_head(tiny_pipeline: Path) -> None:
    """``tasks: [aux]`` is the route's own auxiliary task: shuffle detection on text (2 classes)."""
    ckpt = torch.load(
        tiny_pipeline / "models/text/finetune/mlm/multitask/fortunes.pt", weights_only=True
    )
    history = json.loads((tiny_pipeline / "models/text/finetune/history.json").read_text())
    last = history["targets"]["fortunes"]["mlm/multitask"]["history"][-1]
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
    fit = history["targets"]["fortunes"]["mlm"]["history"][-1]
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
