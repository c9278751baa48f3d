"""Stage ``curves``: accuracy as a function of freezing depth and of labelled examples per class.

Per route (``curves.<route>``, one DVC stage ``curves@<route>`` each) and per labelled target:

- Freezing-depth curve: the primary objective's backbone fine-tuned with the first ``k`` blocks
  frozen, for every ``k`` in ``freeze_depths`` (``k = num_blocks`` is a linear probe; text
  backbones count ``blocks = [embeddings, layer 1, …]``).
- Sample-efficiency curve: pre-trained vs scratch on nested subsets of the few-shot training set
  (``n`` per class for every ``n`` in ``shots``; subsets are prefixes of one seeded permutation per
  class, so the 5-shot set contains the 2-shot set).

Every point is a full fine-tuning run with ``max_epochs`` epochs and the other ``finetune.*`` knobs;
the test split is the same as the evaluate stage's. A fit on the whole training set with the
configured ``finetune.freeze_depth`` appears on both curves (depth ``k`` = that depth, and the
largest ``n`` when it covers every example); it runs once and is reused (the same config, data
and seed give the same model, see the README's determinism note). Unlabelled text targets
(``task: lm``) have no classes and are skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
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


def accuracy_on_test(model: torch.nn.Module, data: Mapping[str, Any], route: str) -> float:
    """Accuracy on the target's test split (text: the backbone's own inputs, batched by length)."""
    if route == "text":
        from transferlab.stages import text

        logits = text.predict(model, text.inputs(model.backbone, data["test"]), by_length=True)
    else:
        from transferlab.stages.evaluate import predict

        logits = predict(model, data["test"]["x"])
    return round(float((logits.argmax(-1) == data["test"]["y"]).float().mean()), 6)


def _curve_job(job: tuple[DictConfig, str, str, str, int | None]) -> dict[str, Any]:
    """One curve point: fine-tune on the whole training set (``n`` None) or on ``n`` per class,
    return the test accuracy."""
    from transferlab.stages.finetune import finetune_one
    from transferlab.stages.pool import picklable, shared

    cfg, route, target, variant, n = job
    data = shared("data")[target]
    try:
        train = data
        if n is not None:
            idx = nested_subset(data["train"]["y"], n, cfg.seed)
            train = {**data, "train": subset_split(data["train"], idx)}
        model, _ = finetune_one(cfg, route, target, variant, train)
        return {"acc": accuracy_on_test(model, data, route)}
    except Exception as exc:
        return {"error": picklable(exc)}


def run(cfg: DictConfig) -> dict[str, Any]:
    from transferlab.config import primary_objective
    from transferlab.data.loaders import load_dataset
    from transferlab.plots import curve_panels
    from transferlab.stages.pool import fit_pool, fit_workers

    route = str(cfg.route)
    dirs = route_dirs(cfg, route)
    ccfg = cfg.curves[route]
    primary = primary_objective(cfg, route)
    wanted = [str(t) for t in ccfg.get("targets") or []]
    datasets = {
        str(t): load_dataset(dirs["data"] / "targets" / f"{t}.pt")
        for t in cfg.data[route].targets
        if not wanted or str(t) in wanted
    }
    skipped = [t for t, d in datasets.items() if d.get("task", "classification") == "lm"]
    datasets = {t: d for t, d in datasets.items() if t not in skipped}
    depths = [int(k) for k in ccfg.freeze_depths]
    shots = [int(n) for n in ccfg.shots]
    epochs = int(ccfg.max_epochs)
    base_depth = int(cfg.finetune.get("freeze_depth", 0))
    out: dict[str, Any] = {
        "route": route,
        "objective": primary,
        "max_epochs": epochs,
        "targets": {},
    }
    # Every point is a fit (target, variant, depth, n per class; n None = the whole training
    # set). The whole-set fit at the configured depth sits on both curves: it runs once.
    # shot_key[(target, n)]: the n a fit with n per class runs on (None when that is every example)
    points: dict[tuple[str, str, int, int | None], None] = {}
    shot_key: dict[tuple[str, int], int | None] = {}
    for target, data in datasets.items():
        for k in depths:
            points[(target, primary, k, None)] = None
        for n in shots:
            idx = nested_subset(data["train"]["y"], n, cfg.seed)
            shot_key[(target, n)] = None if len(idx) == len(data["train"]["y"]) else n
            for variant in (primary, "scratch"):
                points[(target, variant, base_depth, shot_key[(target, n)])] = None
    # The fits' configs (a merge costs ~0.1 s on the whole config: build each once).
    at_depth = {
        k: OmegaConf.merge(cfg, {"finetune": {"freeze_depth": k, "max_epochs": epochs}})
        for k in {*depths, base_depth}
    }
    jobs = [(at_depth[k], route, t, v, n) for t, v, k, n in points]
    progress = bool(cfg.trainer.get("enable_progress_bar", True))
    with (
        fit_pool(fit_workers(cfg.trainer, len(jobs)), {"data": datasets}) as pmap,
        StageRun(
            cfg,
            "curves",
            tags={"route": route, "run_name": f"curves:{route}"},
            manifest=dirs["manifest"],
        ) as tr,
        progress_bar(progress, hosts_fits=True) as bar,
    ):
        configure_torch(cfg.trainer)  # after the fork: workers run one thread each
        task = bar.add_task(f"curves[{route}]", total=len(jobs))
        for name in skipped:
            print(f"curves[{route}]: skipping {name}: unlabelled (task lm)", file=sys.stderr)
        acc: dict[tuple[str, str, int, int | None], float] = {}
        for point, res in zip(points, pmap(_curve_job, jobs), strict=True):
            if "error" in res:
                raise res["error"]
            acc[point] = res["acc"]
            bar.update(task, description=f"curves[{route}] {point[0]}/{point[1]}")
            bar.advance(task)
        for target in datasets:
            freeze = {k: acc[(target, primary, k, None)] for k in depths}
            eff = {
                v: {n: acc[(target, v, base_depth, shot_key[(target, n)])] for n in shots}
                for v in (primary, "scratch")
            }
            out["targets"][target] = {"freeze_depth": freeze, "shots": eff}
            tr.log_metrics(
                {
                    **{f"{target}/freeze{k}/test/acc": v for k, v in freeze.items()},
                    **{
                        f"{target}/{s}/shots{n}/test/acc": v
                        for s, pts in eff.items()
                        for n, v in pts.items()
                    },
                }
            )
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
            f"{route}: accuracy vs freezing depth ({primary}, {epochs} epochs)",
        )
        curve_panels(
            {t: d["shots"] for t, d in out["targets"].items()},
            rep / "plots" / "sample_efficiency.png",
            "labelled examples per class",
            f"{route}: sample efficiency ({epochs} epochs)",
            logx=True,
        )
        for name in ("curves.json", "plots/freeze_depth.png", "plots/sample_efficiency.png"):
            tr.log_artifact(rep / name, "reports")
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    return obj
