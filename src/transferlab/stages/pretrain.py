"""Stage ``pretrain``: train one objective's backbone on the route's source and save it."""

from __future__ import annotations

import json
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transferlab.callbacks import History
from transferlab.data.loaders import load_dataset, make_loader
from transferlab.io import write_json
from transferlab.models.checkpoint import build_backbone, save_backbone
from transferlab.resume import EpochSeed, Resume
from transferlab.routes import get_route
from transferlab.stages.context import Runtime
from transferlab.study import Init
from transferlab.training import configure_torch, make_trainer, seed_all


def build_objective(cfg: DictConfig, route: str, objective: str) -> tuple[Any, dict[str, Any]]:
    """The objective's LightningModule around a fresh backbone of the architecture it trains."""
    r = get_route(cfg, route)
    arch = r.arch(Init("scratch", r.arch_key(objective)))
    return r.objective_module(objective, build_backbone(arch)), arch


def _tensors(split: dict[str, Any]) -> tuple[Any, ...]:
    """``(x, y)``, or ``(x,)`` for a source without labels (the text route's LM blocks)."""
    return tuple(split[k] for k in ("x", "y") if k in split)


def run(cfg: DictConfig, rt: Runtime) -> dict[str, Any]:
    route, objective = str(cfg.route), str(cfg.objective)
    dirs = get_route(cfg).dirs
    out = dirs["pretrain"] / objective
    budget = cfg.pretrain[route]
    ocfg = cfg.objectives[objective]
    seed_all(cfg.seed)
    configure_torch(cfg.trainer)
    tags = {"route": route, "objective": objective, "run_name": f"pretrain:{route}:{objective}"}
    with rt.track("pretrain", tags, dirs["manifest"]) as tr:
        data = load_dataset(dirs["data"] / "source.pt")
        batch_size = int(ocfg.get("batch_size") or budget.batch_size)
        max_epochs = int(ocfg.get("max_epochs") or budget.max_epochs)
        train = make_loader(
            *_tensors(data["train"]),
            batch_size=batch_size,
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
        )
        val = make_loader(*_tensors(data["val"]), batch_size=512, shuffle=False)
        module, arch = build_objective(cfg, route, objective)
        history = History()
        resume = Resume(
            f"pretrain-{route}-{objective}",
            {"cfg": OmegaConf.to_container(cfg, resolve=True), "stage": "pretrain"},
            enabled=bool(cfg.trainer.get("resume", True)),
        )
        trainer = make_trainer(
            cfg.trainer,
            max_epochs=max_epochs,
            logger=tr.lightning_logger(f"pretrain:{route}:{objective}", {"objective": objective}),
            callbacks=[history, EpochSeed(cfg.seed), *resume.callbacks()],
            limit_train_batches=budget.get("limit_train_batches"),
            limit_val_batches=budget.get("limit_val_batches"),
            distributed=True,
        )
        t0 = time.perf_counter()
        if resume.ckpt_path:
            tr.log_text(resume.ckpt_path, "resumed_from.txt")
        trainer.fit(module, train, val, ckpt_path=resume.ckpt_path, weights_only=True)
        seconds = time.perf_counter() - t0
        if not trainer.is_global_zero:  # a DDP fit's extra ranks re-run this stage: rank 0 writes
            return {}
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
            # How it was trained: continued pre-training (DAPT) and perplexity reuse this config.
            "objective_cfg": OmegaConf.to_container(ocfg, resolve=True),
        }
        save_backbone(out / "backbone.pt", module.backbone, arch, meta)
        metrics = {
            "objective": objective,
            "fit_seconds": round(seconds, 2),
            "history": history.epochs,
            **final,
        }
        write_json(out / "metrics.json", metrics)
        resume.done()
        tr.log_metrics({**final, "fit_seconds": seconds})
        tr.log_artifact(out / "backbone.pt", "checkpoints")
        tr.log_artifact(out / "metrics.json")
    return metrics
