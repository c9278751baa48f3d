"""The fine-tuning module: each remedy of the chapter enters the loss exactly as its formula says."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from transferlab.data.loaders import make_loader
from transferlab.errors import ConfigError
from transferlab.finetune.alignment import gaussian_kl, mmd_rbf
from transferlab.finetune.module import FinetuneModule
from transferlab.finetune.regularizers import l2_sp_penalty
from transferlab.finetune.tasks import rotation_task, shuffle_task
from transferlab.models.cnn import Classifier, ConvNet
from transferlab.objectives.losses import supervised_ce
from transferlab.shift import estimators


def _model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(ConvNet(widths=(4, 8, 8, 8), strides=(2, 2, 1, 1)), 3)


def _batch(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8), torch.arange(
        n
    ) % 3


def _fit(module: FinetuneModule, epochs: int = 2) -> None:
    x, y = _batch(24)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(
        module,
        make_loader(x, y, batch_size=8, shuffle=True),
        make_loader(x, y, batch_size=24, shuffle=False),
    )


def test_fixed_weights_give_exactly_the_weighted_sum() -> None:
    module = FinetuneModule(
        _model(),
        3,
        multitask={
            "tasks": ["rotation"],
            "weighting": "fixed",
            "weights": {"main": 0.7, "rotation": 0.2},
        },
        seed=5,
    )
    module.log = lambda *a, **k: None  # no trainer attached
    module.optimizers = lambda: torch.optim.SGD(module.parameters(), lr=0.1)
    x, y = _batch()
    total = module.training_step((x, y), 0)
    # Recompute by hand with the same auxiliary draw.
    g = torch.Generator().manual_seed(5)
    xr, k = rotation_task(x, g)
    with torch.no_grad():
        main = supervised_ce(module(x), y)
        aux = supervised_ce(
            module.aux_heads["rotation"](module.model.backbone(xr.float() / 255)), k
        )
    assert torch.allclose(total, 0.7 * main + 0.2 * aux, atol=1e-6)


def test_l2_sp_enters_the_objective_as_its_formula() -> None:
    module = FinetuneModule(_model(), 3, regularizer={"name": "l2_sp", "alpha": 0.3, "beta": 0.05})
    with torch.no_grad():
        for p in module.model.backbone.parameters():
            p.add_(0.1)  # move away from w0
    expected = l2_sp_penalty(
        dict(module.model.backbone.named_parameters()),
        module._reference,
        module.model.head.parameters(),
        0.3,
        0.05,
    )
    shift = sum(p.numel() for p in module.model.backbone.parameters()) * 0.1**2 * 0.3 / 2
    head = sum((p**2).sum() for p in module.model.head.parameters()) * 0.05 / 2
    assert torch.allclose(module._regulariser(), expected)
    assert torch.allclose(expected, torch.tensor(shift) + head, rtol=1e-4)


def test_uncertainty_and_gradnorm_weights_train() -> None:
    unc = FinetuneModule(
        _model(),
        3,
        lr=0.05,
        multitask={"tasks": ["rotation"], "weighting": "uncertainty"},
        total_steps=6,
    )
    _fit(unc)
    assert not torch.equal(unc.uncertainty.log_vars.detach(), torch.zeros(2))
    gn = FinetuneModule(
        _model(),
        3,
        lr=0.05,
        multitask={"tasks": ["rotation"], "weighting": "gradnorm"},
        total_steps=6,
    )
    _fit(gn)
    w = gn.gradnorm.weights.detach()
    assert torch.all(w > 0) and torch.isclose(w.sum(), torch.tensor(2.0))
    assert not torch.allclose(w, torch.ones(2)), "GradNorm never moved the weights"


def test_alignment_pulls_target_features_toward_the_source() -> None:
    src = torch.randint(0, 120, (64, 1, 28, 28), dtype=torch.uint8)
    module = FinetuneModule(
        _model(),
        3,
        lr=0.01,
        alignment={"kind": "mmd", "weight": 1.0, "batch_size": 16},
        source_x=src,
        total_steps=6,
    )
    _fit(module)  # runs end to end with the extra term
    with pytest.raises(ConfigError, match="needs source images"):
        FinetuneModule(_model(), 3, alignment={"kind": "mmd", "weight": 1.0})


def test_torch_alignment_losses_match_the_reporting_estimators() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = rng.normal(loc=0.5, scale=1.5, size=(400, 3))
    kl_t = gaussian_kl(torch.tensor(x), torch.tensor(y), eps=1e-6).item()
    assert kl_t == pytest.approx(estimators.gaussian_kl(x, y, eps=1e-6), rel=1e-3)
    assert gaussian_kl(torch.tensor(x), torch.tensor(x)).item() == pytest.approx(0.0, abs=1e-9)
    assert mmd_rbf(torch.tensor(x), torch.tensor(x)).item() == pytest.approx(0.0, abs=1e-12)
    assert mmd_rbf(torch.tensor(x), torch.tensor(y)).item() > 0.05


def test_auxiliary_task_labels_are_what_they_say() -> None:
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28)
    xr, k = rotation_task(x, torch.Generator().manual_seed(3))
    for i in range(2):
        assert torch.equal(xr[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))
    ids = torch.tensor([[5, 6, 7, 8, 0, 0]] * 8)
    out, lab = shuffle_task(ids, torch.Generator().manual_seed(0))
    assert torch.equal(out[lab == 0], ids[lab == 0])
    for row in out[lab == 1]:
        assert sorted(row[:4].tolist()) == [5, 6, 7, 8] and row[4:].tolist() == [0, 0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"multitask": {"tasks": ["jigsaw"]}}, "unknown task 'jigsaw'; allowed: rotation, shuffle"),
        (
            {"multitask": {"tasks": ["rotation"], "weighting": "fixed", "weights": {"main": -1.0}}},
            "must be >= 0 and not all zero",
        ),
        (
            {
                "multitask": {
                    "tasks": ["rotation"],
                    "weighting": "fixed",
                    "weights": {"main": 0.0, "rotation": 0.0},
                }
            },
            "not all zero",
        ),
        (
            {"multitask": {"tasks": ["rotation"], "weighting": "softmax"}},
            "weighting='softmax' is not allowed",
        ),
        ({"regularizer": {"name": "l1"}}, "regularizer.name='l1' is not allowed"),
    ],
)
def test_bad_fine_tuning_options_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        FinetuneModule(_model(), 3, **kwargs)
    assert message in str(err.value)
