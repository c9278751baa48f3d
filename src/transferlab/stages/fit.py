"""One fine-tuning fit (:class:`~transferlab.study.Fit`): the code finetune, curves and the sweep
trial all run, through one executor (:mod:`transferlab.pool`).

The classifier is the variant's starting backbone (:meth:`Route.backbone`) with a linear head;
seeding happens before each model is built, so every variant of a target starts its head from the
same weights, sees the same batches in the same order and gets the same budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from omegaconf import DictConfig

from transferlab.callbacks import History
from transferlab.finetune.freezing import FreezeSchedule
from transferlab.finetune.module import FinetuneModule
from transferlab.models.cnn import Classifier
from transferlab.resume import EpochSeed, Resume
from transferlab.routes import Route
from transferlab.study import Fit
from transferlab.training import make_trainer, seed_all

#: finetune.strategy → the FreezeSchedule mode that runs it.
STRATEGY_MODES = {"full": "fixed", "linear_probe": "fixed", "lp_ft": "lp_ft", "gradual": "gradual"}


def nested_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of the first ``n`` examples of each class in a seeded per-class permutation
    (so the 5-shot set contains the 2-shot set)."""
    g = torch.Generator().manual_seed(int(seed))
    picks = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)][:n])
    return torch.sort(torch.cat(picks)).values


def subset_split(split: Mapping[str, Any], idx: torch.Tensor) -> dict[str, Any]:
    """The rows ``idx`` of every per-example field of a split (tensors, and lists such as raw texts)."""
    n = len(split["y"])
    rows = idx.tolist()
    out: dict[str, Any] = {}
    for key, value in split.items():
        if torch.is_tensor(value) and value.ndim > 0 and len(value) == n:
            out[key] = value[idx]
        elif isinstance(value, list | tuple) and len(value) == n:
            out[key] = [value[i] for i in rows]
        else:
            out[key] = value
    return out


def freeze_schedule(hp: Mapping[str, Any], num_blocks: int) -> Callback:
    """The freezing callback of ``finetune.strategy`` (``linear_probe``: every block frozen)."""
    strategy = str(hp["strategy"])
    depth = num_blocks if strategy == "linear_probe" else int(hp["freeze_depth"])
    return FreezeSchedule(
        mode=STRATEGY_MODES[strategy],
        freeze_depth=depth,
        lp_epochs=int(hp["lp_epochs"]),
        unfreeze_every=int(hp["unfreeze_every"]),
        lr_factor=float(hp["lp_ft_lr_factor"]),
        freeze_norm_stats=bool(hp["freeze_norm_stats"]),
    )


def train_data(fit: Fit, data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The target's data with the fit's training subset (``fit.shots`` per class)."""
    if fit.shots is None:
        return data
    idx = nested_subset(data["train"]["y"], fit.shots, fit.seed)
    return {**data, "train": subset_split(data["train"], idx)}


def run_fit(
    fit: Fit,
    route: Route,
    data: Mapping[str, Any],
    trainer_cfg: DictConfig | Mapping[str, Any],
    logger: Any = False,
    callbacks: Sequence[Callback] = (),
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Fine-tune ``fit`` and return the trained classifier with its epoch history.

    ``callbacks`` are added to the trainer (e.g. an Optuna pruning callback in sweeps); a fit
    with extra callbacks does not resume from a checkpoint of an earlier run.
    """
    hp = fit.hparams
    data = train_data(fit, data)
    seed_all(fit.seed)
    backbone = route.backbone(fit.variant.init, adapted=fit.adapted)
    if route.reseed_head:
        seed_all(fit.seed)  # the head starts from the same weights whatever the backbone
    x = {s: route.inputs(backbone, data[s]) for s in ("train", "val")}
    num_classes = len(data["classes"])
    model = Classifier(backbone, num_classes, head_dropout=float(hp["head_dropout"]))
    train = route.loader(
        x["train"],
        data["train"]["y"],
        batch_size=int(hp["batch_size"]),
        shuffle=True,
        seed=fit.seed,
    )
    val = route.loader(x["val"], data["val"]["y"], batch_size=512, shuffle=False)
    steps = math.ceil(len(train.dataset) / train.batch_size) * int(hp["max_epochs"])
    aligned = str(hp["alignment"]["kind"]) != "none"
    module = FinetuneModule(
        model,
        num_classes,
        lr=float(hp["lr"]),
        weight_decay=float(hp["weight_decay"]),
        optimizer=str(hp["optimizer"]),
        schedule=str(hp["schedule"]),
        schedule_kwargs=dict(hp.get("schedule_kwargs") or {}),
        label_smoothing=float(hp["label_smoothing"]),
        total_steps=steps,
        layerwise_decay=hp["layerwise_decay"],
        regularizer=hp["regularizer"],
        multitask=route_multitask(hp["multitask"], route),
        alignment=hp["alignment"],
        source_x=route.source_inputs(backbone) if aligned else None,
        seed=fit.seed,
    )
    history = History()
    extra: list[Callback] = [freeze_schedule(hp, backbone.num_blocks)]
    patience = int(hp["early_stopping_patience"] or 0)
    if patience > 0:
        extra.append(EarlyStopping(monitor="val/acc", mode="max", patience=patience))
    resume = Resume(
        f"finetune-{fit.name.replace(':', '-').replace('/', '-')}",
        {
            "fit": repr(fit),
            "trainer": dict(trainer_cfg),
            "train_y": data["train"]["y"].tolist(),
        },
        enabled=bool(trainer_cfg.get("resume", True)) and not callbacks,
    )
    trainer = make_trainer(
        trainer_cfg,
        max_epochs=int(hp["max_epochs"]),
        logger=logger,
        callbacks=[history, *extra, EpochSeed(fit.seed), *resume.callbacks(), *callbacks],
    )
    trainer.fit(module, train, val, ckpt_path=resume.ckpt_path, weights_only=True)
    resume.done()
    return model, history.epochs


def route_multitask(mt: Mapping[str, Any], route: Route) -> dict[str, Any]:
    """``finetune.multitask`` with ``aux`` (tasks and weights) read as the route's own task."""

    def name(t: Any) -> str:
        return route.aux_task if str(t) == "aux" else str(t)

    weights = {name(k): v for k, v in dict(mt.get("weights") or {}).items()}
    return {**mt, "tasks": [name(t) for t in mt["tasks"]], "weights": weights}
