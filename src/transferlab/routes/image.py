"""The image route: Fashion-MNIST as the source, 28×28 grey-scale targets, one ConvNet backbone.

Input-space shift: pixel-intensity histograms (``shift.image.bins`` equal bins on [0, 1], add-α
smoothing) compared by KL and JS divergence, bootstrapped over whole images (per-image bin counts
make each replicate a sum). The auxiliary multi-task head predicts a rotation (0/90/180/270°).
Continued pre-training reads a target's training images without their labels (validated on its
validation images), so only label-free objectives can be adapted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from transferlab.data.image import all_targets, build_image_data
from transferlab.data.loaders import to_float
from transferlab.models.checkpoint import build_backbone, load_backbone
from transferlab.routes.base import Route, subsample
from transferlab.shift import estimators as est
from transferlab.shift import measures
from transferlab.study import Init

#: The architecture key of ``model.image`` (one backbone shared by every image objective).
ARCH = "cnn"


@dataclass
class PixelSide:
    """One side of the pixel-space shift analysis."""

    pixels: np.ndarray  #: (n, 784) intensities in [0, 1]
    hist: np.ndarray  #: per-image bin counts (n, bins), for the bootstrap
    feature_x: torch.Tensor
    n: int


class ImageRoute(Route):
    name = "image"
    aux_task = "rotation"
    reseed_head = False
    shift_measures = tuple(measures.DESCRIPTIONS)
    ci_measures = ("kl_input", "js_input", "kl_feature")
    kl_label = "D_KL(P_source || P_target), pixel histogram [nats]"

    def build_data(self, out: Path, progress: bool) -> dict[str, Any]:
        data_cfg = OmegaConf.to_container(self.cfg.data.image, resolve=True)
        return build_image_data(data_cfg, out, int(self.cfg.seed), progress=progress)

    def targets(self) -> list[str]:
        """``data.image.targets``, then the graded shift family (``data.image.corruptions``)."""
        return all_targets(OmegaConf.to_container(self.cfg.data.image, resolve=True))

    # ------------------------------------------------------------------------------ backbones
    def arch_key(self, objective: str) -> str:
        return ARCH

    def arch(self, init: Init) -> dict[str, Any]:
        if init.kind == "raw":
            return self.raw_arch()
        return OmegaConf.to_container(self.cfg.model.image, resolve=True)

    def raw_arch(self) -> dict[str, Any]:
        channels = int(self.cfg.model.image.get("in_channels", 1))
        return {"_target_": "transferlab.models.raw.RawPixels", "in_channels": channels, "size": 28}

    def backbone(self, init: Init, adapted: str | None = None) -> nn.Module:
        if adapted is not None:
            return load_backbone(adapted)[0]
        arch = self.arch(init)
        backbone = build_backbone(arch)
        if init.kind == "pretrained":
            path = self.pretrained_path(str(init.objective))
            pretrained, _ = load_backbone(path, expected_arch=arch)
            backbone.load_state_dict(pretrained.state_dict())
        return backbone

    # --------------------------------------------------------------------------------- inputs
    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
        model.eval()
        return torch.cat([model(to_float(x[i : i + 1024])) for i in range(0, len(x), 1024)])

    def unlabelled_inputs(self, data: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return data["train"]["x"], data["val"]["x"]

    def source_inputs(self, backbone: nn.Module) -> torch.Tensor:
        return self.source_data()["train"]["x"]

    # ---------------------------------------------------------------------------------- shift
    def shift_side(self, data: Mapping[str, Any], n_max: int, seed: int) -> PixelSide:
        images = torch.cat([data[s]["x"] for s in ("train", "val", "test") if s in data])
        x = subsample(images, n_max, seed)
        pixels = x.numpy().reshape(len(x), -1) / 255.0
        bins = int(self.cfg.shift.image.bins)
        return PixelSide(pixels, est.row_histograms(pixels, bins), x, len(x))

    def input_measures(self, src: PixelSide, tgt: PixelSide) -> dict[str, float]:
        s = self.cfg.shift.image
        return measures.input_measures(src.pixels, tgt.pixels, int(s.bins), float(s.alpha))

    def input_ci(
        self, src: PixelSide, tgt: PixelSide, n_boot: int, seed: int
    ) -> dict[str, list[float]]:
        alpha = float(self.cfg.shift.image.alpha)

        def smoothed(h: np.ndarray) -> np.ndarray:
            return est.smooth_counts(h.sum(axis=0), alpha)

        return measures.bootstrap(
            {
                "kl_input": lambda a, b: est.kl_divergence(smoothed(a), smoothed(b)),
                "js_input": lambda a, b: est.js_divergence(smoothed(a), smoothed(b)),
            },
            src.hist,
            tgt.hist,
            n_boot=n_boot,
            seed=seed,
            max_n=None,
        )

    def estimators(self, primary: str) -> dict[str, str]:
        s = self.cfg.shift.image
        d = measures.DESCRIPTIONS
        return {
            **d,
            "kl_input": d["kl_input"] + f" [{int(s.bins)} bins, alpha={float(s.alpha)}]",
            "kl_feature": d["kl_feature"]
            + f" ['{primary}' backbone, ridge {float(s.feature_eps)}]",
        }

    @torch.no_grad()
    def features(self, backbone: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        backbone.eval()
        out = [backbone(to_float(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        return torch.cat(out).double().numpy()
