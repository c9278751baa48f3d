"""Stage ``curves``: accuracy as a function of freezing depth and of labelled examples per class.

- Freezing-depth curve: the primary objective's backbone fine-tuned with the first ``k`` blocks
  frozen, for every ``k`` in ``curves.freeze_depths`` (``k = num_blocks`` is a linear probe).
- Sample-efficiency curve: pre-trained vs scratch on nested subsets of the few-shot training set
  (``n`` per class for every ``n`` in ``curves.shots``; subsets are prefixes of one seeded
  permutation per class, so the 5-shot set contains the 2-shot set).

Every point is a full fine-tuning run with ``curves.max_epochs`` epochs; the test split is the
same as the evaluate stage's.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from transferlab.io import write_json
from transferlab.stages.common import configure_torch, route_dirs
from transferlab.tracking import StageRun, progress_bar


def nested_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of the first ``n`` examples of each class in a seeded per-class permutation."""
    g = torch.Generator().manual_seed(int(seed))
    picks = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)][:n])
    return torch.sort(torch.cat(picks)).values


def _test_acc(model: torch.nn.Module, data: dict[str, Any]) -> float:
    from transferlab.stages.evaluate import predict

    logits = predict(model, data["test"]["x"])
    return round(float((logits.argmax(-1) == data["test"]["y"]).float().mean()), 6)


def run(cfg: DictConfig) -> dict[str, Any]:
    from transferlab.config import primary_objective
    from transferlab.data.loaders import load_dataset
    from transferlab.plots import curve_panels
    from transferlab.stages.finetune import finetune_one

    route = str(cfg.route)
    dirs = route_dirs(cfg, route)
    ccfg = cfg.curves
    primary = primary_objective(cfg, route)
    targets = [
        str(t) for t in cfg.data[route].targets if not ccfg.get("targets") or t in ccfg.targets
    ]
    depths = [int(k) for k in ccfg.freeze_depths]
    shots = [int(n) for n in ccfg.shots]
    configure_torch(cfg.trainer)
    out: dict[str, Any] = {"route": route, "objective": primary, "targets": {}}
    progress = bool(cfg.trainer.get("enable_progress_bar", True))
    total = len(targets) * (len(depths) + 2 * len(shots))
    with (
        StageRun(
            cfg,
            "curves",
            tags={"route": route, "run_name": f"curves:{route}"},
            manifest=dirs["manifest"],
        ) as tr,
        progress_bar(progress, hosts_fits=True) as bar,
    ):
        task = bar.add_task(f"curves[{route}]", total=total)
        for target in targets:
            data = load_dataset(dirs["data"] / "targets" / f"{target}.pt")
            freeze: dict[int, float] = {}
            for k in depths:
                c = OmegaConf.merge(
                    cfg, {"finetune": {"freeze_depth": k, "max_epochs": int(ccfg.max_epochs)}}
                )
                model, _ = finetune_one(c, route, target, primary, data)
                freeze[k] = _test_acc(model, data)
                bar.advance(task)
            eff: dict[str, dict[int, float]] = {primary: {}, "scratch": {}}
            for n in shots:
                idx = nested_subset(data["train"]["y"], n, cfg.seed)
                sub = {
                    **data,
                    "train": {"x": data["train"]["x"][idx], "y": data["train"]["y"][idx]},
                }
                c = OmegaConf.merge(cfg, {"finetune": {"max_epochs": int(ccfg.max_epochs)}})
                for variant in (primary, "scratch"):
                    model, _ = finetune_one(c, route, target, variant, sub)
                    eff[variant][n] = _test_acc(model, data)
                    bar.advance(task)
            out["targets"][target] = {"freeze_depth": freeze, "shots": eff}
            tr.log_metrics({f"{target}/freeze{k}/test/acc": v for k, v in freeze.items()})
        rep = dirs["reports"]
        write_json(rep / "curves.json", _jsonable(out))
        rows_f = [
            {"target": t, "freeze_depth": k, "test_acc": v}
            for t, d in out["targets"].items()
            for k, v in d["freeze_depth"].items()
        ]
        rows_s = [
            {"target": t, "variant": s, "shots": n, "test_acc": v}
            for t, d in out["targets"].items()
            for s, pts in d["shots"].items()
            for n, v in pts.items()
        ]
        write_json(rep / "plots" / "freeze_depth.json", rows_f)
        write_json(rep / "plots" / "sample_efficiency.json", rows_s)
        curve_panels(
            {t: {primary: d["freeze_depth"]} for t, d in out["targets"].items()},
            rep / "plots" / "freeze_depth.png",
            "frozen blocks k",
            f"{route}: accuracy vs freezing depth ({primary})",
        )
        curve_panels(
            {t: d["shots"] for t, d in out["targets"].items()},
            rep / "plots" / "sample_efficiency.png",
            "labelled examples per class",
            f"{route}: sample efficiency",
            logx=True,
        )
        for name in ("curves.json", "plots/freeze_depth.png", "plots/sample_efficiency.png"):
            tr.log_artifact(rep / name, "reports")
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    return obj
