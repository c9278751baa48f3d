"""Where a route's data, models and reports live (``paths.*`` in the config)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def route_dirs(cfg: Mapping[str, Any], route: str) -> dict[str, Path]:
    """``data``, ``manifest``, ``pretrain``, ``finetune`` and ``reports`` of ``route``."""
    paths = cfg["paths"]
    data = Path(paths["data_dir"]) / route
    models = Path(paths["models_dir"]) / route
    reports = Path(paths["reports_dir"]) / route
    return {
        "data": data,
        "manifest": data / "manifest.json",
        "pretrain": models / "pretrain",
        "finetune": models / "finetune",
        "reports": reports,
    }
