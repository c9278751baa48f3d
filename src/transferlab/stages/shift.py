"""Stage ``shift-analysis``: how far each target is from the source, and whether that predicts gain.

Input space: ``D_KL(P_source || P_target)`` between pixel-intensity histograms (``bins`` equal bins
on [0, 1], add-``alpha`` smoothing so that no bin is empty and the KL stays finite; estimator
:func:`transferlab.shift.estimators.histogram_kl`). Feature space: the Gaussian-fit KL between the
primary objective's backbone features of source and target images
(:func:`transferlab.shift.estimators.gaussian_kl`). Each measure is correlated (Spearman) with the
gain from ``evaluate.json`` across targets.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

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
    from transferlab.shift.estimators import correlations, gaussian_kl, histogram_kl

    route = str(cfg.route)
    scfg = cfg.shift[route]
    dirs = route_dirs(cfg, route)
    targets = list(map(str, cfg.data[route].targets))
    evaluation = json.loads((dirs["reports"] / "evaluate.json").read_text())
    n_max = int(scfg.get("max_samples", 5000))
    with StageRun(
        cfg,
        "shift-analysis",
        tags={"route": route, "run_name": f"shift:{route}"},
        manifest=dirs["manifest"],
    ) as tr:
        source = _subsample(all_images(load_dataset(dirs["data"] / "source.pt")), n_max, cfg.seed)
        backbone, _ = load_backbone(dirs["pretrain"] / str(cfg.objective) / "backbone.pt")
        f_src = backbone_features(backbone, source)
        px_src = source.numpy().ravel() / 255.0
        rows: dict[str, dict[str, Any]] = {}
        for target in targets:
            x = _subsample(
                all_images(load_dataset(dirs["data"] / "targets" / f"{target}.pt")), n_max, cfg.seed
            )
            kl_in = histogram_kl(
                px_src,
                x.numpy().ravel() / 255.0,
                bins=int(scfg.bins),
                range_=(0.0, 1.0),
                alpha=float(scfg.alpha),
            )
            kl_feat = gaussian_kl(
                f_src, backbone_features(backbone, x), eps=float(scfg.get("feature_eps", 1e-3))
            )
            rows[target] = {
                "kl_input": _finite(kl_in),
                "kl_feature": _finite(kl_feat),
                "n_target": len(x),
                "gain": evaluation["targets"][target]["gain"],
            }
        names = list(rows)
        gains = [rows[t]["gain"] for t in names]
        corr_in = correlations(np.array([rows[t]["kl_input"] for t in names]), np.array(gains))
        corr_feat = correlations(
            np.array([rows[t]["kl_feature"] for t in names], dtype=float), np.array(gains)
        )
        report = {
            "route": route,
            "source": str(cfg.data[route].get("source", "source")),
            "estimators": {
                "kl_input": f"histogram KL of pixel intensities, {int(scfg.bins)} bins on [0,1], add-{float(scfg.alpha)} smoothing",
                "kl_feature": f"Gaussian-fit KL of '{cfg.objective}' backbone features (ridge {float(scfg.get('feature_eps', 1e-3))})",
            },
            "n_source": len(source),
            "targets": rows,
            "spearman_kl_gain": _finite(corr_in["spearman"]),
            "spearman_kl_feature_gain": _finite(corr_feat["spearman"]),
        }
        out = dirs["reports"]
        write_json(out / "shift.json", report)
        kl_vs_gain(
            names,
            [rows[t]["kl_input"] for t in names],
            gains,
            out / "plots" / "kl_vs_gain.png",
            "D_KL(P_source || P_target), pixel histogram [nats]",
            f"{route}: shift vs transfer gain",
        )
        tr.log_metrics({f"{t}/kl_input": r["kl_input"] for t, r in rows.items()})
        tr.log_metrics(
            {
                f"{t}/kl_feature": r["kl_feature"]
                for t, r in rows.items()
                if r["kl_feature"] is not None
            }
        )
        for name in ("shift.json", "plots/kl_vs_gain.png"):
            tr.log_artifact(out / name, "reports")
    return report
