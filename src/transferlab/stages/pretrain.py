"""Stage ``pretrain``: train one objective's backbone on the route's source and save it."""

from __future__ import annotations

import json
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transferlab.io import write_json
from transferlab.stages.common import History, configure_torch, make_trainer, route_dirs, seed_all
from transferlab.tracking import StageRun


def build_objective(cfg: DictConfig, route: str, objective: str) -> tuple[Any, dict[str, Any]]:
    """Instantiate the backbone and the objective's LightningModule from their ``_target_``s."""
    from hydra.utils import instantiate

    from transferlab.models.checkpoint import build_backbone

    arch = OmegaConf.to_container(cfg.model[route], resolve=True)
    backbone = build_backbone(arch)
    ocfg = OmegaConf.to_container(cfg.objectives[objective], resolve=True)
    ocfg = {k: v for k, v in ocfg.items() if k not in ("route", "max_epochs", "batch_size")}
    module = instantiate(ocfg, backbone=backbone, _convert_="all")
    return module, arch


def run(cfg: DictConfig) -> dict[str, Any]:
    from transferlab.data.loaders import load_dataset, make_loader
    from transferlab.models.checkpoint import save_backbone

    route, objective = str(cfg.route), str(cfg.objective)
    dirs = route_dirs(cfg, route)
    out = dirs["pretrain"] / objective
    budget = cfg.pretrain[route]
    ocfg = cfg.objectives[objective]
    seed_all(cfg.seed)
    configure_torch(cfg.trainer)
    tags = {"route": route, "objective": objective, "run_name": f"pretrain:{route}:{objective}"}
    with StageRun(cfg, "pretrain", tags=tags, manifest=dirs["manifest"]) as tr:
        data = load_dataset(dirs["data"] / "source.pt")
        batch_size = int(ocfg.get("batch_size") or budget.batch_size)
        max_epochs = int(ocfg.get("max_epochs") or budget.max_epochs)
        train = make_loader(
            data["train"]["x"],
            data["train"]["y"],
            batch_size=batch_size,
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
        )
        val = make_loader(data["val"]["x"], data["val"]["y"], batch_size=512, shuffle=False)
        module, arch = build_objective(cfg, route, objective)
        history = History()
        trainer = make_trainer(
            cfg.trainer,
            max_epochs=max_epochs,
            logger=tr.lightning_logger(f"pretrain:{route}:{objective}", {"objective": objective}),
            callbacks=[history],
            limit_train_batches=budget.get("limit_train_batches"),
            limit_val_batches=budget.get("limit_val_batches"),
        )
        t0 = time.perf_counter()
        trainer.fit(module, train, val)
        seconds = time.perf_counter() - t0
        final = {k: v for k, v in history.epochs[-1].items() if "/" in k} if history.epochs else {}
        manifest_hash = (
            json.loads(dirs["manifest"].read_text())["hash"] if dirs["manifest"].exists() else ""
        )
        meta = {
            "route": route,
            "objective": objective,
            "seed": int(cfg.seed),
            "epochs": max_epochs,
            "data_hash": manifest_hash,
            "final": final,
        }
        save_backbone(out / "backbone.pt", module.backbone, arch, meta)
        metrics = {
            "objective": objective,
            "fit_seconds": round(seconds, 2),
            "history": history.epochs,
            **final,
        }
        write_json(out / "metrics.json", metrics)
        tr.log_metrics({**final, "fit_seconds": seconds})
        tr.log_artifact(out / "backbone.pt", "checkpoints")
        tr.log_artifact(out / "metrics.json")
    return metrics
