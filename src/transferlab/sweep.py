"""``python -m transferlab.sweep``: one fine-tuning trial as a Hydra app, swept by Optuna.

    python -m transferlab.sweep -m hparams_search=lr_freeze_wd          # an Optuna study
    python -m transferlab.sweep -m hparams_search=lr_freeze_wd +debug=tiny hydra.sweeper.n_trials=8
    python -m transferlab.sweep finetune.lr=0.003                       # one trial, no Optuna
    python -m transferlab.sweep -m 'finetune.lr=tag(log, interval(1e-4, 1e-1))'  # hparams_search=default

A trial composes ``conf/`` (with the trial's overrides), validates it, fine-tunes ``sweep.target``
from the primary objective's pre-trained backbone (``models/<route>/pretrain/<objective>/``, made
by ``dvc repro``) through :func:`transferlab.pool.fit_executor` and :func:`transferlab.stages.fit.run_fit` — what the
pipeline's finetune stage runs, so the exported best config reproduces the trial's number through
``dvc exp run`` — and returns ``sweep.metric`` of the validation split: the last epoch's value
(``sweep.reduce=last``, the model the pipeline keeps) or the best epoch's (``best``).

Under the Optuna sweeper (``hydra_plugins/transferlab_optuna_sweeper``) each epoch's metric is
reported to the trial; the study's pruner may stop the trial (``optuna.TrialPruned``, recorded as
PRUNED), and the fit's curves go to the trial's MLflow child run.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from transferlab.config import conf_dir, primary_objective, validate
from transferlab.errors import CheckpointError, ConfigError, TrainingError
from transferlab.io import write_json
from transferlab.pool import fit_executor
from transferlab.routes import Route, get_route
from transferlab.schema import REDUCE
from transferlab.stages.fit import epochs_for
from transferlab.stats import mean_ci
from transferlab.study import Init, Variant, by_name, fit_for, variants
from transferlab.tracking import make_buffered_logger
from transferlab.training import configure_torch

DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class TrialSpec:
    route: str
    target: str
    variant: str
    metrics: list[str]
    directions: list[str]
    reduce: str
    pretrain: bool


def _as_list(value: Any) -> list[str]:
    if isinstance(value, ListConfig | list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def trial_spec(cfg: DictConfig) -> TrialSpec:
    """Check the ``sweep`` node (one line naming the bad key, like ``transferlab.config``)."""
    node = cfg.get("sweep")
    if not isinstance(node, DictConfig):
        raise ConfigError(
            "config node 'sweep' is missing: conf/config.yaml needs `- sweep: default`"
        )
    route = str(cfg.route)
    targets = [str(t) for t in cfg.data[route].targets]
    target = str(node.get("target"))
    if target not in targets:
        raise ConfigError(
            f"sweep.target={target!r} is not a target of route {route}; allowed: {', '.join(targets)}"
        )
    pretrain = bool(node.pretrain)
    variant = str(node.get("variant") or primary_objective(cfg, route))
    allowed = [str(o) for o in (cfg.objectives if pretrain else cfg.pretrain[route].objectives)]
    if variant not in [*allowed, "scratch"]:
        raise ConfigError(
            f"sweep.variant={variant!r} is not allowed; choose one of: {', '.join([*allowed, 'scratch'])}"
        )
    if pretrain and variant == "scratch":
        raise ConfigError(
            "sweep.pretrain=true needs a pre-training objective as sweep.variant, not scratch"
        )
    metrics = _as_list(node.metric)
    directions = [d.lower() for d in _as_list(node.direction)]
    if len(directions) != len(metrics) or any(d not in DIRECTIONS for d in directions):
        raise ConfigError(
            f"sweep.direction={directions} must give maximize or minimize for each of sweep.metric={metrics}"
        )
    reduce = str(node.reduce)
    if reduce not in REDUCE:
        raise ConfigError(
            f"sweep.reduce={reduce!r} is not allowed; choose one of: {', '.join(REDUCE)}"
        )
    return TrialSpec(route, target, variant, metrics, directions, reduce, pretrain)


def reduce_history(
    history: list[dict[str, float]], metrics: list[str], directions: list[str], how: str
) -> list[float]:
    """One number per metric from the per-epoch history: the last epoch's or the best epoch's."""
    out: list[float] = []
    for metric, direction in zip(metrics, directions, strict=True):
        values = [float(row[metric]) for row in history if metric in row]
        if not values:
            logged = sorted({k for row in history for k in row if "/" in k})
            raise ConfigError(
                f"sweep.metric={metric!r} was never logged; logged: {', '.join(logged)}"
            )
        if how == "best":
            value = max(values) if direction == "maximize" else min(values)
        else:
            value = values[-1]
        if not math.isfinite(value):
            raise TrainingError(f"{metric} is {value}: the fit diverged")
        out.append(value)
    return out


def pruning_callback(
    trial: Any,
    monitor: str,
    max_epochs: int,
    seed_index: int = 0,
    n_seeds: int = 1,
    earlier: list[dict[int, float]] | None = None,
) -> Any:
    """A Lightning callback reporting ``monitor`` to the Optuna trial after each validation epoch.

    A trial runs its setting on several seeds, one after the other (``sweep.seeds``). The value
    reported for epoch ``e`` of the ``k``-th seed is the mean of that epoch's value over the seeds
    run so far, ``k`` earlier ones (``earlier``: their epoch → value) and this one, at step
    ``k · max_epochs + e``: every trial's value at a step means the same thing (the seed-mean of
    one epoch over the first ``k + 1`` seeds), which is what the pruner compares trials by. When
    the pruner says so it raises ``optuna.TrialPruned``, which ends ``fit`` and is recorded as
    PRUNED. Never at the last epoch of the last seed: the budget is spent, the trial counts as
    finished. This fit's own values are collected in ``self.values`` (epoch → value).
    """
    import optuna
    from lightning.pytorch.callbacks import Callback

    before = earlier or []

    class OptunaReport(Callback):
        def __init__(self) -> None:
            self.values: dict[int, float] = {}

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking or monitor not in trainer.callback_metrics:
                return
            epoch = int(trainer.current_epoch)
            value = float(trainer.callback_metrics[monitor])
            if not math.isfinite(value):
                raise TrainingError(f"{monitor} became {value} at epoch {epoch}")
            self.values[epoch] = value
            seen = [v[epoch] for v in before if epoch in v] + [value]
            mean = sum(seen) / len(seen)
            trial.report(mean, step=seed_index * max_epochs + epoch)
            last = seed_index + 1 == n_seeds and epoch + 1 >= max_epochs
            if not last and trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned at epoch {epoch} of seed {seed_index}: seed-mean {monitor}={mean:.4g}"
                )

    return OptunaReport()


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path("outputs") / "sweep"


def _pretrain_here(cfg: DictConfig, spec: TrialSpec, out: Path) -> DictConfig:
    """Pre-train the trial's own backbone under ``out/models`` and point ``paths.models_dir`` there."""
    from transferlab.runtime import StageRuntime
    from transferlab.stages import pretrain

    pcfg = OmegaConf.merge(
        cfg,
        {
            "paths": {"models_dir": str(out / "models")},
            "objective": spec.variant,
            "logger": {"enabled": False},
        },
    )
    validate(pcfg, "pretrain")
    pretrain.run(pcfg, StageRuntime(pcfg))
    return OmegaConf.merge(pcfg, {"objective": cfg.objective})


