"""Stage ``summary``: ``reports/summary.md`` from every route's reports (see :mod:`transferlab.report`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from transferlab.config import ROUTES
from transferlab.tracking import StageRun


def run(cfg: DictConfig) -> dict[str, Any]:
    from transferlab.report import write_summary

    reports = Path(cfg.paths.get("reports_dir", "reports"))
    routes = [r for r in ROUTES if (reports / r / "evaluate.json").exists()]
    # The page spans routes: its data identity is the hash of the routes' manifest hashes.
    hashes = []
    for r in routes:
        manifest = Path(cfg.paths.get("data_dir", "data")) / r / "manifest.json"
        if manifest.exists():
            hashes.append(f"{r}:{json.loads(manifest.read_text()).get('hash', '')}")
    tags = {
        "run_name": "summary",
        "data.manifest_hash": hashlib.sha256("|".join(hashes).encode()).hexdigest(),
    }
    with StageRun(cfg, "summary", tags=tags) as tr:
        text = write_summary(reports, routes)
        tr.log_artifact(reports / "summary.md", "reports")
    return {"routes": routes, "chars": len(text)}
