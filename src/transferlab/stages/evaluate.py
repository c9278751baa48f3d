"""Stage ``evaluate``: test every fine-tuned classifier, seed by seed, and report means, intervals
and paired gains (the study protocol: docs/protocol.md).

Per target, variant and seed of ``study.seeds``: accuracy, macro-F1, NLL, expected calibration
error (ECE, ``ece_bins`` equal-width confidence bins, L1), the train/val/test loss (train: that
seed's few-shot draw) and ``gen_gap = test/loss − train/loss``; ``ood/acc`` on the target's OOD
partner when the data stage named one; the route's extra rows (text: perplexity). WiSE-FT mixes
``<primary>/wise_<α>`` between the primary's linear probe and its LP-FT (fine-tuned from that
probe's head) are scored like variants. Each report row holds the seed means, their Student-t
interval (``ci``), the per-seed values, the selected rate and the failed seeds. Per target,
``gain`` is the paired mean of ``acc(pretrained) − acc(scratch)`` over seeds with its interval
(``pretrained``: the route's primary objective), ``gains[v]`` the same for every variant against
its control. ``*/loss`` is the fine-tuning criterion (cross-entropy with
``finetune.label_smoothing``); ``test/nll`` is plain cross-entropy. Targets without classes are
reported by the route (text: perplexity only, ``gain`` null).
"""

from __future__ import annotations

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

from transferlab.io import read_json, write_json
from transferlab.models.checkpoint import load_classifier
from transferlab.objectives.losses import supervised_ce
from transferlab.plots import (
    accuracy_bars,
    confusion_grid,
    gain_plot,
    learning_curves,
    variant_colours,
)
from transferlab.routes import Route, get_route
from transferlab.routes.base import wise_mix
from transferlab.stages.context import Runtime
from transferlab.stages.fit import seed_shots
from transferlab.stats import mean_ci, paired_gain
from transferlab.study import Protocol, Variant, target_arms, variants
from transferlab.training import seed_all


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
    ood: Mapping[str, Mapping[str, Any]],
    confusion: dict[str, Any],
    seeds: Sequence[int],
    cache: dict[Any, Any] | None = None,
) -> dict[str, dict[int, dict[str, float]]]:
    """Per-seed rows of every variant (and WiSE-FT mix) on one labelled target: ``{variant:
    {seed: row}}``, the train metrics on that seed's few-shot draw. The confusion matrices of the
    primary and scratch models (first seed) go into ``confusion``.

    A probe saved without its frozen backbone (a hub model, a random-init twin) gets it rebuilt
    once per seed (``cache``, shared across targets), and its features are computed once per
    backbone and split: every seed's head reads the same test features."""
    cache = {} if cache is None else cache
    cfg = route.cfg
    k = len(data["classes"])
    ls = float(cfg.finetune.label_smoothing)
    bins = int(cfg.evaluate.ece_bins)
    shots = int(cfg.data[route.name].shots_per_class)
    extra = route.extra_rows(target, data)

    def logits(model: Any, split: Mapping[str, Any], key: str) -> torch.Tensor:
        # fast: batched by length (text), equal to in-order batching up to float rounding
        frozen = getattr(model, "frozen_checksum", None)
        if frozen is None:
            return route.predict(model, route.inputs(model.backbone, split), fast=True)
        if (frozen, key) not in cache:
            x = route.inputs(model.backbone, split)
            cache[(frozen, key)] = route.predict(model.backbone, x, fast=True)
        with torch.no_grad():
            return model.head(cache[(frozen, key)])

    def rebuild(init: Any) -> Any:
        def build(seed: int) -> Any:
            if (init, seed) not in cache:
                seed_all(seed)  # as the fit built it (stages.fit.run_probe)
                cache[(init, seed)] = route.backbone(init)
            return cache[(init, seed)]

        return build

    def score(model: Any, name: str, splits: Mapping[str, Any], seed: int) -> dict[str, float]:
        m = {
            s: classification_metrics(
                logits(model, split, f"{target}/{s}" + (f"/{seed}" if s == "train" else "")),
                split["y"],
                k,
                bins,
                ls,
            )
            for s, split in splits.items()
        }
        row = {**metric_row(m), **extra.get(name, {})}
        for i, (partner, pdata) in enumerate(ood.items()):
            out = logits(model, pdata["test"], f"{partner}/test")
            acc = classification_metrics(out, pdata["test"]["y"], k, bins, ls)["acc"]
            row[f"ood/{partner}/acc"] = acc
            if i == 0:
                row["ood/acc"] = acc
        return {key: round(v, 6) for key, v in row.items()}

    rows: dict[str, dict[int, dict[str, float]]] = {}
    primary = route.primary()
    for seed in seeds:
        splits = {"train": seed_shots(data, shots, seed), "val": data["val"], "test": data["test"]}
        models: dict[str, Any] = {}
        for v in arms:
            path = route.dirs["finetune"] / v.name / target / f"seed{seed}.pt"
            models[v.name], _ = load_classifier(path, rebuild(v.init))
            rows.setdefault(v.name, {})[seed] = score(models[v.name], v.name, splits, seed)
        # WiSE-FT (Wortsman et al. 2022) between the linear probe (pre-trained backbone,
        # logistic-regression head: alpha = 0) and the model fine-tuned end to end from it (LP-FT:
        # alpha = 1), seed by seed. A model fine-tuned from a random head shares no basin with the
        # probe: mixing the two falls to chance.
        lp, ft = models.get(f"{primary}/linear_probe"), models.get(f"{primary}/lp_ft")
        if lp is not None and ft is not None:
            for alpha in cfg.finetune.wise_alphas or []:
                name = f"{primary}/wise_{float(alpha):g}"
                mix = wise_mix(lp, ft, float(alpha))
                rows.setdefault(name, {})[seed] = score(mix, name, splits, seed)
        if seed == seeds[0]:
            for name in (primary, "scratch"):
                out = logits(models[name], data["test"], f"{target}/test")
                mat = multiclass_confusion_matrix(out, data["test"]["y"], num_classes=k)
                confusion[f"{target}/{name}"] = (mat.tolist(), list(data["classes"]))
    return rows


