"""What every bench section shares: paths, goals, rounding, the machine, the stage config."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transferlab.run_timing import TIMING_FILE, write_json_atomic

__all__ = [
    "BIN",
    "GOALS",
    "ROOT",
    "SECTIONS",
    "TIMING_FILE",
    "build_data",
    "growth_exponent",
    "machine_info",
    "primary",
    "rnd",
    "stage_config",
    "tool_env",
    "write_json_atomic",
]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GOALS = {"overhead_ratio": 1.05, "mfu": 0.5, "noop_repro_s": 5.0, "loader_vs_model": 1.0}
SECTIONS = ("fits", "overhead", "efficiency", "data", "scaling", "sweep", "pipeline", "gpu")


def growth_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y on log x: y ∝ x^slope."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def rnd(x: float | None, nd: int = 3) -> float | None:
    """A figure as the report keeps it: a float rounded to ``nd`` digits (None stays None)."""
    return None if x is None else round(float(x), nd)


def machine_info() -> dict[str, Any]:
    import torch

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg_1min_start": round(os.getloadavg()[0], 2),
    }


def tool_env() -> dict[str, str]:
    """The environment of the project's tools (dvc, python) run as subprocesses."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true")
    return env


def stage_config(params: Path, work: Path, overrides: Sequence[str] = ()) -> Any:
    """The project's composed config with every output and the MLflow store under ``work``."""
    from transferlab.config import load

    return load(
        params,
        [
            f"paths.data_dir={work / 'data'}",
            f"paths.models_dir={work / 'models'}",
            f"paths.reports_dir={work / 'reports'}",
            f"logger.tracking_uri=sqlite:///{work / 'mlflow.db'}",
            *overrides,
        ],
    )


def primary(cfg: Any, route: str) -> str:
    """The route's primary objective (``pretrain.<route>.primary``)."""
    from transferlab.routes import get_route

    return get_route(cfg, route).primary()


def build_data(cfg: Any, route: str) -> float:
    """Run the data stage for ``route`` (into ``cfg.paths.data_dir``); returns its seconds."""
    from omegaconf import OmegaConf

    from transferlab.runtime import StageRuntime
    from transferlab.stages import data

    t = time.perf_counter()
    run_cfg = OmegaConf.merge(cfg, {"route": route, "trainer": {"enable_progress_bar": False}})
    data.run(run_cfg, StageRuntime(run_cfg))
    return time.perf_counter() - t
