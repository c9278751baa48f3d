"""A sweep's overhead per trial beyond the fine-tuning fit it runs."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import rnd, tool_env


def sweep_overhead(
    cfg: Any, work: Path, models_dir: Path, n_trials: int, fit_s: float, target: str
) -> dict[str, Any]:
    """A fixed-point Optuna sweep of ``n_trials`` identical trials (the search space pinned to the
    config's values, so each trial is the fine-tuning fit timed in-process): time per trial
    beyond that fit (process start-up, study, config, data, model, MLflow)."""
    import optuna

    fcfg = cfg.finetune
    storage = f"sqlite:///{work / 'optuna.db'}"
    cmd = [
        sys.executable,
        "-m",
        "transferlab.sweep",
        "-m",
        "hparams_search=lr_freeze_wd",
        "hydra/sweeper/pruner=nop",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=bench",
        "hydra.sweeper.export_best=false",
        f"hydra.sweep.dir={work / 'multirun'}",
        f"sweep.target={target}",
        f"paths.data_dir={cfg.paths.data_dir}",
        f"paths.models_dir={models_dir}",
        f"logger.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        f"finetune.lr=choice({fcfg.lr})",  # a one-point space: every trial is the same fit
        f"finetune.freeze_depth={fcfg.freeze_depth}",
        f"finetune.weight_decay={fcfg.weight_decay}",
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=tool_env())
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"measured": False, "note": (proc.stdout + proc.stderr)[-600:]}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name="bench", storage=storage).get_trials()
    durations = [
        (tr.datetime_complete - tr.datetime_start).total_seconds()
        for tr in trials
        if tr.datetime_complete and tr.datetime_start
    ]
    n = len(durations)
    return {
        "measured": True,
        "trials": n,
        "sweep_wall_s": rnd(wall, 2),
        "fit_s": rnd(fit_s, 2),
        "trial_s": [rnd(d, 2) for d in durations],
        "outside_trials_s": rnd(wall - sum(durations), 2),
        "per_trial_overhead_s": rnd((wall - n * fit_s) / n, 2) if n else None,
        # After the first trial, which also pays the imports (lightning, the stage modules):
        "steady_trial_overhead_s": rnd(statistics.median(durations[1:]) - fit_s, 2)
        if n > 1
        else None,
        "per_trial_overhead_share": rnd((wall - n * fit_s) / wall, 3) if n else None,
    }