#: Metrics that live in [0, 1]: their intervals are clipped to it.
UNIT_METRICS = frozenset(
    {"test/acc", "train/acc", "val/acc", "ood/acc", "test/f1_macro", "test/ece"}
)


def aggregate(per_seed: Mapping[int, Mapping[str, float]], confidence: float) -> dict[str, Any]:
    """One arm's report row: every metric's seed mean, its t interval (``ci``) and the per-seed
    values (``per_seed``, in seed order)."""
    seeds = list(per_seed)
    metrics = list(per_seed[seeds[0]])
    row: dict[str, Any] = {}
    ci: dict[str, list[float | None]] = {}
    values: dict[str, list[float]] = {}
    for m in metrics:
        vals = [float(per_seed[s][m]) for s in seeds]
        unit = m in UNIT_METRICS or m.startswith("ood/")  # ood/<partner>/acc too
        c = mean_ci(vals, confidence, (0.0, 1.0) if unit else None)
        row[m] = _r(c["mean"])
        ci[m] = [_r(c["lo"]), _r(c["hi"])]
        values[m] = vals
    return {**row, "ci": ci, "per_seed": values}


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def target_entry(
    route: Route,
    arms: Sequence[Variant],
    per_seed: Mapping[str, Mapping[int, Mapping[str, float]]],
    arm_info: Mapping[str, Mapping[str, Any]],
    protocol: Protocol,
) -> dict[str, Any]:
    """A labelled target's report entry: per variant the seed-mean row with its intervals, the
    selected learning rate and the seeds whose fit failed; ``gain`` (primary − scratch) and
    ``gains`` (each variant − its control: the scratch of its architecture, for a probe the
    random-init probe; WiSE-FT mixes against the primary's scratch) as paired means over seeds,
    with ``gain_ci`` / ``gain_intervals`` and whether each is resolved (its interval excludes 0)."""
    controls = {v.name: v.control for v in arms}
    floors = {v.name for v in arms if v.floor}
    primary = route.primary()
    conf = protocol.confidence
    seeds = list(protocol.seeds)
    rows: dict[str, dict[str, Any]] = {}
    for name, by_seed in per_seed.items():
        row = aggregate(by_seed, conf)
        info = arm_info.get(name, {})
        row["lr"] = info.get("lr")
        row["failed_seeds"] = info.get("failed_seeds", [])
        row["underfit_seeds"] = info.get("underfit_seeds", [])
        rows[name] = row
    entry: dict[str, Any] = {
        "task": "classification",
        "seeds": seeds,
        "pretrained": rows[primary],
        "scratch": rows["scratch"],
    }
    entry.update({v: r for v, r in rows.items() if v != "scratch"})

    def acc(name: str) -> list[float]:
        return [float(per_seed[name][s]["test/acc"]) for s in seeds]

    main = paired_gain(acc(primary), acc("scratch"), conf)
    entry["gain"] = _r(main["mean"])
    entry["gain_ci"] = [_r(main["lo"]), _r(main["hi"])]
    entry["gain_resolved"] = main["resolved"]
    gains: dict[str, float | None] = {}
    intervals: dict[str, dict[str, Any]] = {}
    for v in rows:
        if v in floors or (v in controls and controls[v] is None):
            continue
        g = paired_gain(acc(v), acc(str(controls.get(v, controls[primary]))), conf)
        gains[v] = _r(g["mean"])
        intervals[v] = {"lo": _r(g["lo"]), "hi": _r(g["hi"]), "resolved": g["resolved"]}
    entry["gains"] = gains
    entry["gain_intervals"] = intervals
    entry["controls"] = {  # what each gain is measured against
        v: str(controls.get(v, controls[primary])) for v in gains
    }
    entry["failed"] = {v: r["failed_seeds"] for v, r in rows.items() if r["failed_seeds"]}
    entry["underfit"] = {v: r["underfit_seeds"] for v, r in rows.items() if r["underfit_seeds"]}
    return entry


