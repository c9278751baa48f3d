"""The pre-training budget curve behind ``objectives.<o>.max_epochs`` / ``max_batches`` and
``data.image.source_train``: how the linear-probe accuracy on the in-domain target grows with the
number of pre-training batches, per objective, next to the random-init and raw-pixel floors.

Each objective trains once on ``--source-train`` Fashion-MNIST images (its own batch size, learning
rate and warm-up from ``params.yaml``; its ``max_batches`` cap lifted) for ``max(--batches)``
batches. The objectives keep a constant rate after warm-up, so the backbone after ``b`` batches is
exactly what a run with a budget of ``b`` batches ends with; at each milestone the pipeline's own
probe (:func:`transferlab.stages.fit.probe_head`: BatchNorm re-estimated on the shots, standardised
features, logistic regression with C chosen on val) is fitted on the in-domain target for every
seed of ``study.seeds`` and scored on its test split. Prints a markdown table (mean test accuracy
and its t interval over seeds, seconds of pre-training) and optionally writes JSON. Run it after
the data stage (it reads ``data/image/targets/fmnist.pt``)::

    python scripts/pretrain_curve.py                                  # every image objective
    python scripts/pretrain_curve.py --objectives mae --batches 50 200 800 --json curve.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from transferlab.data.image import build_source
from transferlab.data.loaders import make_loader
from transferlab.models.checkpoint import build_backbone
from transferlab.models.cnn import Classifier
from transferlab.routes import get_route
from transferlab.stages.fit import accuracy, probe_head, seed_shots
from transferlab.stages.pretrain import build_objective
from transferlab.stats import mean_ci
from transferlab.study import Init
from transferlab.training import configure_torch, make_trainer, seed_all


def probe_accuracy(route: Any, backbone: torch.nn.Module, data: dict[str, Any], cfg: Any) -> dict:
    """Test accuracy of the pipeline's probe on ``backbone`` for every seed of the study."""
    hp = {"probe_cs": list(cfg.finetune.probe_cs)}
    shots = int(cfg.data.image.shots_per_class)
    accs = []
    for seed in cfg.study.seeds:
        seed_all(int(seed))
        sub = {**data, "train": seed_shots(data, shots, int(seed))}
        model = Classifier(copy.deepcopy(backbone), len(data["classes"]))
        x = {s: route.inputs(model.backbone, sub[s]) for s in ("train", "val")}
        probe_head(model, route, x, sub, hp)
        accs.append(accuracy(route, model, data["test"]["x"], data["test"]["y"]))
    c = mean_ci(accs, float(cfg.study.confidence), (0.0, 1.0))
    return {"mean": c["mean"], "lo": c["lo"], "hi": c["hi"], "per_seed": accs}


class Milestones(Callback):
    """Probe the backbone after each milestone batch; stop after the last."""

    def __init__(self, batches: list[int], probe: Any) -> None:
        self.batches = sorted(batches)
        self.probe = probe
        self.rows: list[dict[str, Any]] = []
        self.seconds = 0.0
        self._t0 = 0.0

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, idx: int) -> None:
        self.seconds += time.perf_counter() - self._t0
        done = trainer.fit_loop.total_batch_idx + 1
        if done in self.batches:
            was = module.training
            row = {"batches": done, "seconds": round(self.seconds, 1)}
            row.update(self.probe(copy.deepcopy(module.backbone)))
            module.train(was)
            self.rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        if done >= self.batches[-1]:
            trainer.should_stop = True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--objectives", nargs="+", default=None)
    ap.add_argument("--batches", type=int, nargs="+", default=[25, 50, 100, 200, 400, 800])
    ap.add_argument("--source-train", type=int, default=50000)
    ap.add_argument("--target", default="fmnist")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    os.environ.setdefault("TRANSFERLAB_NO_PROGRESS", "1")
    cfg = OmegaConf.load(args.params)
    cfg.route = "image"
    cfg.data.image.source_train = args.source_train
    route = get_route(cfg)
    trainer_cfg = {**OmegaConf.to_container(cfg.trainer), "resume": False}
    configure_torch(trainer_cfg)
    data = route.target_data(args.target)
    source, _, _ = build_source(OmegaConf.to_container(cfg.data.image), int(cfg.seed))
    x_train = torch.from_numpy(source["train"]["x"])
    y_train = torch.from_numpy(source["train"]["y"]).long()
    results: dict[str, Any] = {"source_train": args.source_train, "target": args.target}
    for name, init in (("floor/random_init", "scratch"), ("floor/raw_input", "raw")):
        seed_all(int(cfg.seed))
        backbone = build_backbone(route.arch(Init(init, "cnn" if init == "scratch" else "raw")))
        results[name] = probe_accuracy(route, backbone, data, cfg)
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
    for objective in args.objectives or list(cfg.pretrain.image.objectives):
        ocfg = cfg.objectives[objective]
        if "max_batches" in ocfg:
            ocfg.max_batches = None
        seed_all(int(cfg.seed))
        module, _ = build_objective(cfg, "image", objective)
        bs = int(ocfg.get("batch_size") or cfg.pretrain.image.batch_size)
        loader = make_loader(
            x_train, y_train, batch_size=bs, shuffle=True, seed=cfg.seed, drop_last=True
        )
        marks = Milestones(args.batches, lambda b: probe_accuracy(route, b, data, cfg))
        epochs = -(-max(args.batches) // len(loader))
        trainer = make_trainer(trainer_cfg, max_epochs=epochs, callbacks=[marks])
        print(f"# {objective}: batch {bs}, {len(loader)} batches per epoch", file=sys.stderr)
        trainer.fit(module, loader)
        results[objective] = marks.rows
    head = "| objective | " + " | ".join(f"{b} batches" for b in args.batches) + " |"
    print(head)
    print("|---|" + "---|" * len(args.batches))
    for name in (o for o in results if isinstance(results[o], list)):
        cells = [
            f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] ({r['seconds']:.0f} s)"
            for r in results[name]
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name in ("floor/random_init", "floor/raw_input"):
        r = results[name]
        print(f"| {name} | {r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] (any budget) |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
