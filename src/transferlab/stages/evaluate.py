"""Stage ``evaluate``: test every fine-tuned classifier with torchmetrics and report the gains.

Per target and variant: accuracy, macro-F1, NLL, expected calibration error (ECE, ``ece_bins``
equal-width confidence bins, L1), the train/val/test loss and the generalisation gap
``gen_gap = test/loss − train/loss``; ``ood/acc`` on the target's OOD partner when the data stage
named one; the route's extra rows (text: perplexity). WiSE-FT mixes ``<primary>/wise_<α>`` between
the primary's linear probe and its full fine-tune are scored like variants. Per target,
``gain = acc(pretrained) − acc(scratch)`` (``pretrained``: the route's primary objective) and
``gains[v] = acc(v) − acc(v's scratch control)``. ``*/loss`` is the fine-tuning criterion
(cross-entropy with ``finetune.label_smoothing``); ``test/nll`` is plain cross-entropy.
Targets without classes are reported by the route (text: perplexity only, ``gain`` null).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import DictConfig
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

from transferlab.io import write_json
from transferlab.models.checkpoint import load_classifier
from transferlab.objectives.losses import supervised_ce
from transferlab.plots import accuracy_bars, confusion_grid, learning_curves
from transferlab.routes import Route, get_route
from transferlab.routes.base import wise_mix
from transferlab.stages.context import Runtime
from transferlab.study import Variant, variants


def classification_metrics(
    logits: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    ece_bins: int = 15,
    label_smoothing: float = 0.0,
) -> dict[str, float]:
    return {
        "acc": float(multiclass_accuracy(logits, y, num_classes=num_classes, average="micro")),
        "f1_macro": float(multiclass_f1_score(logits, y, num_classes=num_classes, average="macro")),
        "nll": float(supervised_ce(logits, y)),
        "ece": float(
            multiclass_calibration_error(
                logits.softmax(-1), y, num_classes=num_classes, n_bins=ece_bins, norm="l1"
            )
        ),
        "loss": float(supervised_ce(logits, y, label_smoothing)),
    }


def metric_row(m: dict[str, dict[str, float]]) -> dict[str, float]:
    """The report row of one model from its per-split metrics (``gen_gap = test/loss − train/loss``)."""
    return {
        "test/acc": m["test"]["acc"],
        "test/f1_macro": m["test"]["f1_macro"],
        "test/nll": m["test"]["nll"],
        "test/ece": m["test"]["ece"],
        "train/loss": m["train"]["loss"],
        "val/loss": m["val"]["loss"],
        "test/loss": m["test"]["loss"],
        "gen_gap": m["test"]["loss"] - m["train"]["loss"],
        "train/acc": m["train"]["acc"],
        "val/acc": m["val"]["acc"],
    }


def evaluate_target(
    route: Route,
    arms: Sequence[Variant],
    target: str,
    data: Mapping[str, Any],
    ood: Mapping[str, Any] | None,
    confusion: dict[str, Any],
) -> dict[str, dict[str, float]]:
    """Rows of every variant (and WiSE-FT mix) on one labelled target; the confusion matrices of
    the primary and scratch models go into ``confusion``."""
    cfg = route.cfg
    k = len(data["classes"])
    ls = float(cfg.finetune.label_smoothing)
    bins = int(cfg.evaluate.ece_bins)
    extra = route.extra_rows(target, data)

    def logits(model: Any, split: Mapping[str, Any]) -> torch.Tensor:
        return route.predict(model, route.inputs(model.backbone, split))

    def score(model: Any, name: str) -> dict[str, float]:
        m = {
            s: classification_metrics(logits(model, data[s]), data[s]["y"], k, bins, ls)
            for s in ("train", "val", "test")
        }
        row = {**metric_row(m), **extra.get(name, {})}
        if ood is not None:
            out = logits(model, ood["test"])
            row["ood/acc"] = classification_metrics(out, ood["test"]["y"], k, bins, ls)["acc"]
        return {key: round(v, 6) for key, v in row.items()}

    rows: dict[str, dict[str, float]] = {}
    models: dict[str, Any] = {}
    for v in arms:
        models[v.name], _ = load_classifier(route.dirs["finetune"] / v.name / f"{target}.pt")
        rows[v.name] = score(models[v.name], v.name)
    # WiSE-FT between the linear probe (pre-trained backbone, trained head: alpha = 0) and the
    # fully fine-tuned model (alpha = 1).
    primary = route.primary()
    lp, ft = models.get(f"{primary}/linear_probe"), models.get(primary)
    if lp is not None and ft is not None:
        for alpha in cfg.finetune.wise_alphas or []:
            name = f"{primary}/wise_{float(alpha):g}"
            rows[name] = score(wise_mix(lp, ft, float(alpha)), name)
    for name in (primary, "scratch"):
        out = logits(models[name], data["test"])
        mat = multiclass_confusion_matrix(out, data["test"]["y"], num_classes=k)
        confusion[f"{target}/{name}"] = (mat.tolist(), list(data["classes"]))
    return rows


def target_entry(
    route: Route, arms: Sequence[Variant], rows: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """A labelled target's report entry: the rows, ``gain`` and ``gains`` (each variant against
    the scratch control of its own architecture; WiSE-FT mixes against the primary's)."""
    controls = {v.name: v.control for v in arms}
    primary = route.primary()
    acc = {v: r["test/acc"] for v, r in rows.items()}
    entry: dict[str, Any] = {
        "task": "classification",
        "pretrained": rows[primary],
        "scratch": rows["scratch"],
    }
    entry.update({v: r for v, r in rows.items() if v != "scratch"})
    entry["gain"] = round(acc[primary] - acc["scratch"], 6)
    entry["gains"] = {
        v: round(acc[v] - acc[str(controls.get(v, controls[primary]))], 6)
        for v in rows
        if v not in controls or controls[v] is not None
    }
    return entry