def trial_variant(cfg: DictConfig, spec: TrialSpec, route: Route) -> Variant:
    """The variant a trial fine-tunes: one of the route's study (:func:`transferlab.study.variants`),
    or, with ``sweep.pretrain``, the objective the trial pre-trains itself."""
    if spec.pretrain:
        return Variant(spec.variant, Init("pretrained", route.arch_key(spec.variant), spec.variant))
    return by_name(variants(cfg, route))[spec.variant]


def run_trial(cfg: DictConfig) -> float | list[float]:
    """Fine-tune ``sweep.target`` once and return ``sweep.metric`` (a list for several metrics)."""
    validate(cfg, "finetune")
    spec = trial_spec(cfg)

    from hydra_plugins.transferlab_optuna_sweeper import trial_context

    configure_torch(cfg.trainer)
    out = _output_dir()
    run_cfg = cfg
    if spec.pretrain:
        run_cfg = _pretrain_here(cfg, spec, out)
    route = get_route(run_cfg, spec.route)
    variant = trial_variant(run_cfg, spec, route)
    if variant.init.kind == "pretrained":
        backbone = route.pretrained_path(str(variant.init.objective))
        if not backbone.exists():
            raise CheckpointError(
                f"{backbone} is missing: run `dvc repro` (at least pretrain-{spec.route}) before "
                "sweeping, or set sweep.pretrain=true"
            )
    data = route.target_data(spec.target)

    ctx = trial_context()
    seeds = trial_seeds(cfg)
    n_train = int(run_cfg.data[spec.route].shots_per_class) * len(data["classes"])
    steps = int(cfg.finetune.max_steps[spec.route])
    epochs = epochs_for(steps, n_train, int(cfg.finetune.batch_size))
    uri = str(cfg.logger.tracking_uri)
    run_id = ctx.mlflow_run_id if ctx is not None and cfg.logger.enabled else None
    trainer_cfg = OmegaConf.merge(run_cfg.trainer, {"fit_workers": 1})  # the trial's own process
    per_seed: list[list[float]] = []
    histories: dict[str, list[dict[str, float]]] = {}
    reported: list[dict[int, float]] = []
    with fit_executor(route, {spec.target: data}, trainer_cfg, 1) as execute:
        for k, seed in enumerate(seeds):
            callbacks: list[Any] = []
            if ctx is not None and not ctx.multi_objective:
                callbacks.append(
                    pruning_callback(ctx.trial(), spec.metrics[0], epochs, k, len(seeds), reported)
                )
            # the first seed's curves go to the trial's MLflow run; every seed's result below
            logger: Any = make_buffered_logger(uri, run_id) if run_id and k == 0 else False
            fit = fit_for(run_cfg, spec.target, variant, seed=seed)
            (res,) = execute([fit], state=False, logger=logger, callbacks=callbacks)
            if res.error is not None:
                raise res.error
            if callbacks:
                reported.append(callbacks[0].values)
            histories[str(seed)] = res.history
            per_seed.append(reduce_history(res.history, spec.metrics, spec.directions, spec.reduce))
    over = [mean_ci([v[i] for v in per_seed]) for i in range(len(spec.metrics))]
    values = [float(c["mean"]) for c in over]
    spread = {m: float(c["sd"] or 0.0) for m, c in zip(spec.metrics, over, strict=True)}
    if run_id:
        log_seed_values(uri, run_id, spec.metrics, seeds, per_seed, values, spread)
    write_json(
        out / "result.json",
        {
            "target": spec.target,
            "variant": spec.variant,
            "reduce": spec.reduce,
            "seeds": seeds,
            "metrics": dict(zip(spec.metrics, values, strict=True)),
            "per_seed": {m: [v[i] for v in per_seed] for i, m in enumerate(spec.metrics)},
            "sd": spread,
            "history": histories,
        },
    )
    return values[0] if len(values) == 1 else values


