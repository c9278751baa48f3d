"""A run killed with SIGKILL part-way resumes from its last checkpoint to the same final weights."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import BIN, make_project, project_env, run

# Enough work per epoch (32 steps) that a kill lands inside an epoch, not after the run.
OVERRIDES = [
    "+debug=tiny",
    "pretrain.image.max_epochs=5",
    "data.image.source_train=4096",
    "model.image.widths=[16,32,32,32]",
    "pretrain.image.objectives=[mae]",
    "finetune.variants={}",
]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _kill_after_first_checkpoint(cmd: list[str], cwd: Path, seed: int) -> None:
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=project_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not list(
            (cwd / ".lightning" / "resume").glob("*/last.ckpt")
        ):
            assert proc.poll() is None, "the run ended before it wrote a checkpoint"
            time.sleep(0.02)
        time.sleep(random.Random(seed).uniform(0.0, 0.3))  # a random step inside the next epoch
        assert proc.poll() is None, "the run finished before it could be killed"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    a = make_project(tmp_path_factory.mktemp("uninterrupted"), OVERRIDES)
    b = make_project(tmp_path_factory.mktemp("killed"), OVERRIDES)
    for p in (a, b):
        run([str(BIN / "transferlab"), "data", "route=image"], p)
    return a, b


def test_killed_pretraining_resumes_to_identical_weights(projects: tuple[Path, Path]) -> None:
    a, b = projects
    cmd = [str(BIN / "transferlab"), "pretrain", "route=image", "objective=mae"]
    run(cmd, a)
    _kill_after_first_checkpoint(cmd, b, seed=0)
    assert not (b / "models/image/pretrain/mae/backbone.pt").exists(), (
        "a killed run must not leave outputs"
    )
    proc = run(cmd, b)
    assert proc.returncode == 0
    wa, wb = (
        _weights(a / "models/image/pretrain/mae/backbone.pt"),
        _weights(b / "models/image/pretrain/mae/backbone.pt"),
    )
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ma = json.loads((a / "models/image/pretrain/mae/metrics.json").read_text())
    mb = json.loads((b / "models/image/pretrain/mae/metrics.json").read_text())
    assert ma["history"] == mb["history"], "the resumed run must report the whole, identical curve"
    assert not list((b / ".lightning" / "resume").glob("*")), (
        "resume state is removed after success"
    )


@pytest.mark.slow
def test_killed_finetuning_resumes_to_identical_classifiers(projects: tuple[Path, Path]) -> None:
    a, b = projects
    for p in (a, b):
        if not (p / "models/image/pretrain/mae/backbone.pt").exists():
            run([str(BIN / "transferlab"), "pretrain", "route=image", "objective=mae"], p)
    cmd = [str(BIN / "transferlab"), "finetune", "route=image"]
    run(cmd, a)
    _kill_after_first_checkpoint(cmd, b, seed=1)
    run(cmd, b)
    for f in sorted((a / "models/image/finetune").rglob("*.pt")):
        other = b / f.relative_to(a)
        wa, wb = _weights(f), _weights(other)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f
