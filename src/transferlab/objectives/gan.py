"""Adversarial pre-training (DCGAN): the discriminator's trunk is the transferable backbone.

The discriminator D = backbone + linear logit (:mod:`transferlab.models.gan`) learns to tell real
source images from a generator's samples; the generator G learns to fool it. With ℓ = logit D(·),
the losses are exactly the chapter's, computed from logits so they stay finite
(:func:`~transferlab.objectives.losses.gan_discriminator_loss`,
:func:`~transferlab.objectives.losses.gan_generator_loss`):

    L_disc = −[log D(x) + log(1 − D(G(z)))] = softplus(−ℓ_real) + softplus(ℓ_fake)
    L_gen  = −log D(G(z))                  = softplus(−ℓ_fake)       (non-saturating form)

Two optimisers (Adam, β₁ = 0.5 as in DCGAN) alternate one step each per batch, with Lightning's
manual optimisation, on two time-scales: ``lr`` for D, ``lr_g`` for G. The defaults make G's the
faster (5×): in a run of a few dozen steps the generator is the bottleneck, and a discriminator
that outpaces it learns that generator's artefacts, its pooled features (what transfers)
collapsing onto one "realness" direction instead of describing the images.

The logged ``loss`` is L_disc, the loss of the part that transfers; ``g_loss`` is logged next to
it, and ``d_real``/``d_fake`` are the mean D(x) and D(G(z)). At the end of every epoch a grid of
samples from fixed noise goes to MLflow (``samples/epoch_XX.png``) so the run can be inspected by
eye.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import MLFlowLogger
from torch import nn

from transferlab.data.loaders import to_float
from transferlab.models.gan import Discriminator, Generator
from transferlab.objectives.base import PretrainModule
from transferlab.objectives.losses import gan_discriminator_loss, gan_generator_loss


@contextmanager
def _no_param_grads(module: nn.Module) -> Iterator[None]:
    """The generator step backpropagates *through* D but must not leave gradients on D's weights."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2) -> np.ndarray:
    """Tile images (N, 1, H, W) in [0, 1] into one uint8 (rows·(H+pad)+pad, nrow·(W+pad)+pad) array."""
    n, _, h, w = images.shape
    rows = -(-n // nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.uint8)
    pix = (images[:, 0].detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = pix[i]
    return grid


class GAN(PretrainModule):
    #: ``MultiObjective`` gives parts with a generator an optimiser and a step of their own.
    adversarial = True
    norm_recalibration_batches = 10  # BatchNorm statistics of the final weights, real images

    def __init__(
        self,
        backbone: nn.Module,
        latent_dim: int = 64,
        gen_width: int = 32,
        lr: float = 2e-4,
        lr_g: float | None = None,
        betas: Sequence[float] = (0.5, 0.999),
        weight_decay: float = 0.0,
        image_size: int = 28,
        in_channels: int = 1,
        n_samples: int = 64,
        max_batches: int | None = None,
    ) -> None:
        super().__init__(backbone, lr=lr, weight_decay=weight_decay)
        self.max_batches = max_batches
        self.automatic_optimization = False
        self.generator = Generator(latent_dim, gen_width, in_channels, image_size)
        self.discriminator = Discriminator(backbone)
        self.lr_g = float(lr_g if lr_g is not None else lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.n_samples = int(n_samples)
        self._gen = torch.Generator()
        self._val_gen = torch.Generator()
        self._fake: torch.Tensor | None = None  # the training step's fakes, reused by the G step

    # ---------------------------------------------------------------- pieces MultiObjective reuses

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._gen.manual_seed(self.rng_seed(0))

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_gen.manual_seed(self.rng_seed(1))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        gen = generator if generator is not None else self._gen
        z = torch.randn(n, self.generator.latent_dim, generator=gen)
        return self.generator(z.to(next(self.generator.parameters()).device))

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        """Discriminator losses on a real batch and as many (detached) fakes; in eval also L_gen."""
        x = to_float(batch[0])
        fake = self.sample(len(x), None if self.training else self._val_gen)
        real_logits = self.discriminator(x)
        fake_logits = self.discriminator(fake.detach(), update_stats=False)
        out = {
            "loss": gan_discriminator_loss(real_logits, fake_logits),
            "d_real": torch.sigmoid(real_logits).mean().detach(),
            "d_fake": torch.sigmoid(fake_logits).mean().detach(),
        }
        if self.training:
            self._fake = fake
        else:
            out["g_loss"] = gan_generator_loss(fake_logits)
        return out

    def generator_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.generator.parameters(), lr=self.lr_g, betas=self.betas)

    def generator_update(
        self, optimizer: Any, n: int, backward: Callable[[torch.Tensor], None]
    ) -> torch.Tensor:
        """One generator step on the fakes of the last training ``step`` (else ``n`` fresh ones),
        against the just-updated discriminator; returns L_gen (detached)."""
        fake, self._fake = self._fake if self._fake is not None else self.sample(n), None
        with _no_param_grads(self.discriminator):
            g_loss = gan_generator_loss(self.discriminator(fake, update_stats=False))
            optimizer.zero_grad()
            backward(g_loss)
            optimizer.step()
        return g_loss.detach()

    def log_samples(self, logger: Any, epoch: int, name: str = "samples") -> None:
        """Sample grid from fixed noise → MLflow artifact ``<name>/epoch_XX.png``."""
        if not isinstance(logger, MLFlowLogger):
            return
        fixed = torch.Generator().manual_seed(self.rng_seed(2))
        was_training = self.generator.training
        self.generator.eval()
        with torch.no_grad():
            images = self.sample(self.n_samples, fixed)
        self.generator.train(was_training)
        logger.experiment.log_image(
            logger.run_id, image_grid(images), artifact_file=f"{name}/epoch_{epoch:02d}.png"
        )

    # ---------------------------------------------------------------- Lightning hooks

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt_d, opt_g = self.optimizers()
        losses = self.step(batch)
        opt_d.zero_grad()
        self.manual_backward(losses["loss"])
        opt_d.step()
        losses["g_loss"] = self.generator_update(opt_g, len(batch[0]), self.manual_backward)
        self._log_losses(losses, "train", on_step=True, bs=len(batch[0]))
        return losses["loss"].detach()

    def on_train_epoch_end(self) -> None:
        self.log_samples(self.logger, self.current_epoch)

    def configure_optimizers(self) -> Any:
        opt_d = torch.optim.Adam(
            self.discriminator.parameters(),
            lr=self.lr,
            betas=self.betas,
            weight_decay=self.weight_decay,
        )
        return [opt_d, self.generator_optimizer()]
