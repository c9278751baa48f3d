"""Stage ``finetune``: every arm of the route's study on every labelled target, by the protocol.

The arms are the route's study (:func:`transferlab.study.variants`): the fine-tuned objectives
(``finetune.fine_tuned``), their domain-adapted twins (``finetune.dapt_epochs > 0``), hub models,
the declared ``finetune.variants``, a linear probe per objective, the scratch controls and the
probe floors. Each (target, arm) runs by :class:`~transferlab.study.Protocol` (docs/protocol.md):
every rate of ``study.lr_grid`` on the first ``study.select_seeds`` seeds, the rate with the best
seed-mean val accuracy kept, then the other seeds at that rate (a probe: each seed once, no rate).
Fits run on the runtime's executor (``trainer.fit_workers`` at a time); a fit that diverges only
rules its rate out. The checkpoints of the kept fits (``<variant>/<target>/seed<k>.pt``), one MLflow
child run per fit (tagged seed, lr and ``failed``) and ``history.json`` (selected rates, the grid's
val accuracies, per-seed histories) are written here, in order. Continued pre-training runs here,
before the fits, and saves ``<o>_dapt/<target>.backbone.pt``.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from transferlab.errors import TrainingError
from transferlab.io import atomic_dir, write_json
from transferlab.models.checkpoint import save_backbone, save_classifier
from transferlab.progress import progress_bar
from transferlab.routes import Route, get_route
from transferlab.stages.context import Runtime, Tracker
from transferlab.stages.fit import is_probe
from transferlab.stats import failed, select_lr, underfit
from transferlab.study import (
    Fit,
    FitResult,
    Init,
    Protocol,
    Variant,
    final_fits,
    fit_for,
    grid_fits,
    target_arms,
    variants,
)
from transferlab.training import configure_torch


def adapt_targets(
    route: Route,
    arms: dict[str, list[Variant]],
    datasets: dict[str, Any],
    out: Path,
    tr: Tracker,
    summary: dict[str, Any],
) -> dict[tuple[str, str], str]:
    """Continued (domain-adaptive) pre-training for every DAPT arm of ``arms[target]`` (the arms
    a target fits: a shift family's members only theirs), the unlabelled targets included (their
    perplexity is reported). Saves each adapted backbone as
    ``<out>/<o>_dapt/<target>.backbone.pt``, fills ``summary["dapt"][target][<o>_dapt]`` with the
    route's before/after measures and the history, and returns ``{(target, <o>_dapt): path}``."""
    cfg = route.cfg
    paths: dict[tuple[str, str], str] = {}
    for target, data in datasets.items():
        for v in (v for v in arms[target] if v.init.kind == "adapted"):
            o = str(v.init.objective)
            logger = tr.lightning_logger(
                f"dapt:{route.name}:{target}:{o}", {"target": target, "variant": v.name}
            )
            backbone, info = route.adapt(o, data, logger)
            summary.setdefault("dapt", {}).setdefault(target, {})[v.name] = info
            meta = {"route": route.name, "target": target, "variant": v.name, "seed": int(cfg.seed)}
            meta["objective_cfg"] = route.objective_cfg(o)
            path = out / v.name / f"{target}.backbone.pt"
            save_backbone(path, backbone, route.arch(Init("pretrained", v.init.arch, o)), meta)
            paths[(target, v.name)] = str(path)
    return paths


