"""Model FLOP utilisation of pre-training on the CPU, and of ``trainer=gpu`` on a CUDA device."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import primary, rnd
from bench.flops import Gemm, count_flops, matmul_peak, record_gemms, time_gemm
from bench.overhead import pretrain_arm


def step_probe(
    cfg: Any, route: str, objective: str, batch_size: int, device: str = "cpu"
) -> tuple[Any, Callable]:
    """The objective's module as the stage builds it and one real fwd+bwd step at ``batch_size``."""
    from omegaconf import OmegaConf

    from transferlab.data.loaders import load_dataset
    from transferlab.paths import route_dirs
    from transferlab.stages.pretrain import _tensors, build_objective
    from transferlab.training import seed_all

    cfg = OmegaConf.merge(cfg, {"route": route, "objective": objective})
    seed_all(cfg.seed)
    data = load_dataset(route_dirs(cfg, route)["data"] / "source.pt")
    batch = tuple(t[:batch_size].to(device) for t in _tensors(data["train"]))
    module, _ = build_objective(cfg, route, objective)
    module.to(device).train()
    module.on_fit_start()

    def step() -> None:
        module.zero_grad(set_to_none=True)
        module.step(batch)["loss"].backward()

    return module, step


def efficiency(
    cfg: Any,
    route: str,
    objective: str,
    batch_size: int,
    step_s: float,
    bare_step_s: float | None = None,
    min_s: float = 0.1,
) -> dict[str, Any]:
    """MFU of pre-training: counted FLOPs per step ÷ step time ÷ matmul FLOP/s at its shapes."""
    _, step = step_probe(cfg, route, objective, batch_size)
    step()  # warm-up: lazy state, allocator
    flops = count_flops(step)
    gemms = record_gemms(step)
    peak = matmul_peak(gemms, min_s)
    square = Gemm(1, 1024, 1024, 1024)
    square_flops = square.flops / time_gemm(square, min_s)
    achieved = flops / step_s
    return {
        "route": route,
        "objective": objective,
        "batch_size": batch_size,
        "gflop_per_step": rnd(flops / 1e9),
        "gemm_gflop_per_step": rnd(sum(g.flops for g in gemms) / 1e9),
        "step_ms": rnd(step_s * 1e3, 2),
        "achieved_gflop_s": rnd(achieved / 1e9, 2),
        "matmul_gflop_s_at_model_shapes": rnd(peak["flops_per_s"] / 1e9, 2),
        "gemm_only_step_ms": rnd(peak["gemm_s_per_step"] * 1e3, 2),
        "matmul_gflop_s_1024_square": rnd(square_flops / 1e9, 2),
        "mfu": rnd(achieved / peak["flops_per_s"]),
        "mfu_bare_loop": rnd(flops / bare_step_s / peak["flops_per_s"]) if bare_step_s else None,
        "mfu_vs_square": rnd(achieved / square_flops),
        "gemm_shapes": peak["shapes"],
    }


def gpu_section(params: Path, work: Path, width_factor: int = 4, batch_size: int = 1024) -> dict:
    """``trainer=gpu`` pre-training MFU at ``width_factor``× the default widths, against bf16
    matmul FLOP/s at the model's shapes on the same GPU."""
    import torch
    from omegaconf import OmegaConf

    from transferlab.config import compose

    base = OmegaConf.load(params)
    widths = [int(w) * width_factor for w in base.model.image.widths]
    cfg = compose(
        [
            "trainer=gpu",
            f"model.image.widths=[{','.join(map(str, widths))}]",
            f"pretrain.image.batch_size={batch_size}",
            "pretrain.image.max_epochs=2",
        ]
    )
    cfg = OmegaConf.merge(
        cfg,
        {
            "paths": {"data_dir": str(work / "data"), "models_dir": str(work / "gpu")},
            "logger": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}"},
        },
    )
    objective = primary(cfg, "image")
    fit = pretrain_arm("lightning", cfg, work / "gpu", "image", objective)
    _, step = step_probe(cfg, "image", objective, batch_size, device="cuda")
    step()
    flops = count_flops(step)
    gemms = record_gemms(step)
    peak = matmul_peak(gemms, 0.02, device="cuda", dtype=torch.bfloat16)
    achieved = flops / fit.step_s
    return {
        "device": torch.cuda.get_device_name(0),
        "widths": widths,
        "batch_size": batch_size,
        "step_ms": rnd(fit.step_s * 1e3, 3),
        "achieved_tflop_s": rnd(achieved / 1e12, 2),
        "bf16_matmul_tflop_s_at_model_shapes": rnd(peak["flops_per_s"] / 1e12, 2),
        "mfu": rnd(achieved / peak["flops_per_s"]),
    }
