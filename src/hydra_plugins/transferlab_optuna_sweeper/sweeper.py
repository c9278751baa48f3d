"""The Hydra ``Sweeper`` plugin class; the work happens in :mod:`._core` (imported on first use)."""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class TransferlabOptunaSweeper(Sweeper):
    """Ask Optuna for a trial, launch it as a Hydra job, tell Optuna what it returned; repeat."""

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in settings.items()
        }
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        # lazy: ._core imports optuna (~0.14 s); plugin discovery imports this in every composition
        from hydra_plugins.transferlab_optuna_sweeper._core import SweepRun

        assert self.config is not None and self.hydra_context is not None
        return SweepRun(self, list(arguments)).run()
