"""Freezing controls under a real Lightning Trainer: fixed depth, LP-FT, gradual unfreezing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from transferlab.finetune.freezing import FreezeSchedule, freeze_blocks, unfreeze_blocks
from transferlab.finetune.schedules import build_optimizer, build_scheduler
from transferlab.models.cnn import Classifier, ConvNet

DEPTH_ERROR = "finetune.freeze_depth={k} is beyond the model's depth 4; allowed 0..4"


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class _Lit(pl.LightningModule):
    """Minimal fine-tuning module: optimiser over trainable params, optional per-step LambdaLR."""

    def __init__(self, model: Classifier, with_scheduler: bool = False, retrain: bool = False):
        super().__init__()
        self.model = model
        self.with_scheduler = with_scheduler
        self.retrain = retrain

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def on_train_epoch_start(self) -> None:
        if self.retrain:  # what an eager user hook might do; must not unfreeze BN statistics
            self.train()

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        opt = build_optimizer(params, "sgd", lr=0.1, weight_decay=0.0)
        if not self.with_scheduler:
            return opt
        sched = build_scheduler(opt, "inverse_time", total_steps=100, decay=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _Probe(pl.Callback):
    """Records the freezing state at the first batch of every epoch and weights at epoch end."""

    def __init__(self, freezer: FreezeSchedule) -> None:
        self.freezer = freezer
        self.records: list[dict[str, Any]] = []
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx:
            return
        blocks = pl_module.model.backbone.blocks
        opt = trainer.optimizers[0]
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        self.records.append(
            {
                "epoch": trainer.current_epoch,
                "phase": self.freezer.phase,
                "trainable": [all(p.requires_grad for p in b.parameters()) for b in blocks],
                "in_opt": [all(id(p) in in_opt for p in b.parameters()) for b in blocks],
                "bn_train": [b.norm.training for b in blocks],
                "lrs": [g["lr"] for g in opt.param_groups],
            }
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.snapshots.append(
            {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        )


def _model() -> Classifier:
    torch.manual_seed(0)
    return Classifier(ConvNet(widths=(8, 8, 8, 8)), 3)


def _loader() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 1, 28, 28, generator=gen)
    y = torch.randint(0, 3, (24,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def _fit(
    lit: _Lit, freezer: FreezeSchedule, max_epochs: int, batches: int | None = None, **kw: Any
) -> _Probe:
    probe = _Probe(freezer)
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=batches,
        callbacks=[freezer, probe],
        **kw,
    )
    trainer.fit(lit, train_dataloaders=_loader())
    return probe


def _block_keys(state: dict[str, torch.Tensor], i: int, suffixes: tuple[str, ...]) -> list[str]:
    return [k for k in state if k.startswith(f"backbone.blocks.{i}.") and k.endswith(suffixes)]


PARAMS = ("conv.weight", "norm.weight", "norm.bias")
STATS = ("running_mean", "running_var")


@pytest.mark.parametrize("freeze_norm_stats", [True, False])
def test_fixed_depth_freezes_weights_and_optionally_bn_stats(freeze_norm_stats: bool) -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freezer = FreezeSchedule("fixed", freeze_depth=2, freeze_norm_stats=freeze_norm_stats)
    probe = _fit(_Lit(model, retrain=True), freezer, max_epochs=2)
    after = model.state_dict()

    for i in (0, 1):  # frozen: bit-identical weights
        for k in _block_keys(before, i, PARAMS):
            assert torch.equal(before[k], after[k]), k
        for k in _block_keys(before, i, STATS):  # statistics frozen only on request
            assert torch.equal(before[k], after[k]) is freeze_norm_stats, k
    for i in (2, 3):  # trainable: weights and statistics moved
        for k in _block_keys(before, i, PARAMS + STATS):
            assert not torch.equal(before[k], after[k]), k
    assert not torch.equal(before["head.weight"], after["head.weight"])
    # the module's own .train() each epoch did not switch frozen BatchNorm back on
    for rec in probe.records:
        assert rec["bn_train"] == [not freeze_norm_stats] * 2 + [True, True]
        assert rec["trainable"] == [False, False, True, True]
        assert rec["phase"] == "finetune"


def test_lp_ft_switches_phase_and_extends_optimizer() -> None:
    model = _model()
    freezer = FreezeSchedule("lp_ft", freeze_depth=1, lp_epochs=2, lr_factor=0.1)
    lit = _Lit(model, with_scheduler=True)
    probe = _fit(lit, freezer, max_epochs=3)
    r = probe.records
    for epoch in (0, 1):
        assert r[epoch]["phase"] == "linear_probe"
        assert r[epoch]["trainable"] == [False] * 4 and r[epoch]["in_opt"] == [False] * 4
        assert r[epoch]["bn_train"] == [False] * 4
        assert len(r[epoch]["lrs"]) == 1
    assert r[2]["phase"] == "finetune" and freezer.switch_epoch == 2
    assert r[2]["trainable"] == [False, True, True, True]
    assert r[2]["in_opt"] == [False, True, True, True]
    assert r[2]["bn_train"] == [False, True, True, True]
    assert r[2]["lrs"][1] == pytest.approx(0.1 * r[2]["lrs"][0])
    assert freezer.history == [(0, 4), (2, 1)]

    s0, s1, s2 = probe.snapshots

    def keys(i: int) -> list[str]:
        return _block_keys(s0, i, PARAMS)

    for i in (1, 2, 3):
        assert all(torch.equal(s0[k], s1[k]) for k in keys(i))  # frozen in the probe
        assert not any(torch.equal(s1[k], s2[k]) for k in keys(i))  # trained after the switch
    assert all(torch.equal(s0[k], s2[k]) for k in keys(0))
    assert not torch.equal(s0["head.weight"], s1["head.weight"])
    # the scheduler was extended: the new group follows the same inverse-time factor
    groups = lit.trainer.optimizers[0].param_groups
    assert groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"])
    assert groups[0]["lr"] == pytest.approx(0.1 / (1 + 0.1 * 9))  # 9 optimiser steps


def test_gradual_unfreezing_one_block_every_n_epochs() -> None:
    freezer = FreezeSchedule("gradual", freeze_depth=1, unfreeze_every=2)
    probe = _fit(_Lit(_model()), freezer, max_epochs=9, batches=1)
    depths = [4, 4, 3, 3, 2, 2, 1, 1, 1]  # max(k, n − ⌊e/2⌋) with n=4, k=1
    for rec, depth in zip(probe.records, depths, strict=True):
        expected = [i >= depth for i in range(4)]
        assert rec["trainable"] == expected, rec["epoch"]
        assert rec["in_opt"] == expected, rec["epoch"]
        assert rec["bn_train"] == expected, rec["epoch"]
        assert len(rec["lrs"]) == 1 + (4 - depth)  # one group per unfrozen block
    assert [r["phase"] for r in probe.records] == ["linear_probe"] * 2 + ["gradual"] * 4 + [
        "finetune"
    ] * 3
    assert freezer.history == [(0, 4), (2, 3), (4, 2), (6, 1)]
    assert freezer.switch_epoch == 6


def test_lp_ft_state_survives_checkpoint_resume(tmp_path: Path) -> None:
    freezer = FreezeSchedule("lp_ft", freeze_depth=2, lp_epochs=1, lr_factor=0.5)
    lit = _Lit(_model(), with_scheduler=True)
    _fit(lit, freezer, max_epochs=2, batches=1)
    ckpt = tmp_path / "last.ckpt"
    lit.trainer.save_checkpoint(ckpt)

    resumed = FreezeSchedule("lp_ft", freeze_depth=2, lp_epochs=1, lr_factor=0.5)
    lit2 = _Lit(_model(), with_scheduler=True)
    probe = _Probe(resumed)
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=1,
        callbacks=[resumed, probe],
    )
    trainer.fit(lit2, train_dataloaders=_loader(), ckpt_path=ckpt)
    (rec,) = probe.records
    assert rec["epoch"] == 2 and rec["phase"] == "finetune" and resumed.switch_epoch == 1
    assert rec["trainable"] == [False, False, True, True] == rec["in_opt"]
    assert len(rec["lrs"]) == 2


@pytest.mark.parametrize("k", [5, -1])
def test_freeze_depth_beyond_model_raises_one_line(k: int) -> None:
    with pytest.raises(ValueError) as info:
        freeze_blocks(ConvNet(widths=(4, 4, 4, 4)), k)
    assert str(info.value) == DEPTH_ERROR.format(k=k)


def test_freeze_depth_error_surfaces_from_trainer() -> None:
    freezer = FreezeSchedule("fixed", freeze_depth=7)
    with pytest.raises(ValueError, match=r"^finetune\.freeze_depth=7 is beyond .* allowed 0\.\.4$"):
        _fit(_Lit(_model()), freezer, max_epochs=1, batches=1)


def test_freeze_and_unfreeze_blocks_directly() -> None:
    backbone = _model().backbone
    freeze_blocks(backbone, 3, freeze_norm_stats=True)
    assert [b.norm.training for b in backbone.blocks] == [False, False, False, True]
    newly = unfreeze_blocks(backbone, 1)
    assert len(newly) == 2 * 3  # conv.weight, norm.weight, norm.bias of blocks 1 and 2
    assert [all(p.requires_grad for p in b.parameters()) for b in backbone.blocks] == [
        False,
        True,
        True,
        True,
    ]
    assert [b.norm.training for b in backbone.blocks] == [False, True, True, True]
