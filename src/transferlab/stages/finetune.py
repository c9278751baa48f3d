"""Stage ``finetune``: for every target, fine-tune each pre-trained backbone and a scratch control.

The scratch control has the same architecture, head, data order and budget; only the backbone's
starting weights differ. Seeding happens before each model is built, so the head's initial weights
are identical across variants of one target.

The text route (:mod:`transferlab.stages.text`) brings its own variants (DAPT, a hub backbone, one
scratch control per architecture), feeds token ids with padding trimmed per batch, and skips the
unlabelled targets; the fit itself is :func:`finetune_one` for both routes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from transferlab.io import write_json
from transferlab.stages.common import configure_torch, make_trainer, route_dirs, seed_all
from transferlab.tracking import StageRun, progress_bar

if TYPE_CHECKING:  # evaluate imports this module and needs no lightning
    from lightning.pytorch.callbacks import Callback

STRATEGIES = {"full": "fixed", "linear_probe": "fixed", "lp_ft": "lp_ft", "gradual": "gradual"}


def variants(cfg: DictConfig, route: str) -> list[str]:
    """Variant names: one per pre-trained objective, ``<primary>/<name>`` for every entry of
    ``finetune.variants`` (a strategy or knob applied to the primary objective), then ``scratch``."""
    if route == "text":
        from transferlab.stages import text

        return text.variants(cfg)
    from transferlab.config import primary_objective

    extra = [f"{primary_objective(cfg, route)}/{v}" for v in (cfg.finetune.get("variants") or {})]
    return [*map(str, cfg.pretrain[route].objectives), *extra, "scratch"]


def variant_config(cfg: DictConfig, variant: str) -> tuple[DictConfig, str]:
    """``(cfg with the variant's finetune overrides, the backbone it starts from)``."""
    base, _, name = variant.partition("/")
    if not name:
        return cfg, base
    overrides = OmegaConf.to_container(cfg.finetune.variants[name], resolve=True)
    return OmegaConf.merge(cfg, {"finetune": overrides}), base


def freeze_schedule(fcfg: DictConfig, num_blocks: int) -> Callback:
    from transferlab.errors import ConfigError
    from transferlab.finetune.freezing import FreezeSchedule

    strategy = str(fcfg.get("strategy", "full"))
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"finetune.strategy={strategy!r} is not allowed; choose one of: {', '.join(STRATEGIES)}"
        )
    depth = num_blocks if strategy == "linear_probe" else int(fcfg.get("freeze_depth", 0))
    return FreezeSchedule(
        mode=STRATEGIES[strategy],
        freeze_depth=depth,
        lp_epochs=int(fcfg.get("lp_epochs", 1)),
        unfreeze_every=int(fcfg.get("unfreeze_every", 1)),
        lr_factor=float(fcfg.get("lp_ft_lr_factor", 1.0)),
        freeze_norm_stats=bool(fcfg.get("freeze_norm_stats", True)),
    )


def _source_images(cfg: DictConfig, route: str) -> Any:
    """Source inputs for the alignment loss (only loaded when ``finetune.alignment`` is on)."""
    fcfg = cfg.finetune
    if str(fcfg.get("alignment", {}).get("kind", "none")) == "none" or route != "image":
        return None
    from transferlab.data.loaders import load_dataset

    return load_dataset(route_dirs(cfg, route)["data"] / "source.pt")["train"]["x"]


