"""`trainer=ddp`: data-parallel pre-training on 2 CPU processes (gloo), tracked and written once;
`trainer=gpu`'s compile / pinned-memory plumbing (no GPU here: checked on CPU)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
import torch

from tests.conftest import BIN, ROOT, make_project, run
from transferlab.config import compose

N_TRAIN, N_VAL, BATCH, WORLD = 512, 64, 128, 2


def test_ddp_config_builds_a_two_process_gloo_trainer() -> None:
    from lightning.pytorch.strategies import DDPStrategy

    from transferlab.training import make_trainer

    cfg = compose(["trainer=ddp"], config_dir=ROOT / "conf")
    trainer = make_trainer(cfg.trainer, max_epochs=1, distributed=True)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy.process_group_backend == "gloo"
    assert (trainer.num_devices, trainer.num_nodes, trainer.world_size) == (WORLD, 1, WORLD)
    # Few-shot fine-tuning fits ask for no distribution: one process whatever the config says.
    single = make_trainer(cfg.trainer, max_epochs=1)
    assert not isinstance(single.strategy, DDPStrategy)
    assert (single.num_devices, single.world_size) == (1, 1)


def test_gpu_config_compiles_in_place_and_keeps_checkpoint_keys() -> None:
    from torch import nn

    from transferlab.callbacks import DeviceTuning
    from transferlab.training import make_trainer

    cfg = compose(
        ["trainer=gpu", "trainer.accelerator=cpu", "trainer.precision=32-true"],
        config_dir=ROOT / "conf",
    )
    assert compose(["trainer=gpu"], config_dir=ROOT / "conf").trainer.precision == "bf16-mixed"
    trainer = make_trainer(cfg.trainer, max_epochs=1)
    tuning = [cb for cb in trainer.callbacks if isinstance(cb, DeviceTuning)]
    assert len(tuning) == 1 and tuning[0].compile and tuning[0].pin_memory

    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
            self.head = nn.Linear(8, 2)

    module = Tiny()
    keys = list(module.state_dict())
    loader = torch.utils.data.DataLoader(list(range(4)))
    trainer.fit_loop._data_source.instance = loader
    tuning[0].setup(trainer, module, "fit")
    # nn.Module.compile wraps the call in place: same module objects, same state-dict keys.
    assert all(child._compiled_call_impl is not None for child in module.children())
    assert list(module.state_dict()) == keys
    assert loader.pin_memory is False  # pinning is for CUDA only


@pytest.mark.parametrize(
    ("env", "zero"),
    [
        ({}, True),
        ({"LOCAL_RANK": "0"}, True),
        ({"LOCAL_RANK": "1"}, False),
        ({"NODE_RANK": "1"}, False),
        ({"RANK": "3"}, False),
    ],
)
def test_only_rank_zero_tracks(monkeypatch: pytest.MonkeyPatch, env: dict, zero: bool) -> None:
    from transferlab.tracking import StageRun, is_rank_zero

    for var in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert is_rank_zero() is zero
    assert StageRun({"logger": {"enabled": True}}, "pretrain").enabled is zero


def _synthetic_source(path: Path) -> None:
    """A source dataset in the data stage's format (the DDP mechanics, not the data, are tested)."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> dict[str, torch.Tensor]:
        x = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
        return {"x": x, "y": torch.randint(0, 10, (n,), generator=g)}

    path.parent.mkdir(parents=True)
    classes = [str(i) for i in range(10)]
    torch.save(
        {"classes": classes, "train": split(N_TRAIN), "val": split(N_VAL), "test": split(N_VAL)},
        path,
    )


@pytest.mark.slow
def test_ddp_pretrain_on_two_cpu_processes(tmp_path: Path) -> None:
    overrides = [
        "+debug=tiny",
        "trainer=ddp",
        "pretrain.image.max_epochs=1",
        f"pretrain.image.batch_size={BATCH}",
    ]
    project = make_project(tmp_path / "ddp", overrides)
    _synthetic_source(project / "data/image/source.pt")
    proc = run(
        [str(BIN / "transferlab"), "pretrain", "route=image", "objective=mae"], project, timeout=400
    )
    log = proc.stdout + proc.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log, log[-2000:]

    out = project / "models/image/pretrain/mae"
    from transferlab.models.checkpoint import load_backbone

    backbone, meta = load_backbone(out / "backbone.pt")
    assert meta["epochs"] == 1
    assert all(torch.isfinite(p).all() for p in backbone.parameters())
    # Each rank sees its shard: ceil(N / world) samples, so half the optimiser steps of one process.
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"][-1]["step"] == math.ceil(N_TRAIN / WORLD) // BATCH == 2
    assert math.isfinite(metrics["train/loss"])

    # Rank 1 re-ran the stage command but tracked nothing: one stage run and its one fit.
    con = sqlite3.connect(project / "mlflow.db")
    rows = con.execute(
        "SELECT r.run_uuid, t.key, t.value FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid"
    ).fetchall()
    tags: dict[str, dict[str, str]] = {}
    for run_id, k, v in rows:
        tags.setdefault(run_id, {})[k] = v
    stage_runs = [t for t in tags.values() if "mlflow.parentRunId" not in t]
    fits = [t for t in tags.values() if "mlflow.parentRunId" in t]
    assert len(stage_runs) == 1 and stage_runs[0]["transferlab.stage"] == "pretrain"
    assert len(fits) == 1
