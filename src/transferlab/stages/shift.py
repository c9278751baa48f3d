"""Stage ``shift-analysis``: how far each target is from the source, and whether that predicts gain.

Input space: ``D_KL(P_source || P_target)`` between pixel-intensity histograms (``bins`` equal bins
on [0, 1], add-``alpha`` smoothing so that no bin is empty and the KL stays finite; estimator
:func:`transferlab.shift.estimators.histogram_kl`). Feature space: the Gaussian-fit KL between the
primary objective's backbone features of source and target images
(:func:`transferlab.shift.estimators.gaussian_kl`). Each measure is correlated (Spearman) with the
gain from ``evaluate.json`` across targets.

The text route (:func:`transferlab.stages.text.shift_analysis`) measures token-unigram KL and top-k
vocabulary overlap instead of pixel histograms (:mod:`transferlab.shift.text`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from transferlab.config import primary_objective
from transferlab.io import write_json
from transferlab.stages.common import route_dirs
from transferlab.tracking import StageRun


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _subsample(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if len(x) <= n:
        return x
    g = torch.Generator().manual_seed(int(seed))
    return x[torch.randperm(len(x), generator=g)[:n].sort().values]


@torch.no_grad()
def backbone_features(
    backbone: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024
) -> np.ndarray:
    from transferlab.data.loaders import to_float

    backbone.eval()
    return (
        torch.cat([backbone(to_float(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])
        .double()
        .numpy()
    )


def all_images(data: dict[str, Any]) -> torch.Tensor:
    return torch.cat([data[s]["x"] for s in ("train", "val", "test") if s in data])


def run(cfg: DictConfig) -> dict[str, Any]:
    from transferlab.data.loaders import load_dataset
    from transferlab.models.checkpoint import load_backbone
    from transferlab.plots import kl_vs_gain
    from transferlab.shift import estimators as est
    from transferlab.shift import measures

    route = str(cfg.route)
    if route == "text":
        from transferlab.stages.text import shift_analysis

        return shift_analysis(cfg)
    scfg = cfg.shift[route]
    dirs = route_dirs(cfg, route)
    targets = list(map(str, cfg.data[route].targets))
    ev_path = dirs["reports"] / "evaluate.json"
    if not ev_path.exists():
        from transferlab.errors import DataSourceError

        raise DataSourceError(f"{ev_path} is missing: run the evaluate stage first (dvc repro)")
    evaluation = json.loads(ev_path.read_text())
    n_max = int(scfg.get("max_samples", 5000))
    with StageRun(
        cfg,
        "shift-analysis",
        tags={"route": route, "run_name": f"shift:{route}"},
        manifest=dirs["manifest"],
    ) as tr:
        source = _subsample(all_images(load_dataset(dirs["data"] / "source.pt")), n_max, cfg.seed)
        primary = primary_objective(cfg, route)
        backbone, _ = load_backbone(dirs["pretrain"] / primary / "backbone.pt")
        f_src = backbone_features(backbone, source)
        x_src = source.numpy().reshape(len(source), -1) / 255.0
        bins, alpha, eps = int(scfg.bins), float(scfg.alpha), float(scfg.get("feature_eps", 1e-3))
        # Bootstrap replicates resample whole images; per-image bin counts make each one a sum.
        h_src = est.row_histograms(x_src, bins)

        def smoothed(h: np.ndarray) -> np.ndarray:
            return est.smooth_counts(h.sum(axis=0), alpha)

        n_boot = int(scfg.get("n_boot", 0))
        rows: dict[str, dict[str, Any]] = {}
        for target in targets:
            x = _subsample(
                all_images(load_dataset(dirs["data"] / "targets" / f"{target}.pt")), n_max, cfg.seed
            )
            x_tgt = x.numpy().reshape(len(x), -1) / 255.0
            f_tgt = backbone_features(backbone, x)
            values = {
                **measures.input_measures(x_src, x_tgt, bins, alpha),
                **measures.feature_measures(
                    f_src, f_tgt, seed=int(cfg.seed), eps=eps, knn_k=int(scfg.get("knn_k", 5))
                ),
            }
            row: dict[str, Any] = {k: _finite(v) for k, v in values.items()}
            if n_boot > 0:
                # Intervals for the cheap estimators (the kNN/MMD/PAD ones cost O(n^2) per draw).
                row["ci"] = {
                    **measures.bootstrap(
                        {
                            "kl_input": lambda a, b: est.kl_divergence(smoothed(a), smoothed(b)),
                            "js_input": lambda a, b: est.js_divergence(smoothed(a), smoothed(b)),
                        },
                        h_src,
                        est.row_histograms(x_tgt, bins),
                        n_boot=n_boot,
                        seed=int(cfg.seed),
                        max_n=None,
                    ),
                    **measures.bootstrap(
                        {"kl_feature": lambda a, b: est.gaussian_kl(a, b, eps=eps)},
                        f_src,
                        f_tgt,
                        n_boot=n_boot,
                        seed=int(cfg.seed),
                        max_n=None,
                    ),
                }
            row["n_target"] = len(x)
            row["gain"] = evaluation["targets"][target]["gain"]
            rows[target] = row
        names = list(rows)
        gains = [rows[t]["gain"] for t in names]
        corr = measures.correlation_table(rows, list(measures.DESCRIPTIONS))
        report = {
            "route": route,
            "source": str(cfg.data[route].get("source", "source")),
            "estimators": {
                **measures.DESCRIPTIONS,
                "kl_input": measures.DESCRIPTIONS["kl_input"] + f" [{bins} bins, alpha={alpha}]",
                "kl_feature": measures.DESCRIPTIONS["kl_feature"]
                + f" ['{primary}' backbone, ridge {eps}]",
            },
            "n_source": len(source),
            "n_boot": n_boot,
            "targets": rows,
            "correlations": corr,
            "spearman_kl_gain": corr["kl_input"]["spearman"],
            "spearman_kl_feature_gain": corr["kl_feature"]["spearman"],
        }
        out = dirs["reports"]
        write_json(out / "shift.json", report)
        kl_vs_gain(
            names,
            [rows[t]["kl_input"] for t in names],
            gains,
            out / "plots" / "kl_vs_gain.png",
            "D_KL(P_source || P_target), pixel histogram [nats]",
            f"{route}: shift vs transfer gain (95% bootstrap CI)",
            kl_err=[tuple(rows[t]["ci"]["kl_input"]) for t in names] if n_boot > 0 else None,
        )
        tr.log_metrics(
            {
                f"{t}/{k}": v
                for t, r in rows.items()
                for k, v in r.items()
                if k in measures.DESCRIPTIONS and v is not None
            }
        )
        for name in ("shift.json", "plots/kl_vs_gain.png"):
            tr.log_artifact(out / name, "reports")
    return report
