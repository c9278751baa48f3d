"""Inside a trial's job: find the live Optuna trial (for pruning) and the trial's MLflow run.

The sweeper gives each job one environment variable through ``hydra.job.env_set`` (so this works
with every launcher: in-process, joblib, submitit), ``<study>:<trial number>[:<MLflow run id>]``;
the storage and the pruner come from the job's own ``hydra.sweeper`` config. Outside a sweep
:func:`trial_context` returns ``None`` and the task runs as a plain Hydra app::

    from hydra_plugins.transferlab_optuna_sweeper import trial_context

    ctx = trial_context()
    if ctx is not None:
        trial = ctx.trial()          # an optuna.Trial: trial.report(v, step); trial.should_prune()
        run_id = ctx.mlflow_run_id   # log the job's own curves into the trial's child run
"""

from __future__ import annotations

import os
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

ENV = "TRANSFERLAB_OPTUNA_TRIAL"


def live_key(storage: str | None, study_name: str) -> str:
    return f"{storage or ''}|{study_name}"


def encode(study_name: str, number: int, mlflow_run_id: str | None) -> str:
    return f"{study_name}:{number}" + (f":{mlflow_run_id}" if mlflow_run_id else "")


def _sweeper_settings() -> dict[str, Any]:
    if not HydraConfig.initialized():
        return {}
    node = HydraConfig.get().sweeper
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}  # type: ignore[return-value]


class TrialContext:
    """The trial a job belongs to: ``study_name``, ``number``, ``mlflow_run_id``, :meth:`trial`."""

    def __init__(
        self, study_name: str, number: int, mlflow_run_id: str | None = None, **settings: Any
    ) -> None:
        self.study_name = study_name
        self.number = number
        self.mlflow_run_id = mlflow_run_id
        self.settings = settings or _sweeper_settings()
        self._trial: Any = None

    @classmethod
    def decode(cls, text: str) -> TrialContext:
        study, number, *rest = text.split(":", 2)
        return cls(study, int(number), rest[0] if rest else None)

    @property
    def storage(self) -> str | None:
        return self.settings.get("storage") or None

    @property
    def mlflow_tracking_uri(self) -> str | None:
        return (self.settings.get("mlflow") or {}).get("tracking_uri")

    @property
    def multi_objective(self) -> bool:
        direction = self.settings.get("direction", "minimize")
        return not isinstance(direction, str) and len(direction) > 1

    def trial(self) -> Any:
        """The live ``optuna.Trial``: report intermediate values, ask whether to prune.

        The study is re-opened with the sweep's pruner (so ``should_prune`` decides exactly as in
        the sweeper) and a random sampler (nothing is sampled here: the parameters arrived as
        overrides).
        """
        if self._trial is None:
            # lazy: optuna costs ~0.12 s of import; plugin discovery imports this via __init__
            import optuna

            # lazy: ._study imports optuna at its top (same ~0.12 s, same discovery path)
            from hydra_plugins.transferlab_optuna_sweeper._study import (
                LIVE_STORAGES,
                make_pruner,
                make_storage,
            )

            storage = LIVE_STORAGES.get(live_key(self.storage, self.study_name))
            if storage is None:
                if not self.storage:
                    raise RuntimeError(
                        "the sweep's in-memory study is not reachable from this job's process: "
                        "set hydra.sweeper.storage (e.g. sqlite:///optuna.db)"
                    )
                storage = make_storage(self.storage)
            pruner = self.settings.get("pruner") or {}
            if self.multi_objective:
                pruner = {}
            study = optuna.Study(
                self.study_name,
                storage=storage,
                sampler=optuna.samplers.RandomSampler(),
                pruner=make_pruner(pruner.get("name", "nop"), pruner.get("kwargs") or {}),
            )
            study_id = study._storage.get_study_id_from_name(self.study_name)
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
            self._trial = optuna.trial.Trial(study, trial_id)
        return self._trial


_CACHE: dict[str, TrialContext] = {}


def trial_context() -> TrialContext | None:
    """This job's trial, or ``None`` when the task does not run under the Optuna sweeper."""
    text = os.environ.get(ENV)
    if not text:
        return None
    if text not in _CACHE:
        _CACHE.clear()
        _CACHE[text] = TrialContext.decode(text)
    return _CACHE[text]
