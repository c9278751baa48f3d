"""Masked reconstruction: its knobs do what their docstrings say (``norm_pix_loss``: per-patch
normalised target; ``decoder_depth``), a mask that hides nothing is refused, and the same seed
gives the same backbone."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from tests.test_objectives import WIDTHS, build, fit, fmnist_head, needs_fmnist, tiny_image_cfg
from transferlab.models.cnn import ConvNet
from transferlab.objectives.losses import masked_mse, patch_mask, patch_normalize
from transferlab.objectives.mae import MaskedReconstruction, pixel_decoder


@pytest.fixture(scope="module")
def cfg() -> Any:
    return tiny_image_cfg()


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    return fmnist_head()


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen)


# ------------------------------------------------------------------ MAE


def test_patch_normalize_by_hand() -> None:
    # One 2×4 image, p = 2: patch [[1, 2], [3, 4]] and the constant patch [[5, 5], [5, 5]].
    x = torch.tensor([[1.0, 2.0, 5.0, 5.0], [3.0, 4.0, 5.0, 5.0]]).view(1, 1, 2, 4)
    out = patch_normalize(x, 2, eps=1e-6)
    mean, var = 2.5, (1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 3  # unbiased: / (p² − 1)
    sd = math.sqrt(var + 1e-6)
    expected = torch.tensor(
        [[(1 - mean) / sd, (2 - mean) / sd, 0.0, 0.0], [(3 - mean) / sd, (4 - mean) / sd, 0.0, 0.0]]
    ).view(1, 1, 2, 4)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="divide"):
        patch_normalize(torch.zeros(1, 1, 5, 5), 2)


def test_pixel_decoder_depth_and_shape() -> None:
    for depth in (0, 2):
        dec = pixel_decoder(16, 1, stride=4, depth=depth, width=8)
        convs3 = [
            m for m in dec.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
        ]
        assert len(convs3) == depth
        assert dec(torch.rand(2, 16, 7, 7)).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_loss_is_masked_mse_of_its_target(cfg: Any, norm_pix: bool) -> None:
    torch.manual_seed(0)
    module = build(cfg, "mae", norm_pix_loss=norm_pix, decoder_depth=1, decoder_width=8)
    x = images()
    module.eval()
    module.on_validation_epoch_start()
    out = module.step((x, torch.zeros(6, dtype=torch.long)))
    module.on_validation_epoch_start()  # the same validation mask again
    p = module.patch_size
    m = patch_mask(6, module.grid, module.mask_ratio, generator=module._val_gen)
    m = m.view(6, 1, module.grid, module.grid).float()
    m = m.repeat_interleave(p, 2).repeat_interleave(p, 3)
    xf = x.float() / 255
    with torch.no_grad():
        recon = module.decoder(module.backbone.forward_map(xf * (1 - m)))
    target = patch_normalize(xf, p) if norm_pix else xf
    torch.testing.assert_close(out["loss"], masked_mse(recon, target, m))


def test_a_mask_that_hides_nothing_is_refused() -> None:
    backbone = ConvNet(widths=WIDTHS)
    with pytest.raises(ValueError, match=r"mask_ratio=0.1 hides none of the 2×2 .* > 0.125"):
        MaskedReconstruction(backbone, mask_ratio=0.1, patch_size=14)
    with pytest.raises(ValueError, match="norm_pix_loss needs patch_size >= 2"):
        MaskedReconstruction(backbone, patch_size=1, norm_pix_loss=True)
    MaskedReconstruction(backbone, mask_ratio=0.2, patch_size=14)  # 1 of 4 patches


@needs_fmnist
def test_mae_same_seed_same_weights(cfg: Any, source: dict[str, torch.Tensor]) -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        module = build(cfg, "mae")
        fit(module, source, epochs=1, seed=7)
        states.append(module.backbone.state_dict())
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
