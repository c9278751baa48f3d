"""Stage ``finetune``: for every target, fine-tune each pre-trained backbone and a scratch control.

The scratch control has the same architecture, head, data order and budget; only the backbone's
starting weights differ. Seeding happens before each model is built, so the head's initial weights
are identical across variants of one target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from transferlab.io import write_json
from transferlab.stages.common import History, configure_torch, make_trainer, route_dirs, seed_all
from transferlab.tracking import StageRun, progress_bar


def variants(cfg: DictConfig, route: str) -> list[str]:
    """Variant names: one per pre-trained objective, then ``scratch``."""
    return [*map(str, cfg.pretrain[route].objectives), "scratch"]


def finetune_one(
    cfg: DictConfig,
    route: str,
    target: str,
    variant: str,
    data: dict[str, Any],
    logger: Any = False,
    callbacks: Sequence[Callback] = (),
) -> tuple[Any, list[dict[str, float]]]:
    """Fine-tune one (target, variant) and return the trained classifier with its epoch history.

    ``callbacks`` are added to the trainer (e.g. an Optuna pruning callback in sweeps).
    """
    from transferlab.data.loaders import make_loader
    from transferlab.finetune.freezing import FreezeSchedule
    from transferlab.finetune.module import FinetuneModule
    from transferlab.models.checkpoint import build_backbone, load_backbone
    from transferlab.models.cnn import Classifier

    fcfg = cfg.finetune
    dirs = route_dirs(cfg, route)
    arch = OmegaConf.to_container(cfg.model[route], resolve=True)
    seed_all(cfg.seed)
    backbone = build_backbone(arch)
    if variant != "scratch":
        pretrained, _ = load_backbone(
            dirs["pretrain"] / variant / "backbone.pt", expected_arch=arch
        )
        backbone.load_state_dict(pretrained.state_dict())
    num_classes = len(data["classes"])
    model = Classifier(backbone, num_classes, head_dropout=float(fcfg.get("head_dropout", 0.0)))
    train = make_loader(
        data["train"]["x"],
        data["train"]["y"],
        batch_size=fcfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
    )
    val = make_loader(data["val"]["x"], data["val"]["y"], batch_size=512, shuffle=False)
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
    )
    history = History()
    freeze = FreezeSchedule(
        mode="fixed",
        freeze_depth=int(fcfg.get("freeze_depth", 0)),
        freeze_norm_stats=bool(fcfg.get("freeze_norm_stats", True)),
    )
    trainer = make_trainer(
        cfg.trainer,
        max_epochs=int(fcfg.max_epochs),
        logger=logger,
        callbacks=[history, freeze, *callbacks],
    )
    trainer.fit(module, train, val)
    return model, history.epochs


def run(cfg: DictConfig) -> dict[str, Any]:
    from transferlab.data.loaders import load_dataset
    from transferlab.io import atomic_dir
    from transferlab.models.checkpoint import save_classifier

    route = str(cfg.route)
    dirs = route_dirs(cfg, route)
    targets = list(map(str, cfg.data[route].targets))
    names = variants(cfg, route)
    arch = OmegaConf.to_container(cfg.model[route], resolve=True)
    configure_torch(cfg.trainer)
    summary: dict[str, Any] = {"route": route, "targets": {}}
    progress = bool(cfg.trainer.get("enable_progress_bar", True))
    tags = {"route": route, "run_name": f"finetune:{route}"}
    with StageRun(cfg, "finetune", tags=tags, manifest=dirs["manifest"]) as tr:
        with atomic_dir(dirs["finetune"]) as out, progress_bar(progress) as bar:
            task = bar.add_task(f"finetune[{route}]", total=len(targets) * len(names))
            for target in targets:
                data = load_dataset(dirs["data"] / "targets" / f"{target}.pt")
                summary["targets"][target] = {}
                for variant in names:
                    bar.update(task, description=f"finetune[{route}] {target}/{variant}")
                    logger = tr.lightning_logger(
                        f"finetune:{route}:{target}:{variant}",
                        {"target": target, "variant": variant},
                    )
                    model, history = finetune_one(cfg, route, target, variant, data, logger)
                    meta = {
                        "route": route,
                        "target": target,
                        "variant": variant,
                        "seed": int(cfg.seed),
                    }
                    save_classifier(
                        out / variant / f"{target}.pt", model, arch, len(data["classes"]), meta
                    )
                    summary["targets"][target][variant] = {"history": history}
                    bar.advance(task)
            write_json(out / "history.json", summary)
        tr.log_artifact(dirs["finetune"] / "history.json")
    return summary
