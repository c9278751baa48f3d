"""Stage ``summary``: ``reports/summary.md`` from every route's reports (see :mod:`transferlab.report`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from transferlab.report import write_summary
from transferlab.stages.context import Runtime


def run(cfg: DictConfig, rt: Runtime) -> dict[str, Any]:
    reports = Path(cfg.paths.reports_dir)
    routes = [str(r) for r in cfg.routes if (reports / str(r) / "evaluate.json").exists()]
    # The page spans routes: its data identity is the hash of the routes' manifest hashes.
    hashes = []
    for r in routes:
        manifest = Path(cfg.paths.data_dir) / r / "manifest.json"
        if manifest.exists():
            hashes.append(f"{r}:{json.loads(manifest.read_text()).get('hash', '')}")
    tags = {
        "run_name": "summary",
        "data.manifest_hash": hashlib.sha256("|".join(hashes).encode()).hexdigest(),
    }
    with rt.track("summary", tags) as tr:
        text = write_summary(reports, routes)
        tr.log_artifact(reports / "summary.md", "reports")
        tr.log_artifact(reports / "findings.json", "reports")  # the Findings, sentence by sentence
    return {"routes": routes, "chars": len(text)}