def trial_seeds(cfg: DictConfig) -> list[int]:
    """The seeds a trial runs its setting on: ``sweep.seeds``, or the study's (``study.seeds``)."""
    seeds = cfg.sweep.get("seeds")
    return [int(s) for s in (cfg.study.seeds if seeds is None else seeds)]


def log_seed_values(
    uri: str,
    run_id: str,
    metrics: list[str],
    seeds: list[int],
    per_seed: list[list[float]],
    means: list[float],
    spread: dict[str, float],
) -> None:
    """Each seed's value (``<metric>/seed<s>``), the mean and the sd on the trial's MLflow run."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    ts = int(time.time() * 1000)
    rows = [
        Metric(f"{m}/seed{s}", float(v[i]), ts, 0)
        for i, m in enumerate(metrics)
        for s, v in zip(seeds, per_seed, strict=True)
    ]
    rows += [Metric(f"{m}/seed_mean", float(means[i]), ts, 0) for i, m in enumerate(metrics)]
    rows += [Metric(f"{m}/seed_sd", float(spread[m]), ts, 0) for m in metrics]
    MlflowClient(uri).log_batch(run_id, metrics=rows)


MULTIRUN_FLAGS = ("-m", "--multirun")


def with_default_sweeper(argv: list[str]) -> list[str]:
    """``argv`` with ``hparams_search=default`` added to a multirun whose search space needs
    Optuna (``interval()``, ``tag()``, ``simplex()``: Hydra's basic sweeper cannot sample them)
    and that names neither a search config nor a sweeper. A plain grid (``a=1,2``, ``range()``)
    stays with Hydra's basic sweeper and its launchers, as in any Hydra app."""
    if not any(a in MULTIRUN_FLAGS for a in argv):
        return argv
    named = ("hparams_search=", "+hparams_search=", "hydra/sweeper=")
    if any(a.startswith(named) for a in argv):
        return argv
    sampled = ("interval(", "tag(", "simplex(")
    if not any("=" in a and any(f in a.split("=", 1)[1] for f in sampled) for a in argv):
        return argv
    return [*argv, "hparams_search=default"]


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="config")
def _main(cfg: DictConfig) -> float | list[float]:
    return run_trial(cfg)


def main() -> Any:
    """The entry point (``python -m transferlab.sweep``, ``transferlab-sweep``)."""
    sys.argv = [sys.argv[0], *with_default_sweeper(sys.argv[1:])]
    return _main()


if __name__ == "__main__":
    main()
