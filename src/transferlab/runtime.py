"""The runtime a stage runs in: its MLflow run (:class:`~transferlab.tracking.StageRun`) and the
fit executor (:func:`~transferlab.pool.fit_executor`), handed to each stage's ``run(cfg, rt)``
(the interface is :class:`transferlab.stages.context.Runtime`)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from transferlab.pool import Executor, fit_executor
from transferlab.routes import Route
from transferlab.tracking import StageRun


class StageRuntime:
    """Tracking and fit execution for the stages of one config."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def track(self, stage: str, tags: Mapping[str, str], manifest: Path | None = None) -> StageRun:
        return StageRun(self.cfg, stage, tags=tags, manifest=manifest)

    def executor(
        self, route: Route, datasets: Mapping[str, Any], n_fits: int
    ) -> AbstractContextManager[Executor]:
        return fit_executor(route, datasets, self.cfg.trainer, n_fits)
