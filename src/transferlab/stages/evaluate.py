"""Stage ``evaluate``: test every fine-tuned classifier with torchmetrics and report the gain.

Per target and variant: accuracy, macro-F1, NLL, expected calibration error (ECE, ``ece_bins``
equal-width confidence bins, L1), the train/val/test loss and the generalisation gap
``gen_gap = test/loss − train/loss``; per target, ``gain = acc(pretrained) − acc(scratch)`` where
``pretrained`` is the primary objective (``objective`` in params.yaml). ``*/loss`` is the fine-tuning
criterion (cross-entropy with ``finetune.label_smoothing``); ``test/nll`` is plain cross-entropy.

The text route (:func:`transferlab.stages.text.evaluate_entry`) adds the perplexity of every
pre-trained language model on each target's held-out text (``test/ppl``) and reports its
unlabelled targets by perplexity only (``gain`` null); its primary objective is
``pretrain.text.primary``.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from transferlab.config import primary_objective
from transferlab.io import write_json
from transferlab.stages.common import route_dirs
from transferlab.stages.finetune import variants
from transferlab.tracking import StageRun


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    from transferlab.data.loaders import to_float

    model.eval()
    return torch.cat([model(to_float(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])


def classification_metrics(
    logits: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    ece_bins: int = 15,
    label_smoothing: float = 0.0,
) -> dict[str, float]:
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_calibration_error,
        multiclass_f1_score,
    )

    from transferlab.objectives.losses import supervised_ce

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
    cfg: DictConfig,
    route: str,
    target: str,
    partner: str | None,
    confusion: dict[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of every variant (and WiSE-FT mixes) on one target; confusion matrices of the
    primary and scratch models are added to ``confusion`` when given."""
    from transferlab.data.loaders import load_dataset
    from transferlab.models.checkpoint import load_classifier

    dirs = route_dirs(cfg, route)
    data = load_dataset(dirs["data"] / "targets" / f"{target}.pt")
    ood = load_dataset(dirs["data"] / "targets" / f"{partner}.pt") if partner else None
    k = len(data["classes"])
    ls = float(cfg.finetune.get("label_smoothing", 0.0))
    bins = int(cfg.evaluate.get("ece_bins", 15))
    rows: dict[str, dict[str, float]] = {}
    models: dict[str, Any] = {}

    def score(model: Any) -> dict[str, float]:
        logits = {s: predict(model, data[s]["x"]) for s in ("train", "val", "test")}
        m = {s: classification_metrics(logits[s], data[s]["y"], k, bins, ls) for s in logits}
        row = metric_row(m)
        if ood is not None:
            row["ood/acc"] = classification_metrics(
                predict(model, ood["test"]["x"]), ood["test"]["y"], k, bins, ls
            )["acc"]
        return {key: round(v, 6) for key, v in row.items()}

    for variant in variants(cfg, route):
        models[variant], _ = load_classifier(dirs["finetune"] / variant / f"{target}.pt")
        rows[variant] = score(models[variant])
    # WiSE-FT between the linear probe (pre-trained backbone, trained head: alpha = 0) and the
    # fully fine-tuned model (alpha = 1).
    primary = primary_objective(cfg, route)
    lp, ft = models.get(f"{primary}/linear_probe"), models.get(primary)
    if lp is not None and ft is not None:
        import copy

        from transferlab.finetune.wise import interpolate_state_dicts

        for alpha in cfg.finetune.get("wise_alphas") or []:
            mix = copy.deepcopy(ft)
            mix.load_state_dict(
                interpolate_state_dicts(lp.state_dict(), ft.state_dict(), float(alpha))
            )
            rows[f"{primary}/wise_{float(alpha):g}"] = score(mix)
    if confusion is not None:
        from torchmetrics.functional.classification import multiclass_confusion_matrix

        for variant in (primary, "scratch"):
            logits = predict(models[variant], data["test"]["x"])
            mat = multiclass_confusion_matrix(logits, data["test"]["y"], num_classes=k)
            confusion[f"{target}/{variant}"] = (mat.tolist(), list(data["classes"]))
    return rows


def run(cfg: DictConfig) -> dict[str, Any]:
    import json

    from transferlab.plots import accuracy_bars, learning_curves

    route = str(cfg.route)
    dirs = route_dirs(cfg, route)
    targets = list(map(str, cfg.data[route].targets))
    primary = primary_objective(cfg, route)
    manifest = json.loads(dirs["manifest"].read_text()) if dirs["manifest"].exists() else {}
    partners = manifest.get("ood_partner", {})
    report: dict[str, Any] = {"route": route, "primary_objective": primary, "targets": {}}
    bars: dict[str, dict[str, float]] = {}
    plot_rows: list[dict[str, Any]] = []
    confusion: dict[str, Any] = {}
    with StageRun(
        cfg,
        "evaluate",
        tags={"route": route, "run_name": f"evaluate:{route}"},
        manifest=dirs["manifest"],
    ) as tr:
        for target in targets:
            if route == "text":
                from transferlab.stages.text import evaluate_entry

                entry, rows = evaluate_entry(cfg, target)
            else:
                rows = evaluate_target(cfg, route, target, partners.get(target), confusion)
                entry = {"pretrained": rows[primary], "scratch": rows["scratch"]}
                entry.update({v: r for v, r in rows.items() if v not in ("scratch",)})
                entry["gain"] = round(rows[primary]["test/acc"] - rows["scratch"]["test/acc"], 6)
                entry["gains"] = {
                    v: round(r["test/acc"] - rows["scratch"]["test/acc"], 6)
                    for v, r in rows.items()
                    if v != "scratch"
                }
            report["targets"][target] = entry
            tr.log_metrics(
                {f"{target}/{v}/{k}": val for v, r in rows.items() for k, val in r.items()}
            )
            if entry["gain"] is None:  # an unlabelled target (text route): perplexity only
                continue
            bars[target] = {v: r["test/acc"] for v, r in rows.items()}
            plot_rows += [
                {"run": f"{target}/{v}", "test_acc": r["test/acc"]} for v, r in rows.items()
            ]
            tr.log_metrics({f"{target}/gain": entry["gain"]})
        out = dirs["reports"]
        write_json(out / "evaluate.json", report)
        write_json(out / "plots" / "accuracy.json", plot_rows)
        accuracy_bars(bars, out / "plots" / "accuracy.png", f"{route}: test accuracy per target")
        history_path = dirs["finetune"] / "history.json"
        if history_path.exists():
            learning_curves(
                json.loads(history_path.read_text())["targets"],
                out / "plots" / "learning_curves.png",
            )
        if confusion:
            from transferlab.plots import confusion_grid

            confusion_grid(
                confusion, out / "plots" / "confusion.png", f"{route}: test confusion matrices"
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
