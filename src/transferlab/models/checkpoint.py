"""The one interface between pre-training and fine-tuning: a backbone checkpoint file.

A checkpoint is a plain dict of tensors and JSON-like values, so it loads with
``torch.load(..., weights_only=True)``: a file that tries to unpickle arbitrary objects is refused.
``arch`` holds the backbone's config (with ``_target_``), so finetune rebuilds the right
architecture whichever objective produced it.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from transferlab.errors import CheckpointError
from transferlab.io import save_torch
from transferlab.models.cnn import Classifier

FORMAT = "transferlab-backbone/1"
ALLOWED_TARGET_PREFIX = "transferlab.models."


def build_backbone(arch: Mapping[str, Any]) -> nn.Module:
    """Instantiate a backbone from its config; only classes under ``transferlab.models`` are allowed."""
    target = str(arch.get("_target_", ""))
    if not target.startswith(ALLOWED_TARGET_PREFIX):
        raise CheckpointError(
            f"model _target_ '{target}' is not allowed; use a class under {ALLOWED_TARGET_PREFIX}"
        )
    return instantiate(dict(arch), _convert_="all")


def save_backbone(
    path: str | Path, backbone: nn.Module, arch: Mapping[str, Any], meta: Mapping[str, Any]
) -> None:
    save_torch(
        path,
        {
            "format": FORMAT,
            "arch": dict(arch),
            "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
            "meta": dict(meta),
        },
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} is missing: run the stage that writes it (dvc repro)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects that are not plain tensors ({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}); re-run the stage that writes it"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not a transferlab backbone (format {FORMAT} expected)"
        )
    return ckpt


def load_backbone(
    path: str | Path, expected_arch: Mapping[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the backbone stored at ``path`` and load its weights; return it with its metadata."""
    ckpt = read_checkpoint(path)
    arch = ckpt["arch"]
    if expected_arch is not None and dict(expected_arch) != dict(arch):
        diff = sorted(
            k for k in set(arch) | set(expected_arch) if arch.get(k) != expected_arch.get(k)
        )
        raise CheckpointError(
            f"checkpoint {path} has another architecture (differs in {', '.join(diff)}); re-run pretrain for this model"
        )
    backbone = build_backbone(arch)
    try:
        backbone.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit its architecture: {str(exc).splitlines()[0]}"
        ) from None
    return backbone, dict(ckpt.get("meta", {}))


CLASSIFIER_FORMAT = "transferlab-classifier/1"


def save_classifier(
    path: str | Path,
    model: nn.Module | Mapping[str, torch.Tensor],
    arch: Mapping[str, Any],
    num_classes: int,
    meta: Mapping[str, Any],
) -> None:
    """Save a fine-tuned classifier (the module, or its state dict as a pool worker returns it)."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    save_torch(
        path,
        {
            "format": CLASSIFIER_FORMAT,
            "arch": dict(arch),
            "num_classes": int(num_classes),
            "state_dict": {k: v.detach().cpu() for k, v in state.items()},
            "meta": dict(meta),
        },
    )


def load_classifier(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a fine-tuned classifier (backbone + linear head) saved by the finetune stage."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} is missing: run the finetune stage (dvc repro)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is unreadable or unsafe ({type(exc).__name__}); re-run finetune"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CLASSIFIER_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not a transferlab classifier ({CLASSIFIER_FORMAT} expected)"
        )
    model = Classifier(build_backbone(ckpt["arch"]), ckpt["num_classes"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit its architecture: {str(exc).splitlines()[0]}"
        ) from None
    return model, dict(ckpt.get("meta", {}))
