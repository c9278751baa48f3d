"""The one interface between pre-training and fine-tuning: a backbone checkpoint file.

A checkpoint is a plain dict of tensors and JSON-like values, so it loads with
``torch.load(..., weights_only=True)``: a file that tries to unpickle arbitrary objects is refused.
``arch`` holds the backbone's config (with ``_target_``), so finetune rebuilds the right
architecture whichever objective produced it.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Mapping
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

#: State-dict keys that carry a frozen backbone's reference (see :func:`classifier_state`).
FROZEN = "_frozen_backbone."


def checksum(module: nn.Module) -> torch.Tensor:
    """Sum and sum of squares of every parameter (float64): tells a rebuilt backbone from another
    initialisation, cheaply."""
    total = torch.zeros(2, dtype=torch.float64)
    for p in module.parameters():
        d = p.detach().double()
        total += torch.stack([d.sum(), (d * d).sum()])
    return total


def classifier_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a fine-tuned classifier is saved as: its state dict; for a probe whose frozen backbone
    can be rebuilt from its config and a seed (``model.frozen_seed``: a hub model's own weights or
    a seeded random initialisation, no BatchNorm statistics of its own), the head and buffers only,
    with the seed and the backbone's :func:`checksum` (a 22.7M-parameter MiniLM probe then takes
    kilobytes instead of 91 MB per seed)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    seed = getattr(model, "frozen_seed", None)
    if seed is None:
        return state
    params = {f"backbone.{n}" for n, _ in model.backbone.named_parameters()}
    state = {k: v for k, v in state.items() if k not in params}
    state[FROZEN + "seed"] = torch.tensor(int(seed))
    state[FROZEN + "checksum"] = checksum(model.backbone)
    return state


def save_classifier(
    path: str | Path,
    model: nn.Module | Mapping[str, torch.Tensor],
    arch: Mapping[str, Any],
    num_classes: int,
    meta: Mapping[str, Any],
) -> None:
    """Save a fine-tuned classifier (the module, or its state dict as a pool worker returns it)."""
    state = classifier_state(model) if isinstance(model, nn.Module) else dict(model)
    frozen = {k.removeprefix(FROZEN): state.pop(k) for k in list(state) if k.startswith(FROZEN)}
    ckpt = {
        "format": CLASSIFIER_FORMAT,
        "arch": dict(arch),
        "num_classes": int(num_classes),
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "meta": dict(meta),
    }
    if frozen:
        ckpt["frozen_backbone"] = {
            "seed": int(frozen["seed"]),
            "checksum": [float(x) for x in frozen["checksum"]],
        }
    save_torch(path, ckpt)


def load_classifier(
    path: str | Path, rebuild: Callable[[int], nn.Module] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a fine-tuned classifier (backbone + linear head) saved by the finetune stage.

    A probe saved without its frozen backbone (:func:`classifier_state`) needs ``rebuild(seed)``:
    the backbone as the fit built it; its checksum must match the saved one. The model's
    ``frozen_checksum`` then names the backbone (callers may share its features)."""
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
    frozen = ckpt.get("frozen_backbone")
    if frozen is None:
        backbone = build_backbone(ckpt["arch"])
    else:
        if rebuild is None:
            raise CheckpointError(
                f"checkpoint {path} holds a probe without its frozen backbone: load it through "
                "the stage that knows the variant (evaluate)"
            )
        backbone = rebuild(int(frozen["seed"]))
        if checksum(backbone).tolist() != list(frozen["checksum"]):
            raise CheckpointError(
                f"checkpoint {path}: the rebuilt backbone differs from the one the probe was "
                "fitted on (another package version or initialisation); re-run finetune"
            )
    model = Classifier(backbone, ckpt["num_classes"])
    try:
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=frozen is None)
        params = {f"backbone.{n}" for n, _ in backbone.named_parameters()}
        if unexpected or set(missing) - params:
            raise RuntimeError(f"keys {sorted(set(missing) - params) or unexpected} do not match")
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit its architecture: {str(exc).splitlines()[0]}"
        ) from None
    if frozen is not None:
        model.frozen_checksum = tuple(frozen["checksum"])  # type: ignore[assignment]
    return model, dict(ckpt.get("meta", {}))
