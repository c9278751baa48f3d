"""Stage ``summary``: ``reports/summary.md`` from every route's reports (see :mod:`transferlab.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from transferlab.config import ROUTES
from transferlab.tracking import StageRun


def run(cfg: DictConfig) -> dict[str, Any]:
    from transferlab.report import write_summary

    reports = Path(cfg.paths.get("reports_dir", "reports"))
    routes = [r for r in ROUTES if (reports / r / "evaluate.json").exists()]
    with StageRun(cfg, "summary", tags={"run_name": "summary"}) as tr:
        text = write_summary(reports, routes)
        tr.log_artifact(reports / "summary.md", "reports")
    return {"routes": routes, "chars": len(text)}
