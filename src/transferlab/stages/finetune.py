"""Stage ``finetune``: every variant of the route fine-tuned on every labelled target.

The variants are the route's study (:func:`transferlab.study.variants`): each pre-trained
objective, their domain-adapted twins (``finetune.dapt_epochs > 0``), hub models, the declared
``finetune.variants`` and the scratch controls. Each (target, variant) is one
:class:`~transferlab.study.Fit`, run by the runtime's executor (``trainer.fit_workers`` at a time);
checkpoints (``<variant>/<target>.pt``) and MLflow child runs are written here, in order.
Continued pre-training runs here, before the fits, and saves ``<o>_dapt/<target>.backbone.pt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from transferlab.io import atomic_dir, write_json
from transferlab.models.checkpoint import save_backbone, save_classifier
from transferlab.progress import progress_bar
from transferlab.routes import Route, get_route
from transferlab.stages.context import Runtime, Tracker
from transferlab.study import Fit, Init, Variant, fit_for, variants
from transferlab.training import configure_torch


def adapt_targets(
    route: Route,
    arms: list[Variant],
    datasets: dict[str, Any],
    out: Path,
    tr: Tracker,
    summary: dict[str, Any],
) -> dict[tuple[str, str], str]:
    """Continued (domain-adaptive) pre-training of each adaptable objective on every target, the
    unlabelled ones included (their perplexity is reported). Saves each adapted backbone as
    ``<out>/<o>_dapt/<target>.backbone.pt``, fills ``summary["dapt"][target][<o>_dapt]`` with the
    route's before/after measures and the history, and returns ``{(target, <o>_dapt): path}``."""
    cfg = route.cfg
    paths: dict[tuple[str, str], str] = {}
    adapted = [v for v in arms if v.init.kind == "adapted"]
    for target, data in datasets.items():
        for v in adapted:
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
    datasets = {t: route.target_data(t) for t in route.targets()}
    arms = variants(cfg, route)
    labelled = [t for t, d in datasets.items() if route.labelled(d)]
    n_fits = len(labelled) * len(arms)
    summary: dict[str, Any] = {"route": route.name, "targets": {}}
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
            adapted = adapt_targets(route, arms, datasets, out, tr, summary)
            fits: list[Fit] = [
                fit_for(cfg, t, v, adapted=adapted.get((t, v.name))) for t in labelled for v in arms
            ]
            task = bar.add_task(f"finetune[{route.name}]", total=len(fits))
            for res in execute(fits, tracked=tr.enabled):
                fit = res.fit
                target, name = fit.target, fit.variant.name
                tr.log_fit(
                    f"finetune:{fit.name}", {"target": target, "variant": name}, res.log, res.error
                )
                if res.error is not None:
                    raise res.error
                meta = {"route": route.name, "target": target, "variant": name, "seed": fit.seed}
                save_classifier(
                    out / name / f"{target}.pt",
                    res.state,
                    route.saved_arch(fit.variant.init),
                    len(datasets[target]["classes"]),
                    meta,
                )
                summary["targets"].setdefault(target, {})[name] = {"history": res.history}
                bar.update(task, description=f"finetune[{route.name}] {target}/{name}")
                bar.advance(task)
            write_json(out / "history.json", summary)
        tr.log_artifact(route.dirs["finetune"] / "history.json")
    return summary
