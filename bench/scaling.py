"""Time per pre-training epoch as the source set grows and as the model widens."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import growth_exponent, primary, rnd
from bench.flops import count_flops
from bench.mfu import step_probe
from bench.overhead import pretrain_arm


def slice_source(src: Path, dest: Path, n: int) -> None:
    """A copy of the route's data directory whose source train split keeps its first ``n`` items."""
    import torch

    dest.mkdir(parents=True, exist_ok=True)
    data = torch.load(src / "source.pt", map_location="cpu", weights_only=True)
    data["train"] = {k: v[:n] for k, v in data["train"].items()}
    torch.save(data, dest / "source.pt")


def scaling(
    cfg: Any,
    work: Path,
    sizes: Sequence[int],
    width_factors: Sequence[float],
    width_n: int,
    epochs: int = 2,
) -> dict[str, Any]:
    """Seconds per pre-training epoch (the stage's Lightning fit, last of ``epochs``) against the
    number of source images and against a width multiplier of every block."""
    from omegaconf import OmegaConf

    route = "image"
    objective = primary(cfg, route)
    base = Path(cfg.paths.data_dir) / route
    widths = [int(w) for w in cfg.model.image.widths]

    def epoch_time(n: int, factor: float) -> tuple[float, float]:
        tag = f"n{n}_w{factor:g}"
        data_root = work / "scaling" / tag / "data"
        slice_source(base, data_root / route, n)
        run_cfg = OmegaConf.merge(
            cfg,
            {
                "paths": {"data_dir": str(data_root)},
                "pretrain": {"image": {"max_epochs": epochs}},
                "model": {"image": {"widths": [max(1, round(w * factor)) for w in widths]}},
            },
        )
        fit = pretrain_arm("lightning", run_cfg, work / "scaling" / tag, route, objective)
        return fit.epoch_s[-1], fit.step_s

    rows = []
    for n in sizes:
        t, s = epoch_time(n, 1.0)
        rows.append({"n": n, "epoch_s": rnd(t), "step_ms": rnd(s * 1e3, 2)})
    wrows = []
    for f in width_factors:
        t, s = epoch_time(width_n, f)
        _, step = step_probe(
            OmegaConf.merge(
                cfg, {"model": {"image": {"widths": [max(1, round(w * f)) for w in widths]}}}
            ),
            route,
            objective,
            int(cfg.pretrain.image.batch_size),
        )
        flops = count_flops(step)
        wrows.append(
            {
                "width_factor": f,
                "widths": [max(1, round(w * f)) for w in widths],
                "epoch_s": rnd(t),
                "step_ms": rnd(s * 1e3, 2),
                "gflop_per_step": rnd(flops / 1e9),
                "achieved_gflop_s": rnd(flops / s / 1e9, 2),
            }
        )
    return {
        "objective": objective,
        "epochs": epochs,
        "dataset": {
            "rows": rows,
            "exponent": rnd(growth_exponent(sizes, [r["epoch_s"] for r in rows]), 2),
        },
        "width": {
            "n": width_n,
            "rows": wrows,
            "exponent": rnd(growth_exponent(width_factors, [r["epoch_s"] for r in wrows]), 2),
            "flops_exponent": rnd(
                growth_exponent(width_factors, [r["gflop_per_step"] for r in wrows]), 2
            ),
        },
    }
