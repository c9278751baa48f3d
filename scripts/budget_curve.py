"""The step-budget curve behind ``finetune.max_steps``: does the scratch control fit its own
training set (eval-mode train accuracy) within the budget, on every target, at every rate of
``study.lr_grid``?

For each labelled target of the route, each rate and each budget in ``--steps``, one scratch fit
(seed: the first of ``study.seeds``; the few-shot draw of that seed) through the pipeline's own fit
function; prints a markdown table (train accuracy, val accuracy in brackets) and optionally writes
JSON. Run it after ``dvc repro`` (it reads ``data/<route>``)::

    python scripts/budget_curve.py                       # image route, 25 50 100 150 steps
    python scripts/budget_curve.py --route text --steps 50 100 --json budget.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from transferlab.routes import get_route
from transferlab.stages.fit import accuracy, run_fit, train_data
from transferlab.study import by_name, fit_for, variants
from transferlab.training import configure_torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--route", default="image")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100, 150])
    ap.add_argument("--variant", default="scratch")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    os.environ.setdefault("TRANSFERLAB_NO_PROGRESS", "1")
    cfg = OmegaConf.load(args.params)
    cfg.route = args.route
    route = get_route(cfg)
    arm = by_name(variants(cfg, route))[args.variant]
    trainer = {**OmegaConf.to_container(cfg.trainer), "num_threads": 1, "resume": False}
    configure_torch(trainer)
    rows = []
    for target in route.targets():
        data = route.target_data(target)
        if not route.labelled(data):
            continue
        for lr in cfg.study.lr_grid:
            for steps in args.steps:
                fit = fit_for(cfg, target, arm, overrides={"max_steps": steps, "lr": float(lr)})
                model, history = run_fit(fit, route, data, trainer)
                sub = train_data(fit, data)
                rows.append(
                    {
                        "target": target,
                        "lr": float(lr),
                        "steps": steps,
                        "train_acc": history[-1]["train/acc_eval"],
                        "val_acc": accuracy(
                            route, model, route.inputs(model.backbone, sub["val"]), sub["val"]["y"]
                        ),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    head = "| target | lr | " + " | ".join(f"{s} steps" for s in args.steps) + " |"
    print(head)
    print("|---|---|" + "---|" * len(args.steps))
    for target in dict.fromkeys(r["target"] for r in rows):
        for lr in cfg.study.lr_grid:
            cells = [
                f"{r['train_acc']:.2f} ({r['val_acc']:.2f})"
                for r in rows
                if r["target"] == target and r["lr"] == float(lr)
            ]
            print(f"| {target} | {float(lr):g} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
