"""Graded image corruptions: the shift axis of the image route (after MNIST-C, Mu & Gilmer 2019, and
ImageNet-C, Hendrycks & Dietterich 2019).

Each corruption is a pure function ``(images, severity, rng) -> images`` on ``uint8`` arrays of
shape ``(N, ..., H, W)`` in [0, 255]; severity runs 1 (mild) … 5 (severe), and the labels never
change, so a family of corrupted copies of one target varies the shift and nothing else. The
parameters per severity are ImageNet-C's, rescaled to 28×28 where they are spatial:

- ``gaussian_noise``: ``x + N(0, σ²)`` on [0, 1], clipped; σ = 0.08, 0.12, 0.18, 0.26, 0.38;
- ``contrast``: ``(x − m) c + m`` with ``m`` the image mean; c = 0.4, 0.3, 0.2, 0.1, 0.05;
- ``gaussian_blur``: a Gaussian filter of σ = 0.5, 0.75, 1.0, 1.5, 2.0 pixels (ImageNet-C's
  1 … 6 on 224 px, scaled by 28/224 and floored at half a pixel).

Hand-written: torchvision's corruptions are transforms of single images with their own random state,
and the ``imagecorruptions`` package pins old scikit-image and works on RGB 224 px images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import gaussian_filter

NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
BLUR_SIGMA = (0.5, 0.75, 1.0, 1.5, 2.0)
SEVERITIES = (1, 2, 3, 4, 5)


def _unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / 255.0


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian pixel noise of standard deviation ``NOISE_SIGMA[severity − 1]``."""
    sigma = NOISE_SIGMA[severity - 1]
    return _uint8(_unit(x) + rng.normal(0.0, sigma, size=x.shape))


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Contrast reduction towards each image's mean by the factor ``CONTRAST[severity − 1]``."""
    u = _unit(x)
    mean = u.mean(axis=(-2, -1), keepdims=True)
    return _uint8((u - mean) * CONTRAST[severity - 1] + mean)


def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of ``BLUR_SIGMA[severity − 1]`` pixels over the last two axes."""
    sigma = [0.0] * (x.ndim - 2) + [BLUR_SIGMA[severity - 1]] * 2
    return _uint8(gaussian_filter(_unit(x), sigma=sigma, mode="constant"))


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": gaussian_noise,
    "contrast": contrast,
    "gaussian_blur": gaussian_blur,
}


def family_name(base: str, kind: str, severity: int) -> str:
    """The target name of ``base`` corrupted by ``kind`` at ``severity`` (``fmnist_contrast3``)."""
    return f"{base}_{kind}{int(severity)}"


def corrupt(x: np.ndarray, kind: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """``x`` corrupted by ``kind`` at ``severity`` (1–5)."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption '{kind}'; allowed: {', '.join(CORRUPTIONS)}")
    if int(severity) not in SEVERITIES:
        raise ValueError(f"corruption severity {severity} is not one of {SEVERITIES}")
    return CORRUPTIONS[kind](x, int(severity), rng)
