"""Stage ``curves``: accuracy as a function of freezing depth and of labelled examples per class.

Per route (``curves.<route>``, one DVC stage ``curves@<route>`` each) and per labelled target:

- Freezing-depth curve: the primary objective's backbone fine-tuned with the first ``k`` blocks
  frozen, for every ``k`` in ``freeze_depths`` (``k = num_blocks``: only the head trains, by SGD;
  text backbones count ``blocks = [embeddings, layer 1, …]``).
- Sample-efficiency curve: pre-trained vs scratch on nested subsets of each seed's few-shot draw
  (``n`` per class for every ``n`` in ``shots``; the 5-shot set of a seed contains its 2-shot set).

The full-shots point at the configured ``finetune.freeze_depth`` is the finetune stage's own fit:
its checkpoints are scored, not fitted again. Every point follows the study protocol: the ``finetune.max_steps`` budget whatever the subset's
size, each arm's learning rate as the finetune stage selected it (``history.json``), and every
seed of ``study.seeds``; a point is the seed mean with its t interval. The test split is the
evaluate stage's. Unlabelled text targets (``task: lm``) have no classes and are skipped.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

from omegaconf import DictConfig

from transferlab.io import read_json, write_json
from transferlab.models.checkpoint import load_classifier
from transferlab.plots import curve_panels
from transferlab.progress import progress_bar
from transferlab.routes import get_route
from transferlab.stages.context import Runtime
from transferlab.stages.fit import accuracy
from transferlab.stats import mean_ci
from transferlab.study import Fit, Protocol, by_name, fit_for, variants
from transferlab.training import configure_torch

Key = tuple[str, str, int, int]  #: (target, variant, frozen blocks, shots per class)


def run(cfg: DictConfig, rt: Runtime) -> dict[str, Any]:
    route = get_route(cfg)
    dirs = route.dirs
    protocol = Protocol.from_cfg(cfg)
    ccfg = cfg.curves[route.name]
    primary = route.primary()
    wanted = [str(t) for t in ccfg.targets or []]
    datasets = {t: route.target_data(t) for t in route.targets() if not wanted or t in wanted}
    skipped = [t for t, d in datasets.items() if not route.labelled(d)]
    datasets = {t: d for t, d in datasets.items() if t not in skipped}
    depths = [int(k) for k in ccfg.freeze_depths]
    shots = [int(n) for n in ccfg.shots]
    full = int(cfg.data[route.name].shots_per_class)
    base_depth = int(cfg.finetune.freeze_depth)
    arms = by_name(variants(cfg, route))
    selected = read_json(dirs["finetune"] / "history.json")["targets"]
    out: dict[str, Any] = {
        "route": route.name,
        "objective": primary,
        "max_steps": int(cfg.finetune.max_steps[route.name]),
        "seeds": list(protocol.seeds),
        "targets": {},
    }
    # Every point is a set of fits (one per seed) of (target, variant, depth, n per class) at
    # the arm's selected rate. The full-shots fit at the configured depth sits on both curves.
    points: dict[Key, list[Fit]] = {}

    def point(target: str, variant: str, k: int, n: int) -> None:
        lr = selected[target][variant]["lr"]
        fit = fit_for(cfg, target, arms[variant], overrides={"freeze_depth": k, "lr": lr}, shots=n)
        points[(target, variant, k, n)] = [replace(fit, seed=s) for s in protocol.seeds]

    for target in datasets:
        for k in depths:
            point(target, primary, k, full)
        for n in shots:
            for variant in (primary, "scratch"):
                point(target, variant, base_depth, n)
    # The full-shots fit at the configured depth is the finetune stage's own fit (same seed,
    # subset, rate and budget): its checkpoints are scored, not re-fitted.
    reused = {key: fs for key, fs in points.items() if key[2] == base_depth and key[3] == full}
    fits = [f for key, fs in points.items() if key not in reused for f in fs]
    progress = bool(cfg.trainer.enable_progress_bar)
    tags = {"route": route.name, "run_name": f"curves:{route.name}"}
    with (
        rt.executor(route, datasets, len(fits)) as execute,
        rt.track("curves", tags, dirs["manifest"]) as tr,
        progress_bar(progress, hosts_fits=True) as bar,
    ):
        configure_torch(cfg.trainer)  # after the fork: workers run one thread each
        task = bar.add_task(f"curves[{route.name}]", total=len(fits))
        for name in skipped:
            print(f"curves[{route.name}]: skipping {name}: unlabelled (task lm)", file=sys.stderr)
        accs: dict[Key, list[float]] = {key: [] for key in points}
        for (target, variant, k, n), fs in reused.items():
            test = datasets[target]["test"]
            for f in fs:
                path = dirs["finetune"] / variant / target / f"seed{f.seed}.pt"
                model, _ = load_classifier(path)
                x = route.inputs(model.backbone, test)
                accs[(target, variant, k, n)].append(round(accuracy(route, model, x, test["y"]), 6))
        for res in execute(fits, state=False, test_acc=True):
            if res.error is not None:
                raise res.error
            f = res.fit
            key = (f.target, f.variant.name, int(f.hparams["freeze_depth"]), int(f.shots or full))
            accs[key].append(float(res.test_acc))  # type: ignore[arg-type]
            bar.update(task, description=f"curves[{route.name}] {f.target}/{f.variant.name}")
            bar.advance(task)
        stat = {key: mean_ci(v, protocol.confidence, (0.0, 1.0)) for key, v in accs.items()}

        def pt(key: Key) -> dict[str, Any]:
            c = stat[key]
            return {
                "mean": _r(c["mean"]),
                "lo": _r(c["lo"]),
                "hi": _r(c["hi"]),
                "per_seed": accs[key],
            }

        for target in datasets:
            freeze = {k: pt((target, primary, k, full)) for k in depths}
            eff = {
                v: {n: pt((target, v, base_depth, n)) for n in shots} for v in (primary, "scratch")
            }
            lrs = {v: selected[target][v]["lr"] for v in (primary, "scratch")}
            out["targets"][target] = {"freeze_depth": freeze, "shots": eff, "lr": lrs}
            tr.log_metrics(
                {
                    **{f"{target}/freeze{k}/test/acc": p["mean"] for k, p in freeze.items()},
                    **{
                        f"{target}/{s}/shots{n}/test/acc": p["mean"]
                        for s, pts in eff.items()
                        for n, p in pts.items()
                    },
                }
            )
        rep = dirs["reports"]
        write_json(rep / "curves.json", _jsonable(out))
        rows_f = [
            {"target": t, "freeze_depth": k, "test_acc": p["mean"], "lo": p["lo"], "hi": p["hi"]}
            for t, d in out["targets"].items()
            for k, p in d["freeze_depth"].items()
        ]
        rows_s = [
            {
                "target": t,
                "variant": s,
                "shots": n,
                "test_acc": p["mean"],
                "lo": p["lo"],
                "hi": p["hi"],
            }
            for t, d in out["targets"].items()
            for s, pts in d["shots"].items()
            for n, p in pts.items()
        ]
        write_json(rep / "plots" / "freeze_depth.json", rows_f)
        write_json(rep / "plots" / "sample_efficiency.json", rows_s)
        budget = f"{int(cfg.finetune.max_steps[route.name])} steps, {len(protocol.seeds)} seeds, {protocol.confidence:.0%} CI"

        def bars(pts: dict[int, dict[str, Any]]) -> dict[int, tuple[Any, Any, Any]]:
            return {x: (p["mean"], p["lo"], p["hi"]) for x, p in pts.items()}

        curve_panels(
            {t: {primary: bars(d["freeze_depth"])} for t, d in out["targets"].items()},
            rep / "plots" / "freeze_depth.png",
            "frozen blocks k",
            f"{route.name}: accuracy vs freezing depth ({primary}; {budget})",
        )
        curve_panels(
            {t: {s: bars(p) for s, p in d["shots"].items()} for t, d in out["targets"].items()},
            rep / "plots" / "sample_efficiency.png",
            "labelled examples per class",
            f"{route.name}: sample efficiency ({budget})",
            logx=True,
        )
        for name in ("curves.json", "plots/freeze_depth.png", "plots/sample_efficiency.png"):
            tr.log_artifact(rep / name, "reports")
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    return obj
