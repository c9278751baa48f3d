"""Benchmark: time to the best value with pruning vs without, on the same trial budget.

Runs the ``lr_freeze_wd`` search twice in the current project (which needs ``dvc repro`` done up to
pre-training), once with the median pruner and once without, with the same sampler seed, number
of trials and epochs per trial, each in its own throw-away Optuna storage (MLflow and the best-
config export are off, so the project's tracking and conf/ stay untouched). Prints JSON and writes
it to ``reports/bench_pruning.json``::

    python scripts/bench_pruning.py                                  # full-size config
    python scripts/bench_pruning.py --n-trials 16 -- +debug=tiny finetune.max_steps.image=30

Per arm: trials complete/pruned/failed, epochs trained, wall time, the best value, the time to
reach it, and the time to reach a common bar (the lower of the two arms' best values), so that the
two arms are compared at the same quality.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _sweep(arm: str, pruner: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    study = f"bench_{arm}"
    cmd = [
        sys.executable,
        "-m",
        "transferlab.sweep",
        "-m",
        f"hparams_search={args.search}",
        f"hydra/sweeper/pruner={pruner}",
        f"hydra.sweeper.storage=sqlite:///{tmp / 'bench.db'}",
        f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.n_trials={args.n_trials}",
        f"hydra.sweeper.sampler.seed={args.seed}",
        "hydra.sweeper.export_best=false",
        f"hydra.sweep.dir={tmp / arm}",
        "logger.enabled=false",
        "trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"the {arm} sweep failed ({proc.returncode})")
    return {"study": study, "wall_s": wall}


def _summary(study_name: str, storage: str, bar: float | None = None) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = sorted(study.get_trials(), key=lambda t: t.datetime_start)
    start = trials[0].datetime_start
    maximize = study.direction.name == "MAXIMIZE"

    def better(a: float, b: float) -> bool:
        return a > b if maximize else a < b

    best_t = study.best_trial
    running: float | None = None
    reached_bar = None
    for t in sorted(
        (t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.datetime_complete
    ):
        if running is None or better(t.value, running):
            running = t.value
        if bar is not None and reached_bar is None and not better(bar, running):
            reached_bar = (t.datetime_complete - start).total_seconds()
    end = max(t.datetime_complete for t in trials if t.datetime_complete)
    return {
        "trials": len(trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "epochs_trained": sum(len(t.intermediate_values) for t in trials),
        "trials_s": round((end - start).total_seconds(), 2),
        "best_value": best_t.value,
        "best_trial": best_t.number,
        "time_to_best_s": round((best_t.datetime_complete - start).total_seconds(), 2),
        "time_to_common_bar_s": None if reached_bar is None else round(reached_bar, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--search", default="lr_freeze_wd", help="hparams_search config")
    p.add_argument("--n-trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pruner", default="median", help="the pruner of the pruning arm")
    p.add_argument("--out", default="reports/bench_pruning.json")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, after `--`")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp_name:
        tmp = Path(tmp_name)
        storage = f"sqlite:///{tmp / 'bench.db'}"
        runs = {
            "no_pruning": _sweep("no_pruning", "nop", args, tmp),
            "pruning": _sweep("pruning", args.pruner, args, tmp),
        }
        first = {arm: _summary(r["study"], storage) for arm, r in runs.items()}
        values = [s["best_value"] for s in first.values()]
        import optuna

        direction = optuna.load_study(study_name="bench_pruning", storage=storage).direction.name
        bar = min(values) if direction == "MAXIMIZE" else max(values)
        arms = {arm: _summary(r["study"], storage, bar) for arm, r in runs.items()}
        for arm, r in runs.items():
            arms[arm]["process_wall_s"] = round(r["wall_s"], 2)
    result = {
        "search": args.search,
        "n_trials": args.n_trials,
        "seed": args.seed,
        "pruner": args.pruner,
        "overrides": args.overrides,
        "common_bar": bar,
        "arms": arms,
        "speedup_time_to_common_bar": (
            round(
                arms["no_pruning"]["time_to_common_bar_s"]
                / arms["pruning"]["time_to_common_bar_s"],
                2,
            )
            if arms["pruning"]["time_to_common_bar_s"]
            else None
        ),
        "speedup_total": round(arms["no_pruning"]["trials_s"] / arms["pruning"]["trials_s"], 2),
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