def arm_info(history: Mapping[str, Any], target: str) -> dict[str, dict[str, Any]]:
    """From finetune's history.json: per arm the selected rate and the seeds the finetune stage
    flagged ``failed`` (chance level or diverged) or ``underfit`` (below ``study.fit_threshold``)."""
    out: dict[str, dict[str, Any]] = {}
    for name, arm in (history.get("targets", {}).get(target) or {}).items():
        seeds = arm["seeds"]
        out[name] = {
            "lr": arm.get("lr"),
            "failed_seeds": [int(s) for s, rec in seeds.items() if rec.get("failed")],
            "underfit_seeds": [int(s) for s, rec in seeds.items() if rec.get("underfit")],
        }
    return out


def run(cfg: DictConfig, rt: Runtime) -> dict[str, Any]:
    route = get_route(cfg)
    arms = variants(cfg, route)
    protocol = Protocol.from_cfg(cfg)
    partners = route.ood_partners()
    members = route.family_members()
    primary = route.primary()
    history = read_json(route.dirs["finetune"] / "history.json")
    report: dict[str, Any] = {
        "route": route.name,
        "primary_objective": primary,
        "protocol": {
            **history.get("protocol", {}),
            "interval": f"Student t over seeds, {protocol.confidence:.0%}",
            "gain": "paired per seed (same few-shot draw, head init and data order)",
            "selection": "per arm, the lr_grid rate with the best seed-mean val accuracy",
        },
        "targets": {},
    }
    bars: dict[str, dict[str, tuple[float, float | None, float | None]]] = {}
    gain_bars: dict[str, dict[str, tuple[float, float | None, float | None]]] = {}
    plot_rows: list[dict[str, Any]] = []
    confusion: dict[str, Any] = {}
    cache: dict[Any, Any] = {}  # rebuilt frozen backbones and their features (evaluate_target)
    tags = {"route": route.name, "run_name": f"evaluate:{route.name}"}
    with rt.track("evaluate", tags, route.dirs["manifest"]) as tr:
        for target in route.targets():
            data = route.target_data(target)
            if not route.labelled(data):
                entry, rows = route.unlabelled_entry(target, data)
            else:
                ood = {p: route.target_data(p) for p in partners.get(target, [])}
                on = target_arms(cfg, arms, target in members)
                # the confusion grid shows the named targets, not every step of a shift family
                conf = confusion if target not in members else {}
                per_seed = evaluate_target(
                    route, on, target, data, ood, conf, protocol.seeds, cache
                )
                info = arm_info(history, target)
                entry = target_entry(route, on, per_seed, info, protocol)
                rows = {v: _numbers(entry[v if v != primary else "pretrained"]) for v in per_seed}
            report["targets"][target] = entry
            tr.log_metrics(
                {f"{target}/{v}/{k}": val for v, r in rows.items() for k, val in r.items()}
            )
            if entry["gain"] is None:  # an unlabelled target: perplexity only
                continue
            named = {v: entry[v] if v != primary else entry["pretrained"] for v in rows}
            if target not in members:  # a family's two arms: the shift plot and table show them
                bars[target] = {v: (r["test/acc"], *r["ci"]["test/acc"]) for v, r in named.items()}
                gain_bars[target] = {
                    v: (g, entry["gain_intervals"][v]["lo"], entry["gain_intervals"][v]["hi"])
                    for v, g in entry["gains"].items()
                }
            plot_rows += [
                {
                    "run": f"{target}/{v}",
                    "test_acc": r["test/acc"],
                    "lo": r["ci"]["test/acc"][0],
                    "hi": r["ci"]["test/acc"][1],
                }
                for v, r in named.items()
            ]
            tr.log_metrics(
                {
                    f"{target}/gain": entry["gain"],
                    **{
                        f"{target}/gain_{b}": x
                        for b, x in zip(("lo", "hi"), entry["gain_ci"], strict=True)
                        if x is not None
                    },
                }
            )
            if entry["failed"]:
                tr.set_tags({f"failed.{target}": ",".join(sorted(entry["failed"]))})
            if entry["underfit"]:
                tr.set_tags({f"underfit.{target}": ",".join(sorted(entry["underfit"]))})
        out = route.dirs["reports"]
        write_json(out / "evaluate.json", report)
        write_json(out / "plots" / "accuracy.json", plot_rows)
        n = len(protocol.seeds)
        palette = variant_colours([v for r in bars.values() for v in r])
        accuracy_bars(
            bars,
            out / "plots" / "accuracy.png",
            f"{route.name}: test accuracy, mean and {protocol.confidence:.0%} interval over {n} seeds",
            palette,
        )
        gain_plot(
            gain_bars,
            out / "plots" / "gains.png",
            f"{route.name}: paired gain over the control ({n} seeds); hollow: interval contains 0",
            palette,
        )
        first = str(protocol.seeds[0])
        learning_curves(
            {
                t: {
                    v: {"history": arm["seeds"][first]["history"]}
                    for v, arm in arms_.items()
                    if len(arm["seeds"][first]["history"]) > 1  # probes: no epochs
                }
                for t, arms_ in history["targets"].items()
            },
            out / "plots" / "learning_curves.png",
            f"{route.name}: validation accuracy during fine-tuning (seed {first}, selected rates)",
        )
        if confusion:
            confusion_grid(
                confusion,
                out / "plots" / "confusion.png",
                f"{route.name}: test confusion matrices (seed {protocol.seeds[0]})",
            )
            write_json(
                out / "confusion.json",
                {k: {"classes": c, "matrix": m} for k, (m, c) in confusion.items()},
            )
        for name in (
            "evaluate.json",
            "plots/accuracy.png",
            "plots/gains.png",
            "plots/learning_curves.png",
            "plots/confusion.png",
        ):
            tr.log_artifact(out / name, "reports")
    return report


def _numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics of a report row (its seed means) plus the test accuracy's interval."""
    out = {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    lo, hi = row["ci"]["test/acc"]
    if lo is not None and hi is not None:
        out["test/acc_lo"], out["test/acc_hi"] = lo, hi
    return out