def run(cfg: DictConfig, rt: Runtime) -> dict[str, Any]:
    route = get_route(cfg)
    arms = variants(cfg, route)
    partners = route.manifest().get("ood_partner", {})
    primary = route.primary()
    report: dict[str, Any] = {"route": route.name, "primary_objective": primary, "targets": {}}
    bars: dict[str, dict[str, float]] = {}
    plot_rows: list[dict[str, Any]] = []
    confusion: dict[str, Any] = {}
    tags = {"route": route.name, "run_name": f"evaluate:{route.name}"}
    with rt.track("evaluate", tags, route.dirs["manifest"]) as tr:
        for target in route.targets():
            data = route.target_data(target)
            if not route.labelled(data):
                entry, rows = route.unlabelled_entry(target, data)
            else:
                partner = partners.get(target)
                ood = route.target_data(partner) if partner else None
                rows = evaluate_target(route, arms, target, data, ood, confusion)
                entry = target_entry(route, arms, rows)
            report["targets"][target] = entry
            tr.log_metrics(
                {f"{target}/{v}/{k}": val for v, r in rows.items() for k, val in r.items()}
            )
            if entry["gain"] is None:  # an unlabelled target: perplexity only
                continue
            bars[target] = {v: r["test/acc"] for v, r in rows.items()}
            plot_rows += [
                {"run": f"{target}/{v}", "test_acc": r["test/acc"]} for v, r in rows.items()
            ]
            tr.log_metrics({f"{target}/gain": entry["gain"]})
        out = route.dirs["reports"]
        write_json(out / "evaluate.json", report)
        write_json(out / "plots" / "accuracy.json", plot_rows)
        accuracy_bars(
            bars, out / "plots" / "accuracy.png", f"{route.name}: test accuracy per target"
        )
        history_path = route.dirs["finetune"] / "history.json"
        if history_path.exists():
            learning_curves(
                json.loads(history_path.read_text())["targets"],
                out / "plots" / "learning_curves.png",
            )
        if confusion:
            confusion_grid(
                confusion,
                out / "plots" / "confusion.png",
                f"{route.name}: test confusion matrices",
            )
            write_json(
                out / "confusion.json",
                {k: {"classes": c, "matrix": m} for k, (m, c) in confusion.items()},
            )
        for name in (
            "evaluate.json",
            "plots/accuracy.png",
            "plots/learning_curves.png",
            "plots/confusion.png",
        ):
            tr.log_artifact(out / name, "reports")
    return report
