"""Raw image sources, read offline from files that the set-up installs (design.md §3).

Every loader returns ``uint8`` images of shape ``(N, 28, 28)`` (0 = black) and ``int64`` labels, so
the route builder treats all domains alike. A missing source raises :class:`DataSourceError` with
one line naming the package that provides it.
"""

from __future__ import annotations

import gzip
import itertools
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transferlab.errors import DataSourceError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip
TEXTURES = ("brick", "grass", "gravel")


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format: magic, dims, then raw big-endian data)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataSourceError(
            f"Fashion-MNIST file {path} is missing: install the Debian package "
            "'dataset-fashion-mnist' (make setup does it)"
        ) from None
    except (OSError, EOFError) as exc:
        raise DataSourceError(
            f"Fashion-MNIST file {path} is corrupt ({exc}): reinstall the Debian package "
            "'dataset-fashion-mnist'"
        ) from None
    if len(raw) < 8:
        raise DataSourceError(
            f"Fashion-MNIST file {path} is truncated: reinstall 'dataset-fashion-mnist'"
        )
    (magic,) = struct.unpack(">I", raw[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise DataSourceError(f"{path} is not an IDX uint8 file: reinstall 'dataset-fashion-mnist'")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataSourceError(
            f"Fashion-MNIST file {path} is truncated: reinstall 'dataset-fashion-mnist'"
        )
    return body.reshape(dims)


def load_fashion_mnist(
    split: str, root: str | os.PathLike[str] = FASHION_MNIST_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` ("train": 60k, "test": 10k) as ``(images uint8 (N,28,28), labels)``."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = Path(root)
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if len(images) != len(labels):
        raise DataSourceError(
            f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels"
        )
    return images, labels


def _to_uint8(x: np.ndarray, vmax: float) -> np.ndarray:
    return np.clip(np.rint(x / vmax * 255.0), 0, 255).astype(np.uint8)


def _resize_pad(images: np.ndarray, inner: int) -> np.ndarray:
    """Resize float images ``(N, h, w)`` to ``inner×inner`` (bilinear) and zero-pad to 28×28."""

    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    t = F.interpolate(t, size=(inner, inner), mode="bilinear", align_corners=False)
    pad = (28 - inner) // 2
    t = F.pad(t, (pad, 28 - inner - pad, pad, 28 - inner - pad))
    return t.squeeze(1).numpy()


def load_digits_28() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn digits (1,797 8×8 images, 0..16) resized to 20×20 and padded to 28×28 like MNIST."""
    try:
        # lazy: sklearn.datasets costs ~2 s of import; only the digits target reads it, and
        # every stage imports this module through routes.image
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataSourceError("digits need the PyPI package 'scikit-learn'") from None
    d = load_digits()
    imgs = _resize_pad(d.images / 16.0, inner=20)
    return _to_uint8(imgs, 1.0), d.target.astype(np.int64), [str(i) for i in range(10)]


def load_lfw_28() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-image ``lfw_subset``: 100 faces then 100 non-faces (25×25 floats), padded to 28×28."""
    try:  # lazy: a missing scikit-image fails with one line naming the package
        from skimage import data
    except ImportError:
        raise DataSourceError("LFW subset needs the PyPI package 'scikit-image'") from None
    x = data.lfw_subset()
    if x.shape[0] != 200:
        raise DataSourceError(
            f"skimage lfw_subset has {x.shape[0]} images, expected 200: reinstall 'scikit-image'"
        )
    imgs = np.pad(x, ((0, 0), (1, 2), (1, 2)))  # 25 → 28 without resampling
    labels = np.r_[np.zeros(100), np.ones(100)].astype(np.int64)
    return _to_uint8(imgs, 1.0), labels, ["face", "non-face"]


def load_texture_regions(
    patch: int = 28, bounds: tuple[float, float] = (0.5, 0.75)
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Non-overlapping patches of the three scikit-image textures, split by image REGION.

    Rows ``[0, bounds[0])`` of each 512×512 texture feed the train pool, ``[bounds[0], bounds[1])``
    validation and the rest test. Splitting by region (not by shuffling overlapping patches) keeps
    test pixels out of training entirely. Returns ``{"train"|"val"|"test": (images, labels)}``.
    """
    try:  # lazy: a missing scikit-image fails with one line naming the package
        from skimage import data
    except ImportError:
        raise DataSourceError("textures need the PyPI package 'scikit-image'") from None
    out: dict[str, list[tuple[np.ndarray, int]]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(TEXTURES):
        img = getattr(data, name)()
        if img.ndim == 3:
            img = img[..., :3].mean(axis=2)
        h = img.shape[0]
        cuts = [0, int(h * bounds[0]), int(h * bounds[1]), h]
        for split, (r0, r1) in zip(("train", "val", "test"), itertools.pairwise(cuts), strict=True):
            for r in range(r0, r1 - patch + 1, patch):
                for c in range(0, img.shape[1] - patch + 1, patch):
                    out[split].append((img[r : r + patch, c : c + patch], label))
    return {
        split: (
            np.stack([p for p, _ in items]).astype(np.uint8),
            np.array([lab for _, lab in items], dtype=np.int64),
        )
        for split, items in out.items()
    }
