"""Linear-probe table: how linearly separable is each pre-trained backbone's target representation?

For every backbone under ``<models-dir>/<objective>/backbone.pt`` (what ``dvc repro`` writes) and for
randomly initialised backbones of the same architecture (``--random-seeds`` of them), the probe

1. re-estimates BatchNorm statistics on the same source-training images for every backbone, random
   ones included (a backbone's stored statistics may lag its final weights after a short run, and a
   random backbone has none; without this the comparison would measure the statistics, not the
   weights),
2. extracts the pooled features of the target's few-shot train/val/test images (eval mode),
3. fits a multinomial logistic regression on standardised train features, picks the inverse
   regularisation C on the val split, and reports the test accuracy.

``--init-seed S`` adds the row ``init``: the random backbone every pre-training run with seed S
starts from (the stage's ``seed_all(S)`` then ``build_backbone``, i.e. ``torch.manual_seed(S)``),
so a backbone's gain over its own starting point can be told apart from a lucky initialisation.

Usage (after ``dvc repro``)::

    python scripts/probe_objectives.py                    # fmnist, every objective found
    python scripts/probe_objectives.py --target digits --objectives mae contrastive
    python scripts/probe_objectives.py --json reports/image/probe.json
    python scripts/probe_objectives.py --init-seed 1234    # + the pre-training runs' own init
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

C_GRID = (0.01, 0.1, 1.0, 10.0)


@torch.no_grad()
def features(backbone: nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    from transferlab.data.loaders import to_float

    backbone.eval()
    out = [backbone(to_float(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float64)


def probe(
    backbone: nn.Module,
    data: dict[str, Any],
    calibration: Sequence[torch.Tensor] = (),
    c_grid: Sequence[float] = C_GRID,
) -> dict[str, float]:
    """Linear-probe accuracy of ``backbone`` on a target dataset (``{"train"|"val"|"test": {x, y}}``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from transferlab.objectives.base import recalibrate_norm_stats

    if calibration:
        recalibrate_norm_stats(backbone, calibration)
    f = {split: features(backbone, data[split]["x"]) for split in ("train", "val", "test")}
    y = {split: data[split]["y"].numpy() for split in ("train", "val", "test")}
    scaler = StandardScaler().fit(f["train"])
    f = {k: scaler.transform(v) for k, v in f.items()}
    best: tuple[float, float, Any] | None = None
    for c in c_grid:
        clf = LogisticRegression(C=c, max_iter=5000).fit(f["train"], y["train"])
        val_acc = float((clf.predict(f["val"]) == y["val"]).mean())
        if best is None or val_acc > best[0]:
            best = (val_acc, c, clf)
    assert best is not None
    val_acc, c, clf = best
    test_acc = float((clf.predict(f["test"]) == y["test"]).mean())
    return {"test_acc": test_acc, "val_acc": val_acc, "C": c}


def calibration_batches(
    source_path: Path, n_batches: int = 10, batch_size: int = 256
) -> list[torch.Tensor]:
    from transferlab.data.loaders import load_dataset

    x = load_dataset(source_path)["train"]["x"]
    return [x[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]


def probe_table(
    data_dir: Path,
    models_dir: Path,
    target: str = "fmnist",
    objectives: Sequence[str] | None = None,
    random_seeds: Sequence[int] = (0, 1, 2),
    init_seed: int | None = None,
) -> list[dict[str, Any]]:
    """One row per objective found (or named), ``init`` (the seed-``init_seed`` random backbone
    the runs start from, if given) and ``random`` (mean over ``random_seeds``)."""
    from transferlab.data.loaders import load_dataset
    from transferlab.models.checkpoint import build_backbone, load_backbone, read_checkpoint

    data = load_dataset(data_dir / "targets" / f"{target}.pt")
    calib = calibration_batches(data_dir / "source.pt")
    names = (
        list(objectives)
        if objectives
        else sorted(p.parent.name for p in models_dir.glob("*/backbone.pt"))
    )
    if not names:
        raise SystemExit(f"no backbones under {models_dir}: run `dvc repro` first")
    rows: list[dict[str, Any]] = []
    arch = None
    for name in names:
        path = models_dir / name / "backbone.pt"
        backbone, meta = load_backbone(path)
        arch = arch or read_checkpoint(path)["arch"]
        rows.append(
            {"backbone": name, "epochs": meta.get("epochs"), **probe(backbone, data, calib)}
        )
    init: dict[str, Any] | None = None
    if init_seed is not None:
        torch.manual_seed(int(init_seed))
        init = {"backbone": "init", "epochs": 0, **probe(build_backbone(arch), data, calib)}
        init["seed"] = int(init_seed)
    random_rows = []
    for seed in random_seeds:
        torch.manual_seed(seed)
        random_rows.append(probe(build_backbone(arch), data, calib))
    accs = [r["test_acc"] for r in random_rows]
    random = {
        "backbone": "random",
        "epochs": 0,
        "test_acc": statistics.fmean(accs),
        "test_acc_std": statistics.pstdev(accs),
        "test_accs": accs,
        "val_acc": statistics.fmean(r["val_acc"] for r in random_rows),
        "C": None,
        "seeds": list(random_seeds),
    }
    for row in rows:
        row["gain_vs_random"] = row["test_acc"] - random["test_acc"]
        if init is not None:
            row["gain_vs_init"] = row["test_acc"] - init["test_acc"]
    if init is not None:
        init["gain_vs_random"] = init["test_acc"] - random["test_acc"]
        rows.append(init)
    return [*rows, random]


def markdown(rows: Sequence[dict[str, Any]], target: str) -> str:
    with_init = any("gain_vs_init" in r for r in rows)
    head = f"| backbone | probe test acc ({target}) | vs random |" + (
        " vs init |" if with_init else ""
    )
    lines = [head + " val acc | C |", "|---" * (5 + with_init) + "|"]
    for r in rows:
        acc = f"{r['test_acc']:.3f}"
        if "test_acc_std" in r:
            acc += f" ± {r['test_acc_std']:.3f} ({len(r['seeds'])} seeds)"
        elif r["backbone"] == "init":
            acc += f" (seed {r['seed']})"
        cells = [
            r["backbone"],
            acc,
            f"{r['gain_vs_random']:+.3f}" if "gain_vs_random" in r else "—",
        ]
        if with_init:
            cells.append(f"{r['gain_vs_init']:+.3f}" if "gain_vs_init" in r else "—")
        cells += [f"{r['val_acc']:.3f}", "—" if r["C"] is None else f"{r['C']:g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path("data/image"))
    p.add_argument("--models-dir", type=Path, default=Path("models/image/pretrain"))
    p.add_argument("--target", default="fmnist")
    p.add_argument("--objectives", nargs="*", default=None, help="default: every backbone found")
    p.add_argument("--random-seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument(
        "--init-seed", type=int, default=None, help="also probe the runs' own init (their seed)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    rows = probe_table(
        args.data_dir,
        args.models_dir,
        args.target,
        args.objectives,
        args.random_seeds,
        args.init_seed,
    )
    print(markdown(rows, args.target))
    if args.json:
        from transferlab.io import write_json

        write_json(args.json, {"target": args.target, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
