"""Stage ``shift-analysis``: how far each target is from the source, and whether that predicts gain.

Input space: the route's measures (images: pixel-intensity histogram KL and JS; text: token-unigram
KL and JS and the top-k vocabulary overlap; :meth:`Route.input_measures`). Feature space: the
primary objective's backbone features of source and target inputs, compared by Gaussian-fit KL,
k-NN KL, RBF MMD and the proxy A-distance (:func:`transferlab.shift.measures.feature_measures`).
With ``shift.<route>.n_boot > 0`` the cheap measures get 95 % percentile-bootstrap intervals
(``ci``), resampling whole inputs (images, LM blocks). Every measure is correlated (Spearman and
Pearson) with the gain from ``evaluate.json`` across the labelled targets.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig
from threadpoolctl import threadpool_limits

from transferlab.errors import DataSourceError
from transferlab.io import write_json
from transferlab.models.checkpoint import load_backbone
from transferlab.plots import kl_vs_gain, measures_vs_gain
from transferlab.routes import get_route
from transferlab.shift import estimators as est
from transferlab.shift import measures
from transferlab.stages.context import Runtime


def run(cfg: DictConfig, rt: Runtime) -> dict[str, Any]:
    route = get_route(cfg)
    scfg = cfg.shift[route.name]
    dirs = route.dirs
    ev_path = dirs["reports"] / "evaluate.json"
    if not ev_path.exists():
        raise DataSourceError(f"{ev_path} is missing: run the evaluate stage first (dvc repro)")
    evaluation = json.loads(ev_path.read_text())
    primary = route.primary()
    n_max, eps = int(scfg.max_samples), float(scfg.feature_eps)
    knn_k, n_boot, seed = int(scfg.knn_k), int(scfg.n_boot), int(cfg.seed)
    # Small dense algebra (64-d covariances, logistic regression): one BLAS thread is fastest, and
    # a multi-threaded BLAS on busy cores is 10-40x slower. threadpoolctl limits the libraries
    # loaded when it is entered, so load scipy's and scikit-learn's own BLAS/OpenMP first.
    for module in ("scipy.optimize", "scipy.spatial", "sklearn.linear_model"):
        importlib.import_module(module)
    tags = {"route": route.name, "run_name": f"shift:{route.name}"}
    with (
        rt.track("shift-analysis", tags, dirs["manifest"]) as tr,
        threadpool_limits(limits=1, user_api="blas"),
    ):
        backbone, _ = load_backbone(route.pretrained_path(primary))
        src = route.shift_side(route.source_data(), n_max, seed)
        f_src = route.features(backbone, src.feature_x)
        rows: dict[str, dict[str, Any]] = {}
        for target in route.targets():
            tgt = route.shift_side(route.target_data(target), n_max, seed)
            f_tgt = route.features(backbone, tgt.feature_x)
            entry = evaluation["targets"][target]
            values = {
                **route.input_measures(src, tgt),
                **measures.feature_measures(f_src, f_tgt, seed=seed, eps=eps, knn_k=knn_k),
                **route.extra_measures(entry),
            }
            row: dict[str, Any] = {
                m: measures.finite_or_none(values[m]) for m in route.shift_measures
            }
            if n_boot > 0:
                row["ci"] = {
                    **route.input_ci(src, tgt, n_boot, seed),
                    **measures.bootstrap(
                        {"kl_feature": lambda a, b: est.gaussian_kl(a, b, eps=eps)},
                        f_src,
                        f_tgt,
                        n_boot=n_boot,
                        seed=seed,
                        max_n=None,
                    ),
                }
            row["n_target"] = tgt.n
            row["gain"] = entry.get("gain")
            row["gain_ci"] = entry.get("gain_ci")  # paired t interval over seeds (evaluate)
            row["gain_per_seed"] = _gain_per_seed(entry)
            rows[target] = row
        labelled = [t for t in rows if rows[t]["gain"] is not None]
        conf = float(cfg.study.confidence)
        # gain null: left out; intervals: bootstrap over targets and seeds
        corr = measures.correlation_table(
            rows,
            list(route.shift_measures),
            n_boot=int(scfg.n_corr_boot),
            seed=seed,
            confidence=conf,
        )
        families = {
            name: {**fam, **_along(fam, rows, n_boot=int(scfg.n_corr_boot), seed=seed, conf=conf)}
            for name, fam in route.families().items()
        }
        report = {
            "route": route.name,
            "source": str(cfg.data[route.name].source),
            "estimators": route.estimators(primary),
            "n_source": src.n,
            "n_boot": n_boot,
            "targets": rows,
            "correlated_targets": labelled,
            "correlations": corr,
            "correlation_interval": (
                f"{conf:.0%} percentile bootstrap over targets and, within each, seeds "
                f"({int(scfg.n_corr_boot)} replicates)"
            ),
            "families": families,
            "spearman_kl_gain": corr["kl_input"]["spearman"],
            "spearman_kl_feature_gain": corr["kl_feature"]["spearman"],
            **route.extra_report(rows),
        }
        out = dirs["reports"]
        write_json(out / "shift.json", report)
        # the plot's data, for `dvc plots show/diff` (one row per labelled target)
        write_json(
            out / "plots" / "kl_vs_gain.json",
            [
                {"target": t, "kl_input": rows[t]["kl_input"], "gain": rows[t]["gain"]}
                for t in labelled
            ],
        )
        kl_vs_gain(
            labelled,
            [rows[t]["kl_input"] for t in labelled],
            [rows[t]["gain"] for t in labelled],
            out / "plots" / "kl_vs_gain.png",
            route.kl_label,
            f"{route.name}: shift vs transfer gain\n"
            + ("horizontal: 95% bootstrap CI of the shift; " if n_boot > 0 else "")
            + "vertical: t interval of the paired gain over seeds"
            + ("; line: the graded shift family" if families else ""),
            kl_err=[tuple(rows[t]["ci"]["kl_input"]) for t in labelled] if n_boot > 0 else None,
            gain_err=[rows[t].get("gain_ci") for t in labelled],
            families=families,
            feature=(
                f"D_KL, Gaussian fit of the '{primary}' backbone's features [nats]",
                [rows[t].get("kl_feature") for t in labelled],
                [(rows[t].get("ci") or {}).get("kl_feature") for t in labelled]
                if n_boot > 0
                else None,
            ),
        )
        measures_vs_gain(
            {t: rows[t] for t in labelled},
            list(route.shift_measures),
            out / "plots" / "shift_vs_gain.png",
            f"{route.name}: every shift measure vs transfer gain (labelled targets)",
            correlations=corr,
        )
        tr.log_metrics(
            {
                f"{t}/{m}": r[m]
                for t, r in rows.items()
                for m in route.shift_measures
                if r.get(m) is not None
            }
        )
        for name in ("shift.json", "plots/kl_vs_gain.png", "plots/shift_vs_gain.png"):
            tr.log_artifact(out / name, "reports")
    return report


def _gain_per_seed(entry: Mapping[str, Any]) -> list[float] | None:
    """The primary's paired gains over scratch, seed by seed (None: an unlabelled target)."""
    if entry.get("gain") is None:
        return None
    pre, scr = entry["pretrained"]["per_seed"]["test/acc"], entry["scratch"]["per_seed"]["test/acc"]
    return [round(float(a) - float(b), 6) for a, b in zip(pre, scr, strict=True)]


def _along(
    fam: Mapping[str, Any],
    rows: Mapping[str, Mapping[str, Any]],
    n_boot: int,
    seed: int,
    conf: float,
) -> dict[str, Any]:
    """How the gain moves along a graded family: per member its severity and gain, and the
    Spearman correlation of severity with gain (bootstrap interval over members and seeds)."""
    names = [t for t in fam["targets"] if t in rows and rows[t].get("gain") is not None]
    sev = dict(zip(fam["targets"], fam["severities"], strict=True))
    members = {t: {"severity": sev[t], **rows[t]} for t in names}
    corr = measures.correlation_table(members, ["severity"], n_boot, seed, conf)
    return {
        "gains": {t: rows[t]["gain"] for t in names},
        "gain_intervals": {t: rows[t].get("gain_ci") for t in names},
        "severity_gain": corr["severity"],
    }