def run(cfg: DictConfig, rt: Runtime) -> dict[str, Any]:
    route = get_route(cfg)
    protocol = Protocol.from_cfg(cfg)
    datasets = {t: route.target_data(t) for t in route.targets()}
    arms = variants(cfg, route)
    labelled = [t for t, d in datasets.items() if route.labelled(d)]
    members = route.family_members()
    on = {t: target_arms(cfg, arms, t in members) for t in datasets}  # each target's arms
    n_fits = sum(len(on[t]) for t in labelled)  # at least: the pool starts no more workers
    summary: dict[str, Any] = {"route": route.name, "protocol": asdict(protocol), "targets": {}}
    progress = bool(cfg.trainer.enable_progress_bar)
    tags = {"route": route.name, "run_name": f"finetune:{route.name}"}
    with (
        rt.executor(route, {t: datasets[t] for t in labelled}, n_fits) as execute,
        rt.track("finetune", tags, route.dirs["manifest"]) as tr,
    ):
        configure_torch(cfg.trainer)  # after the fork: workers run one thread each
        with (
            atomic_dir(route.dirs["finetune"]) as out,
            progress_bar(progress, hosts_fits=True) as bar,
        ):
            adapted = adapt_targets(route, on, datasets, out, tr, summary)
            base = {
                (t, v.name): fit_for(cfg, t, v, adapted=adapted.get((t, v.name)))
                for t in labelled
                for v in on[t]
            }
            total = sum(
                len(grid_fits(f, protocol)) + (0 if is_probe(f) else len(protocol.held))
                for f in base.values()
            )
            task = bar.add_task(f"finetune[{route.name}]", total=total)
            done: dict[tuple[str, str], list[FitResult]] = {key: [] for key in base}

            def collect(fits: list[Fit]) -> None:
                for res in execute(fits, tracked=tr.enabled):
                    done[(res.fit.target, res.fit.variant.name)].append(
                        _checked(res, route, datasets[res.fit.target], protocol, tr)
                    )
                    bar.update(task, description=f"finetune[{route.name}] {res.fit.name}")
                    bar.advance(task)

            # Phase 1: every rate of the grid on the selecting seeds; phase 2: the other seeds at
            # each arm's selected rate.
            collect([f for fit in base.values() for f in grid_fits(fit, protocol)])
            selected = {key: _select(rs) for key, rs in done.items()}
            collect(
                [f for key, fit in base.items() for f in final_fits(fit, protocol, selected[key])]
            )
            for (target, name), results in done.items():
                lr = selected[(target, name)]
                kept = [r for r in results if lr is None or _lr(r) == lr]
                for res in kept:
                    if res.error is not None:  # diverged at the rate its other seeds chose
                        raise res.error
                    fit = res.fit
                    meta = {
                        "route": route.name,
                        "target": target,
                        "variant": name,
                        "seed": fit.seed,
                        "lr": lr,
                    }
                    save_classifier(
                        out / name / target / f"seed{fit.seed}.pt",
                        res.state,
                        route.saved_arch(fit.variant.init),
                        len(datasets[target]["classes"]),
                        meta,
                    )
                k = len(datasets[target]["classes"])
                summary["targets"].setdefault(target, {})[name] = _arm_summary(
                    results, lr, kept, k, protocol
                )
            write_json(out / "history.json", summary)
        tr.log_artifact(route.dirs["finetune"] / "history.json")
    return summary


def _lr(res: FitResult) -> float:
    return float(res.fit.hparams["lr"])


def _val_acc(res: FitResult) -> float:
    return float(res.history[-1]["val/acc_eval"]) if res.history and res.error is None else math.nan


def _select(results: list[FitResult]) -> float | None:
    """The arm's selected rate (None: a probe, which has none)."""
    if not results or is_probe(results[0].fit):
        return None
    val: dict[float, list[float]] = {}
    for r in results:
        val.setdefault(_lr(r), []).append(_val_acc(r))
    lr = select_lr(val)
    if not any(math.isfinite(v) for v in val[lr]):  # every rate diverged: nothing to report
        err = next(r.error for r in results if r.error is not None)
        raise err  # type: ignore[misc]
    return lr


def _flags(res: FitResult, num_classes: int, protocol: Protocol) -> dict[str, bool]:
    """The fit's ``failed`` (chance level or diverged) and ``underfit`` (an SGD fit that learned
    but ends below ``study.fit_threshold``) flags, from its final eval-mode train accuracy."""
    diverged = isinstance(res.error, TrainingError)
    train_acc = res.history[-1].get("train/acc_eval") if res.history and not diverged else None
    bad = failed(train_acc, num_classes, protocol.fail_margin)
    weak = not bad and not is_probe(res.fit) and underfit(train_acc, protocol.fit_threshold)
    return {"failed": bad, "underfit": weak}


def _checked(
    res: FitResult, route: Route, data: dict[str, Any], protocol: Protocol, tr: Tracker
) -> FitResult:
    """Log the fit's MLflow run (tagged with its :func:`_flags`, seed and rate) and re-raise any
    error but divergence, which only rules its rate out."""
    fit = res.fit
    flags = _flags(res, len(data["classes"]), protocol)
    tags = {
        "target": fit.target,
        "variant": fit.variant.name,
        "seed": str(fit.seed),
        "lr": "probe" if is_probe(fit) else f"{_lr(res):g}",
        **{k: str(v).lower() for k, v in flags.items()},
    }
    name = f"finetune:{fit.name}:seed{fit.seed}" + ("" if is_probe(fit) else f":lr{_lr(res):g}")
    tr.log_fit(name, tags, res.log, res.error)
    if res.error is not None and not isinstance(res.error, TrainingError):
        raise res.error
    return res


def _arm_summary(
    results: list[FitResult],
    lr: float | None,
    kept: list[FitResult],
    num_classes: int,
    protocol: Protocol,
) -> dict[str, Any]:
    """history.json's entry of one arm: the selected rate, every grid point's per-seed val
    accuracy, and per kept seed its history (the last row has ``train/acc_eval``) and its
    :func:`_flags` (what evaluate reports)."""
    grid: dict[str, dict[str, float]] = {}
    for r in results:
        key = "probe" if lr is None else f"{_lr(r):g}"
        acc = _val_acc(r)
        grid.setdefault(key, {})[str(r.fit.seed)] = acc if math.isfinite(acc) else None
    return {
        "lr": lr,
        "val_acc_grid": grid,
        "seeds": {
            str(r.fit.seed): {"history": r.history, **_flags(r, num_classes, protocol)}
            for r in kept
        },
    }
