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
from transferlab.finetune.probe import Probe, fit_probe, recalibrate_batchnorm
from transferlab.models.cnn import Classifier
from transferlab.resume import EpochSeed, Resume
from transferlab.routes import Route
from transferlab.study import Fit
from transferlab.training import make_trainer, seed_all

#: finetune.strategy → the FreezeSchedule mode that runs it.
#: ``linear_probe`` is no SGD fit: :func:`run_probe` fits a logistic regression instead.
#: ``lp_ft`` (Kumar et al. 2022) starts from that probe's head, then trains like ``full``.
STRATEGY_MODES = {"full": "fixed", "lp_ft": "fixed", "gradual": "gradual"}


def is_probe(fit: Fit) -> bool:
    """A fit that is a logistic-regression probe on frozen features (no learning rate)."""
    return str(fit.hparams["strategy"]) == "linear_probe"


def epochs_for(max_steps: int, n_train: int, batch_size: int) -> int:
    """Whole epochs that hold ``max_steps`` optimizer steps (the last one may stop early)."""
    return math.ceil(int(max_steps) / math.ceil(n_train / int(batch_size)))


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


def freeze_schedule(hp: Mapping[str, Any]) -> Callback:
    """The freezing callback of ``finetune.strategy`` (``lp_ft`` freezes like ``full``: its
    linear-probe phase is the logistic-regression head it starts from, see :func:`run_fit`)."""
    strategy = str(hp["strategy"])
    return FreezeSchedule(
        mode=STRATEGY_MODES[strategy],
        freeze_depth=int(hp["freeze_depth"]),
        unfreeze_every=int(hp["unfreeze_every"]),
        lr_factor=float(hp["lp_ft_lr_factor"]),
        freeze_norm_stats=bool(hp["freeze_norm_stats"]),
    )


def seed_shots(data: Mapping[str, Any], shots: int, seed: int) -> dict[str, Any]:
    """The training split of a seed: ``shots`` per class drawn from the target's labelled pool."""
    return subset_split(data["train"], nested_subset(data["train"]["y"], shots, seed))


