"""What a stage gets from the runtime: a tracker for its run and an executor for its fits.

Stages sit below the runtime (cli, warm start, fit pool, tracking): they never import it. The
runtime hands each stage's ``run(cfg, rt)`` an object with this interface
(:class:`transferlab.runtime.StageRuntime`); tests may hand a stand-in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from transferlab.routes import Route
from transferlab.study import FitResult

#: ``execute(fits, tracked=False, state=True, test_acc=False, logger=False, callbacks=())``:
#: one FitResult per fit, in order (:func:`transferlab.pool.fit_executor`).
Executor = Callable[..., Iterator[FitResult]]


class Tracker(Protocol):
    """One tracked stage run (MLflow): metrics, artifacts and a child run per fit."""

    enabled: bool

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_text(self, text: str, name: str) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_dataset(self, manifest: Path) -> None: ...

    def log_fit(
        self, run_name: str, tags: Mapping[str, str] | None, log: Any, error: Any = None
    ) -> None: ...

    def lightning_logger(self, run_name: str, tags: Mapping[str, str] | None = None) -> Any: ...


class Runtime(Protocol):
    def track(
        self, stage: str, tags: Mapping[str, str], manifest: Path | None = None
    ) -> AbstractContextManager[Tracker]: ...

    def executor(
        self, route: Route, datasets: Mapping[str, Any], n_fits: int
    ) -> AbstractContextManager[Executor]: ...
