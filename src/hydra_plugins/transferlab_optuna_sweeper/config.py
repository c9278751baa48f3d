"""The sweeper's config schema, registered with Hydra as ``hydra/sweeper=transferlab_optuna``.

Samplers and pruners are config groups of their own (``hydra/sweeper/sampler=random``,
``hydra/sweeper/pruner=median``), each a ``name`` plus constructor ``kwargs``.
"""

# No `from __future__ import annotations` here: Hydra's plugin scanner runs this module before it
# is in sys.modules, where dataclasses cannot resolve string annotations.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe | random | grid | cmaes | gp | qmc | nsgaii
    # Each trial's sampler is seeded with f(seed, trial number): reproducible, and a resumed sweep
    # or a second worker draws new points. null: not reproducible.
    seed: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class PrunerConf:
    name: str = "nop"  # nop | median | percentile | successive_halving | hyperband | threshold
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class MlflowConf:
    enabled: bool = False
    tracking_uri: str | None = None  # null: MLflow's default (MLFLOW_TRACKING_URI or ./mlruns)
    experiment: str = "optuna"


@dataclass
class TransferlabOptunaSweeperConf:
    _target_: str = "hydra_plugins.transferlab_optuna_sweeper.sweeper.TransferlabOptunaSweeper"
    defaults: list[Any] = field(
        default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": "nop"}]
    )
    sampler: Any = None
    pruner: Any = None
    # minimize | maximize, or a list of them for a multi-objective study (the task returns a list)
    direction: Any = "minimize"
    # null: in-memory (one process); an SQLAlchemy URL (sqlite:///optuna.db, postgresql://...);
    # any other string: an Optuna journal file
    storage: str | None = None
    study_name: str | None = None  # null: the hparams_search choice, else the job name
    # The sweep ends when this many trials of the study have finished with a result
    # (COMPLETE or PRUNED), counting earlier runs of the same command: re-running resumes.
    n_trials: int = 20
    # Trials asked per batch and launched together (in parallel with the joblib or submitit
    # launchers); null: the joblib launcher's n_jobs, else 1.
    n_jobs: int | None = None
    # Failed trials allowed: floor(max_failure_rate * n_trials); one more stops the sweep.
    max_failure_rate: float = 0.0
    # Exception class names that stop the sweep at once: errors no other parameters can fix.
    fatal_errors: list[str] = field(default_factory=list)
    # Names of what the task returns, for logs and MLflow (null: value, value_1, ...).
    metric: Any = None
    params: dict[str, Any] | None = None  # key: override grammar, e.g. tag(log, interval(1e-5, 1))
    mlflow: MlflowConf = field(default_factory=MlflowConf)
    # Write <export_dir>/best_<study>.yaml (a `# @package _global_` experiment) after each sweep;
    # export_dir null: the `experiment` folder of the primary config directory.
    export_best: bool = True
    export_dir: str | None = None
    # Overrides never copied into the exported experiment (key prefixes; hydra.* never is).
    export_exclude: list[str] = field(default_factory=list)


_cs = ConfigStore.instance()
_cs.store(
    group="hydra/sweeper",
    name="transferlab_optuna",
    node=TransferlabOptunaSweeperConf,
    provider="transferlab_optuna_sweeper",
)
for _name, _kwargs in {
    "tpe": {"constant_liar": True},  # running trials count as bad guesses: workers spread out
    "random": {},
    "grid": {},
    "cmaes": {},
    "gp": {},
    "qmc": {},
    "nsgaii": {},
}.items():
    _cs.store(
        group="hydra/sweeper/sampler",
        name=_name,
        node=SamplerConf(name=_name, kwargs=dict(_kwargs)),
        provider="transferlab_optuna_sweeper",
    )
for _name, _kwargs in {
    "nop": {},
    "median": {"n_startup_trials": 5, "n_warmup_steps": 0},
    "percentile": {"percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": 0},
    "successive_halving": {"min_resource": 1, "reduction_factor": 3},
    "hyperband": {"min_resource": 1, "max_resource": "auto", "reduction_factor": 3},
    "threshold": {},
}.items():
    _cs.store(
        group="hydra/sweeper/pruner",
        name=_name,
        node=PrunerConf(name=_name, kwargs=dict(_kwargs)),
        provider="transferlab_optuna_sweeper",
    )