def train_data(fit: Fit, data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The target's data with the fit's training subset (``fit.shots`` per class)."""
    if fit.shots is None:
        return data
    return {**data, "train": seed_shots(data, fit.shots, fit.seed)}


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
    if is_probe(fit):
        return run_probe(fit, route, data)
    seed_all(fit.seed)
    backbone = route.backbone(fit.variant.init, adapted=fit.adapted)
    if route.reseed_head:
        seed_all(fit.seed)  # the head starts from the same weights whatever the backbone
    x = {s: route.inputs(backbone, data[s]) for s in ("train", "val")}
    num_classes = len(data["classes"])
    model = Classifier(backbone, num_classes, head_dropout=float(hp["head_dropout"]))
    if str(hp["strategy"]) == "lp_ft":  # LP-FT: the linear probe's head, then fine-tune it all
        probe_head(model, route, x, data, hp)
    train = route.loader(
        x["train"],
        data["train"]["y"],
        batch_size=int(hp["batch_size"]),
        shuffle=True,
        seed=fit.seed,
    )
    val = route.loader(x["val"], data["val"]["y"], batch_size=512, shuffle=False)
    steps = int(hp["max_steps"])
    epochs = epochs_for(steps, len(train.dataset), train.batch_size)
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
    every = max(1, epochs // int(hp["val_checks"]))  # validation (and resume checkpoint) interval
    extra: list[Callback] = [freeze_schedule(hp)]
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
        every_n_epochs=every,
    )
    trainer = make_trainer(
        trainer_cfg,
        max_epochs=epochs,
        max_steps=steps,
        check_val_every_n_epoch=every,
        logger=logger,
        callbacks=[history, *extra, EpochSeed(fit.seed), *resume.callbacks(), *callbacks],
    )
    trainer.fit(module, train, val, ckpt_path=resume.ckpt_path, weights_only=True)
    resume.done()
    if bool(hp["precise_bn"]):  # eval-mode statistics of the final weights, not a lagging average
        recalibrate_batchnorm(
            model.backbone, lambda m: route.predict(m, x["train"]), trainable_only=True
        )
    # The final model's accuracies as the report sees them (eval mode: BatchNorm running
    # statistics), whether or not a validation pass fell on the last epoch: the rate selection
    # reads val/acc_eval, the failed-fit flag train/acc_eval.
    final = {
        "epoch": int(trainer.current_epoch),
        "step": int(trainer.global_step),
        "train/acc_eval": accuracy(route, model, x["train"], data["train"]["y"]),
        "val/acc_eval": accuracy(route, model, x["val"], data["val"]["y"]),
    }
    epochs_out = [dict(r) for r in history.epochs]
    if epochs_out and epochs_out[-1]["step"] == final["step"]:
        epochs_out[-1].update(final)
    else:  # the last epoch had no validation pass: its final accuracy closes the curve
        epochs_out.append({**final, "val/acc": final["val/acc_eval"]})
    return model, epochs_out


def accuracy(route: Route, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Eval-mode accuracy of ``model`` on ``(x, y)``."""
    out = route.predict(model, x)
    return float((out.argmax(-1) == y).float().mean())


def probe_head(
    model: Classifier,
    route: Route,
    x: Mapping[str, torch.Tensor],
    data: Mapping[str, Any],
    hp: Mapping[str, Any],
) -> Probe:
    """Fit the linear probe of ``model``'s backbone (its BatchNorm statistics re-estimated on the
    training inputs, features standardised, a logistic regression with C chosen on val:
    :func:`~transferlab.finetune.probe.fit_probe`) and set it as ``model``'s head. ``x``: the
    backbone's inputs of the train and val splits of ``data``."""
    backbone = model.backbone
    recalibrate_batchnorm(backbone, lambda m: route.predict(m, x["train"]))
    feats = {s: route.predict(backbone, x[s]).double().numpy() for s in ("train", "val")}
    probe = fit_probe(
        feats["train"],
        data["train"]["y"].numpy(),
        feats["val"],
        data["val"]["y"].numpy(),
        [float(c) for c in hp["probe_cs"]],
        len(data["classes"]),
    )
    with torch.no_grad():
        model.head.weight.copy_(probe.weight)
        model.head.bias.copy_(probe.bias)
    return probe


def rebuildable(fit: Fit, backbone: torch.nn.Module) -> bool:
    """Whether a probe's frozen backbone is rebuilt exactly by ``seed_all(fit.seed)`` and
    :meth:`Route.backbone` (a hub model's own weights or a seeded random init), so its checkpoint
    can leave the weights out: nothing re-estimated on the fit's data (no BatchNorm) and no
    pre-trained file behind it."""
    if fit.adapted is not None or fit.variant.init.kind not in ("hub", "scratch", "raw"):
        return False
    return not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in backbone.modules())


def run_probe(
    fit: Fit, route: Route, data: Mapping[str, Any]
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """The ``linear_probe`` fit: the frozen backbone with the probe's head (:func:`probe_head`),
    no SGD. Its one history row holds the train/val accuracy and the selected C."""
    hp = fit.hparams
    seed_all(fit.seed)
    backbone = route.backbone(fit.variant.init, adapted=fit.adapted)
    model = Classifier(backbone, len(data["classes"]), head_dropout=float(hp["head_dropout"]))
    x = {s: route.inputs(backbone, data[s]) for s in ("train", "val")}
    probe = probe_head(model, route, x, data, hp)
    for p in backbone.parameters():
        p.requires_grad_(False)
    if rebuildable(fit, backbone):  # saved as head + seed (models.checkpoint.classifier_state)
        model.frozen_seed = fit.seed  # type: ignore[assignment]
    row = {
        "epoch": 0,
        "step": 0,
        "train/acc": probe.train_acc,
        "val/acc": probe.val_acc,
        "val/acc_eval": probe.val_acc,
        "probe/C": probe.C,
        "train/acc_eval": accuracy(route, model, x["train"], data["train"]["y"]),
    }
    return model, [row]


def route_multitask(mt: Mapping[str, Any], route: Route) -> dict[str, Any]:
    """``finetune.multitask`` with ``aux`` (tasks and weights) read as the route's own task."""

    def name(t: Any) -> str:
        return route.aux_task if str(t) == "aux" else str(t)

    weights = {name(k): v for k, v in dict(mt.get("weights") or {}).items()}
    return {**mt, "tasks": [name(t) for t in mt["tasks"]], "weights": weights}
