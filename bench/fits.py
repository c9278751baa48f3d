"""Fits per minute on the default target: the study protocol multiplies fits (rates × seeds), so
this measures what one costs on each path, old and new, back to back in the same run.

- SGD fits (the scratch arm, ``finetune.max_steps`` steps): one after another in the stage's
  process (``trainer.fit_workers: 1``, the path before the fit pool) vs the fit pool (one forked
  one-thread worker per core, the default).
- Linear probes: the former probe, an SGD fit of the head on the frozen backbone for the same step
  budget, vs the new one, a logistic regression on features extracted once (scikit-learn L-BFGS,
  every C of ``finetune.probe_cs``).

Each path runs the same fits (seeds ``0 … n-1``); the figure is fits per minute of wall time, and
the ratio new / old.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from omegaconf import OmegaConf

from bench.common import rnd


def _rate(cfg: Any, route: Any, data: Any, fits: list[Any], workers: int | None) -> float:
    from transferlab.pool import fit_executor

    trainer = OmegaConf.merge(
        cfg.trainer, {"fit_workers": workers, "resume": False, "enable_progress_bar": False}
    )
    t = time.perf_counter()
    with fit_executor(route, {fits[0].target: data}, trainer, len(fits)) as execute:
        for res in execute(fits, state=False):
            if res.error is not None:
                raise res.error
    return 60.0 * len(fits) / (time.perf_counter() - t)


def fits_per_minute(cfg: Any, n: int = 6) -> dict[str, Any]:
    """The section's figures on ``data.image.targets[0]`` (data must be built)."""
    from transferlab.routes import get_route
    from transferlab.study import by_name, fit_for, variants

    run_cfg = OmegaConf.merge(cfg, {"route": "image"})
    route = get_route(run_cfg, "image")
    target = str(run_cfg.data.image.targets[0])
    data = route.target_data(target)
    arms = by_name(variants(run_cfg, route))
    sgd = [replace(fit_for(run_cfg, target, arms["scratch"]), seed=s) for s in range(n)]
    blocks = len(run_cfg.model.image.widths)
    head_sgd = [replace(f, hparams={**f.hparams, "freeze_depth": blocks}) for f in sgd]
    probe = [replace(f, hparams={**f.hparams, "strategy": "linear_probe"}) for f in sgd]
    steps = int(cfg.finetune.max_steps.image)
    out: dict[str, Any] = {"target": target, "fits": n, "steps": steps}
    out["sgd_in_process"] = rnd(_rate(run_cfg, route, data, sgd, 1), 1)
    out["sgd_pool"] = rnd(_rate(run_cfg, route, data, sgd, None), 1)
    out["probe_sgd_head"] = rnd(_rate(run_cfg, route, data, head_sgd, None), 1)
    out["probe_lbfgs"] = rnd(_rate(run_cfg, route, data, probe, None), 1)
    out["sgd_ratio"] = rnd(out["sgd_pool"] / out["sgd_in_process"], 2)
    out["probe_ratio"] = rnd(out["probe_lbfgs"] / out["probe_sgd_head"], 2)
    return out
