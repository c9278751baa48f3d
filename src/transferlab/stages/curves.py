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
and seed give the same model, see docs/reliability.md). Unlabelled text targets
(``task: lm``) have no classes and are skipped.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig

from transferlab.io import write_json
from transferlab.plots import curve_panels
from transferlab.progress import progress_bar
from transferlab.routes import get_route
from transferlab.stages.context import Runtime
from transferlab.stages.fit import nested_subset
from transferlab.study import Fit, by_name, fit_for, variants
from transferlab.training import configure_torch


def run(cfg: DictConfig, rt: Runtime) -> dict[str, Any]:
    route = get_route(cfg)
    dirs = route.dirs
    ccfg = cfg.curves[route.name]
    primary = route.primary()
    wanted = [str(t) for t in ccfg.targets or []]
    datasets = {t: route.target_data(t) for t in route.targets() if not wanted or t in wanted}
    skipped = [t for t, d in datasets.items() if not route.labelled(d)]
    datasets = {t: d for t, d in datasets.items() if t not in skipped}
    depths = [int(k) for k in ccfg.freeze_depths]
    shots = [int(n) for n in ccfg.shots]
    epochs = int(ccfg.max_epochs)
    base_depth = int(cfg.finetune.freeze_depth)
    arms = by_name(variants(cfg, route))
    out: dict[str, Any] = {
        "route": route.name,
        "objective": primary,
        "max_epochs": epochs,
        "targets": {},
    }
    # Every point is a fit (target, variant, depth, n per class; n None = the whole training
    # set). The whole-set fit at the configured depth sits on both curves: it runs once.
    # shot_key[(target, n)]: the n a fit with n per class runs on (None when that is every example)
    points: dict[tuple[str, str, int, int | None], Fit] = {}
    shot_key: dict[tuple[str, int], int | None] = {}

    def point(target: str, variant: str, k: int, n: int | None) -> None:
        knobs = {"freeze_depth": k, "max_epochs": epochs}
        points[(target, variant, k, n)] = fit_for(
            cfg, target, arms[variant], overrides=knobs, shots=n
        )

    for target, data in datasets.items():
        for k in depths:
            point(target, primary, k, None)
        for n in shots:
            idx = nested_subset(data["train"]["y"], n, cfg.seed)
            shot_key[(target, n)] = None if len(idx) == len(data["train"]["y"]) else n
            for variant in (primary, "scratch"):
                point(target, variant, base_depth, shot_key[(target, n)])
    progress = bool(cfg.trainer.enable_progress_bar)
    tags = {"route": route.name, "run_name": f"curves:{route.name}"}
    with (
        rt.executor(route, datasets, len(points)) as execute,
        rt.track("curves", tags, dirs["manifest"]) as tr,
        progress_bar(progress, hosts_fits=True) as bar,
    ):
        configure_torch(cfg.trainer)  # after the fork: workers run one thread each
        task = bar.add_task(f"curves[{route.name}]", total=len(points))
        for name in skipped:
            print(f"curves[{route.name}]: skipping {name}: unlabelled (task lm)", file=sys.stderr)
        acc: dict[tuple[str, str, int, int | None], float] = {}
        results = execute(list(points.values()), state=False, test_acc=True)
        for key, res in zip(points, results, strict=True):
            if res.error is not None:
                raise res.error
            acc[key] = float(res.test_acc)  # type: ignore[arg-type]
            bar.update(task, description=f"curves[{route.name}] {key[0]}/{key[1]}")
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
            f"{route.name}: accuracy vs freezing depth ({primary}, {epochs} epochs)",
        )
        curve_panels(
            {t: d["shots"] for t, d in out["targets"].items()},
            rep / "plots" / "sample_efficiency.png",
            "labelled examples per class",
            f"{route.name}: sample efficiency ({epochs} epochs)",
            logx=True,
        )
        for name in ("curves.json", "plots/freeze_depth.png", "plots/sample_efficiency.png"):
            tr.log_artifact(rep / name, "reports")
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    return obj