def finetune_one(
    cfg: DictConfig,
    route: str,
    target: str,
    variant: str,
    data: dict[str, Any],
    logger: Any = False,
    callbacks: Sequence[Callback] = (),
    backbone: Any = None,
) -> tuple[Any, list[dict[str, float]]]:
    """Fine-tune one (target, variant) and return the trained classifier with its epoch history.

    ``callbacks`` are added to the trainer (e.g. an Optuna pruning callback in sweeps).
    ``backbone`` (text route) is the variant's starting backbone when the caller has built it.
    """
    from transferlab.data.loaders import make_loader
    from transferlab.finetune.module import FinetuneModule
    from transferlab.models.checkpoint import build_backbone, load_backbone
    from transferlab.models.cnn import Classifier
    from transferlab.stages.callbacks import History

    cfg, variant = variant_config(cfg, variant)  # "mae/lp_ft" starts from the mae backbone
    fcfg = cfg.finetune
    dirs = route_dirs(cfg, route)
    if route == "text":
        from transferlab.stages import text

        if backbone is None:
            backbone = text.variant_backbone(cfg, target, variant, data)
        seed_all(cfg.seed)  # the head starts from the same weights for every variant
        loader = text.make_loader  # padding trimmed per batch
        x = {s: text.inputs(backbone, data[s]) for s in ("train", "val")}
    else:
        arch = OmegaConf.to_container(cfg.model[route], resolve=True)
        seed_all(cfg.seed)
        backbone = build_backbone(arch)
        if variant != "scratch":
            pretrained, _ = load_backbone(
                dirs["pretrain"] / variant / "backbone.pt", expected_arch=arch
            )
            backbone.load_state_dict(pretrained.state_dict())
        x = {s: data[s]["x"] for s in ("train", "val")}
        loader = make_loader
    num_classes = len(data["classes"])
    model = Classifier(backbone, num_classes, head_dropout=float(fcfg.get("head_dropout", 0.0)))
    train = loader(
        x["train"],
        data["train"]["y"],
        batch_size=fcfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
    )
    val = loader(x["val"], data["val"]["y"], batch_size=512, shuffle=False)
    steps = math.ceil(len(train.dataset) / train.batch_size) * int(fcfg.max_epochs)
    module = FinetuneModule(
        model,
        num_classes,
        lr=float(fcfg.lr),
        weight_decay=float(fcfg.weight_decay),
        optimizer=str(fcfg.optimizer),
        schedule=str(fcfg.schedule),
        schedule_kwargs=OmegaConf.to_container(fcfg.schedule_kwargs, resolve=True)
        if fcfg.get("schedule_kwargs")
        else {},
        label_smoothing=float(fcfg.get("label_smoothing", 0.0)),
        total_steps=steps,
        layerwise_decay=fcfg.get("layerwise_decay"),
        regularizer=_plain(fcfg.get("regularizer")),
        multitask=_plain(fcfg.get("multitask")),
        alignment=_plain(fcfg.get("alignment")),
        source_x=_source_images(cfg, route),
        seed=int(cfg.seed),
    )
    history = History()
    extra: list[Callback] = [freeze_schedule(fcfg, backbone.num_blocks)]
    patience = int(fcfg.get("early_stopping_patience", 0) or 0)
    if patience > 0:
        from lightning.pytorch.callbacks import EarlyStopping

        extra.append(EarlyStopping(monitor="val/acc", mode="max", patience=patience))
    from transferlab.resume import EpochSeed, Resume

    resume = Resume(
        f"finetune-{route}-{target}-{variant}",
        {
            "cfg": OmegaConf.to_container(cfg, resolve=True),
            "target": target,
            "variant": variant,
            "train_y": data["train"]["y"].tolist(),
        },
        enabled=bool(cfg.trainer.get("resume", True)) and not callbacks,
    )
    trainer = make_trainer(
        cfg.trainer,
        max_epochs=int(fcfg.max_epochs),
        logger=logger,
        callbacks=[history, *extra, EpochSeed(cfg.seed), *resume.callbacks(), *callbacks],
    )
    trainer.fit(module, train, val, ckpt_path=resume.ckpt_path, weights_only=True)
    resume.done()
    return model, history.epochs


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _fit_job(job: tuple[DictConfig, str, str, str, str | None, bool]) -> dict[str, Any]:
    """One (target, variant) fit, in a pool worker or in process: weights, history, its log."""
    from transferlab.stages.pool import FitLog, pack_state, picklable, recording_logger, shared

    cfg, route, target, variant, adapted, tracked = job
    log = FitLog()
    try:
        backbone = None
        if adapted is not None:  # text DAPT: the backbone adapted (and saved) by the parent
            from transferlab.models.checkpoint import load_backbone

            backbone, _ = load_backbone(adapted)
        logger = recording_logger(log) if tracked else False
        model, history = finetune_one(
            cfg, route, target, variant, shared("data")[target], logger, backbone=backbone
        )
    except Exception as exc:  # the parent logs the failed fit, then raises it
        log.end_ms = log.end_ms or log.start_ms
        return {"error": picklable(exc), "log": log}
    return {"state": pack_state(model), "history": history, "log": log}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Every (target, variant) fit of the route, ``trainer.fit_workers`` at a time (see
    :mod:`transferlab.stages.pool`); checkpoints and MLflow child runs are written here, in order."""
    from transferlab.data.loaders import load_dataset
    from transferlab.io import atomic_dir
    from transferlab.models.checkpoint import save_classifier
    from transferlab.stages.pool import fit_pool, fit_workers, unpack_state

    route = str(cfg.route)
    dirs = route_dirs(cfg, route)
    targets = list(map(str, cfg.data[route].targets))
    names = variants(cfg, route)
    arch = OmegaConf.to_container(cfg.model[route], resolve=True)
    datasets = {t: load_dataset(dirs["data"] / "targets" / f"{t}.pt") for t in targets}
    # unlabelled text targets (task lm) are only adapted to (DAPT), never fine-tuned
    jobs = [(t, v) for t in targets if datasets[t].get("task") != "lm" for v in names]
    summary: dict[str, Any] = {"route": route, "targets": {}}
    progress = bool(cfg.trainer.get("enable_progress_bar", True))
    tags = {"route": route, "run_name": f"finetune:{route}"}
    with (
        fit_pool(fit_workers(cfg.trainer, len(jobs)), {"data": datasets}) as pmap,
        StageRun(cfg, "finetune", tags=tags, manifest=dirs["manifest"]) as tr,
    ):
        configure_torch(cfg.trainer)  # after the fork: workers run one thread each
        with atomic_dir(dirs["finetune"]) as out, progress_bar(progress, hosts_fits=True) as bar:
            adapted: dict[tuple[str, str], str] = {}
            if route == "text":
                from transferlab.stages import text

                for target in targets:
                    adapted.update(
                        text.dapt_target(cfg, target, datasets[target], out, tr, summary)
                    )
            task = bar.add_task(f"finetune[{route}]", total=len(jobs))
            args = [(cfg, route, t, v, adapted.get((t, v)), tr.enabled) for t, v in jobs]
            for (target, variant), res in zip(jobs, pmap(_fit_job, args), strict=True):
                tr.log_fit(
                    f"finetune:{route}:{target}:{variant}",
                    {"target": target, "variant": variant},
                    res["log"],
                    res.get("error"),
                )
                if "error" in res:
                    raise res["error"]
                # text: the variant's own architecture (a hub entry saved without its weights)
                saved = text.saved_arch(text.arch_for(cfg, variant)) if route == "text" else arch
                meta = {"route": route, "target": target, "variant": variant, "seed": int(cfg.seed)}
                save_classifier(
                    out / variant / f"{target}.pt",
                    unpack_state(res["state"]),
                    saved,
                    len(datasets[target]["classes"]),
                    meta,
                )
                summary["targets"].setdefault(target, {})[variant] = {"history": res["history"]}
                bar.update(task, description=f"finetune[{route}] {target}/{variant}")
                bar.advance(task)
            write_json(out / "history.json", summary)
        tr.log_artifact(dirs["finetune"] / "history.json")
    return summary
