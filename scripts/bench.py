"""`make bench`: framework overhead, CPU efficiency, data path, pipeline and scaling figures.

Every figure is a ratio or a time measured side by side in this run, on this machine, with the
project's ``params.yaml`` (default models, default batch sizes, real data built into a temporary
directory by the data stage):

- **overhead** — the stage's own Lightning fit (``make_trainer`` with its callbacks, MLflow logger
  and progress bar, run through ``pretrain.run`` / ``finetune_one``) against a bare PyTorch loop on
  the same module, loaders, optimiser, schedule, seeds and number of steps. The bare loop is
  swapped in for ``make_trainer`` inside the very same stage code, so both arms build identical
  models from identical data; the final weights are compared bit for bit.
- **efficiency** — model FLOP/s in pre-training (FLOPs of one fwd+bwd step counted with
  ``FlopCounterMode``, divided by the stage's median step time) ÷ the dense-matmul FLOP/s of this
  machine at the GEMM shapes that step lowers to (convolutions as im2col GEMMs, attention as
  batched GEMMs), timed here with the same threads.
- **data path** — loader samples/s against model samples/s, and the share of a step spent
  waiting for its batch.
- **pipeline** — the last ``make run`` recorded in ``reports/run_timing.json`` (per-stage times from
  its MLflow runs), a no-op ``dvc repro`` (only when ``dvc status`` says the pipeline is up to date),
  each stage's start-up imports, and a sweep's overhead per trial beyond training.
- **scaling** — time per epoch as the pre-training set grows and as the model widens, with the
  growth exponent of a log-log fit.

Writes ``reports/bench.json`` and prints a table::

    python scripts/bench.py                          # everything (~5 min on 2 cores)
    python scripts/bench.py --sections overhead efficiency
    python scripts/bench.py record-run --pipeline-id ID --start EPOCH --exit-code RC   # make run
    python scripts/bench.py --pruning                # also the Optuna pruning benchmark

On a CUDA machine (``torch.cuda.is_available()``), section ``gpu`` measures the pre-training MFU of
``trainer=gpu`` (bf16-mixed, torch.compile, pinned memory) at larger model sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GOALS = {"overhead_ratio": 1.05, "mfu": 0.5, "noop_repro_s": 5.0, "loader_vs_model": 1.0}
SECTIONS = ("overhead", "efficiency", "data", "scaling", "sweep", "pipeline", "gpu")
STAGE_MODULES = {
    "data": "data",
    "pretrain": "pretrain",
    "finetune": "finetune",
    "evaluate": "evaluate",
    "shift-analysis": "shift",
    "curves": "curves",
    "summary": "summary",
}
TIMING_FILE = Path("reports") / "run_timing.json"


# ---------------------------------------------------------------------------------------- utils
def write_json_atomic(path: Path, data: Any) -> None:
    """Write-then-rename: a killed writer never leaves half a file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the report from other users
    os.replace(tmp, path)


def growth_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y on log x: y ∝ x^slope."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def _r(x: float | None, nd: int = 3) -> float | None:
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


# ------------------------------------------------------------------------------- FLOPs and GEMMs
@dataclass(frozen=True)
class Gemm:
    """One dense matmul ``(batch × m × k) @ (batch × k × n)``."""

    batch: int
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n


def _sdpa_flops() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for CPU flash attention, which ``FlopCounterMode`` does not know (torch 2.13)."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def fwd(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
        return fc.sdpa_flop_count(q, k, v)

    def bwd(go: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
        return fc.sdpa_backward_flop_count(go, q, k, v)

    return {
        aten._scaled_dot_product_flash_attention_for_cpu: fwd,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd,
    }


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` (e.g. one forward + backward) as torch's FlopCounterMode counts them:
    matmuls, convolutions and attention; elementwise work is not counted (the usual MFU rule)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_sdpa_flops()) as counter:
        fn()
    return int(counter.get_total_flops())


def record_gemms(fn: Callable[[], Any]) -> list[Gemm]:
    """The dense GEMMs ``fn()`` lowers to, one entry per call: matmuls as they are, convolutions as
    their im2col GEMMs (forward, grad-input, grad-weight), attention as its batched GEMMs."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    found: list[Gemm] = []

    def conv(x: Any, w: Any, out: Any, transposed: bool, groups: int, mask: Sequence[bool]) -> None:
        kk = math.prod(w.shape[2:])
        if not transposed:  # weight (Cout, Cin/g, k...): out = cols (M×K) @ Wᵀ (K×N)
            m, k, n = out.shape[0] * math.prod(out.shape[2:]), w.shape[1] * kk, w.shape[0] // groups
        else:  # weight (Cin, Cout/g, k...): the col2im GEMM on the input
            m, k, n = x.shape[0] * math.prod(x.shape[2:]), w.shape[0] // groups, w.shape[1] * kk
        if mask[0]:
            found.append(Gemm(groups, m, k, n))
        if mask[1]:  # grad-input: dOut (M×N) @ W (N×K)
            found.append(Gemm(groups, m, n, k))
        if mask[2]:  # grad-weight: dOutᵀ (N×M) @ cols (M×K)
            found.append(Gemm(groups, n, m, k))

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
            out = func(*args, **(kwargs or {}))
            op = func.overloadpacket
            if op is aten.mm:
                a, b = args[0], args[1]
                found.append(Gemm(1, a.shape[0], a.shape[1], b.shape[1]))
            elif op is aten.addmm:
                a, b = args[1], args[2]
                found.append(Gemm(1, a.shape[0], a.shape[1], b.shape[1]))
            elif op in (aten.bmm, aten.baddbmm):
                a, b = (args[0], args[1]) if op is aten.bmm else (args[1], args[2])
                found.append(Gemm(a.shape[0], a.shape[1], a.shape[2], b.shape[2]))
            elif op is aten.convolution:
                conv(args[0], args[1], out, bool(args[6]), int(args[8]), (True, False, False))
            elif op is aten.convolution_backward:
                go, x, w = args[0], args[1], args[2]
                m = list(args[10])
                conv(x, w, go, bool(args[7]), int(args[9]), (False, m[0], m[1]))
            elif op is aten._scaled_dot_product_flash_attention_for_cpu:
                q, k, v = args[0], args[1], args[2]
                bh, t, s = q.shape[0] * q.shape[1], q.shape[2], k.shape[2]
                found.extend([Gemm(bh, t, q.shape[3], s), Gemm(bh, t, s, v.shape[3])])
            elif op is aten._scaled_dot_product_flash_attention_for_cpu_backward:
                q, k, v = args[1], args[2], args[3]
                bh, t, s, d, dv = (
                    q.shape[0] * q.shape[1],
                    q.shape[2],
                    k.shape[2],
                    q.shape[3],
                    v.shape[3],
                )
                found.extend(  # scores recomputed, then dScores, dV, dQ, dK (as torch counts)
                    [
                        Gemm(bh, t, d, s),
                        Gemm(bh, t, dv, s),
                        Gemm(bh, s, t, dv),
                        Gemm(bh, t, s, d),
                        Gemm(bh, d, t, s),
                    ]
                )
            return out

    with Recorder():
        fn()
    return found


def time_gemm(
    g: Gemm, min_s: float = 0.1, device: str = "cpu", dtype: Any = None, reps: int = 5
) -> float:
    """Best seconds of one ``torch.mm``/``bmm`` at this shape over at least ``reps`` runs and
    ``min_s`` seconds: the machine's capability, as little disturbed by other load as we can."""
    import torch

    dtype = dtype or torch.float32
    shape_a = (g.batch, g.m, g.k) if g.batch > 1 else (g.m, g.k)
    shape_b = (g.batch, g.k, g.n) if g.batch > 1 else (g.k, g.n)
    a = torch.randn(shape_a, device=device, dtype=dtype)
    b = torch.randn(shape_b, device=device, dtype=dtype)
    mm = torch.bmm if g.batch > 1 else torch.mm
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    mm(a, b)
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps or time.perf_counter() - start < min_s:
        t = time.perf_counter()
        mm(a, b)
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak(
    gemms: Sequence[Gemm], min_s: float = 0.1, device: str = "cpu", dtype: Any = None
) -> dict[str, Any]:
    """Dense-matmul FLOP/s at the model's own shapes: Σ flops / Σ time over the step's GEMMs."""
    counts: dict[Gemm, int] = {}
    for g in gemms:
        counts[g] = counts.get(g, 0) + 1
    per_shape = []
    flops = secs = 0.0
    for g, c in counts.items():
        t = time_gemm(g, min_s, device, dtype)
        flops += c * g.flops
        secs += c * t
        per_shape.append(
            {"bmkn": [g.batch, g.m, g.k, g.n], "calls": c, "gflop_s": _r(g.flops / t / 1e9, 1)}
        )
    return {
        "flops_per_s": flops / secs if secs else 0.0,
        "gemm_s_per_step": secs,
        "shapes": per_shape,
    }


# ------------------------------------------------------------------------- the two training arms
@dataclass
class FitRecord:
    """One fit as an arm saw it: wall times, per-step start times per epoch, the trained module."""

    arm: str
    build_s: float
    fit_s: float
    epochs: list[list[float]]  # per epoch: the perf_counter of each step's start
    epoch_s: list[float]  # per epoch: start of its first step → end of the epoch (incl. validation)
    data_wait_s: float | None = None
    batch_size: int = 0
    cpu_s: float = 0.0  # process CPU time of the fit: less sensitive to other load than wall time
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return sum(len(e) for e in self.epochs)

    @property
    def step_s(self) -> float:
        """Median interval between consecutive step starts within an epoch (data, step, hooks)."""
        gaps = [b - a for e in self.epochs for a, b in itertools.pairwise(e)]
        return statistics.median(gaps) if gaps else self.fit_s / max(self.steps, 1)

    @property
    def total_s(self) -> float:
        return self.build_s + self.fit_s


def _step_timer() -> Any:
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.epochs: list[list[float]] = []
            self.epoch_s: list[float] = []
            self.batch_size = 0

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.epochs.append([])

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
            self.epochs[-1].append(time.perf_counter())
            if not self.batch_size:
                self.batch_size = len(batch[0] if isinstance(batch, list | tuple) else batch)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if self.epochs and self.epochs[-1]:
                self.epoch_s.append(time.perf_counter() - self.epochs[-1][0])

    return StepTimer()


def _limit(n: int, limit: int | float | None) -> int:
    if limit is None:
        return n
    return min(n, int(limit)) if isinstance(limit, int) else int(n * float(limit))


def bare_losses(module: Any, batch: Any) -> Any:
    """The loss a stage module trains on, without Lightning (logging, metrics, hooks)."""
    from transferlab.finetune.module import FinetuneModule

    if isinstance(module, FinetuneModule):
        from transferlab.objectives.losses import supervised_ce

        if module.tasks or module.reg_name != "none" or module.align_kind != "none":
            raise NotImplementedError("the bare loop covers single-task fine-tuning only")
        x, y = batch
        return supervised_ce(module(x), y, module.label_smoothing)
    return module.step(batch)["loss"]


class BareTrainer:
    """What ``make_trainer`` returns in the bare arm: a plain PyTorch loop with the Trainer's
    semantics for the stage's module (optimiser and schedule from ``configure_optimizers``, the
    sampler's ``set_epoch``, the ``EpochSeed`` re-seeding, validation after every epoch), and
    nothing else: no logging, no metrics, no progress bar, no checkpoints."""

    is_global_zero = True

    def __init__(
        self,
        *,
        max_epochs: int,
        callbacks: Sequence[Any] = (),
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        record: Callable[[FitRecord], None] = lambda r: None,
        build_s: float = 0.0,
        **_: Any,
    ) -> None:
        from transferlab.resume import EpochSeed

        self.max_epochs = int(max_epochs)
        self.seeders = [cb for cb in callbacks if isinstance(cb, EpochSeed)]
        self.limits = (limit_train_batches, limit_val_batches)
        self.record = record
        self.build_s = build_s
        self.current_epoch = 0

    def fit(self, module: Any, train: Any, val: Any = None, **_: Any) -> None:
        import torch

        t_fit, c_fit = time.perf_counter(), time.process_time()
        conf = module.configure_optimizers()
        sched, interval = None, "epoch"
        if isinstance(conf, Mapping):
            opt, lr = conf["optimizer"], conf.get("lr_scheduler")
            if isinstance(lr, Mapping):
                sched, interval = lr["scheduler"], lr.get("interval", "epoch")
            else:
                sched = lr
        else:
            opt = conf
        n_train = _limit(len(train), self.limits[0])
        n_val = _limit(len(val), self.limits[1]) if val is not None else 0
        epochs: list[list[float]] = []
        epoch_s: list[float] = []
        wait = 0.0
        module.train()
        module.on_fit_start()
        for epoch in range(self.max_epochs):
            self.current_epoch = epoch
            if hasattr(train.sampler, "set_epoch"):
                train.sampler.set_epoch(epoch)
            for cb in self.seeders:
                cb.on_train_epoch_start(self, module)
            starts: list[float] = []
            batches = iter(train)
            for _ in range(n_train):
                t = time.perf_counter()
                starts.append(t)
                batch = next(batches)
                wait += time.perf_counter() - t
                loss = bare_losses(module, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if hasattr(module, "remember_inputs"):  # the pretrain modules' batch-end hook
                    module.remember_inputs(batch)
                if sched is not None and interval == "step":
                    sched.step()
            if n_val:
                module.eval()
                module.on_validation_epoch_start()
                with torch.no_grad():
                    vb = iter(val)
                    for _ in range(n_val):
                        bare_losses(module, next(vb))
                module.train()
            if sched is not None and interval == "epoch":
                sched.step()
            epochs.append(starts)
            epoch_s.append(time.perf_counter() - starts[0] if starts else 0.0)
        module.on_fit_end()
        self.record(
            FitRecord(
                "bare",
                self.build_s,
                time.perf_counter() - t_fit,
                epochs,
                epoch_s,
                data_wait_s=wait,
                batch_size=int(getattr(train, "batch_size", 0) or 0),
                state=_state(module),
                cpu_s=time.process_time() - c_fit,
            )
        )


def _state(module: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@contextlib.contextmanager
def stage_trainers(arm: str) -> Iterator[list[FitRecord]]:
    """Swap ``make_trainer`` inside the pretrain and finetune stages for one arm's trainer.

    ``lightning``: the stage's own trainer plus a step timer; ``bare``: :class:`BareTrainer`.
    Yields the list the fits are recorded in.
    """
    from transferlab.stages import finetune, pretrain

    original = pretrain.make_trainer
    fits: list[FitRecord] = []

    def make(trainer_cfg: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        if arm == "bare":
            return BareTrainer(**kw, record=fits.append, build_s=time.perf_counter() - t0)
        timer = _step_timer()
        trainer = original(trainer_cfg, **{**kw, "callbacks": [*kw.get("callbacks", ()), timer]})
        build_s = time.perf_counter() - t0
        fit = trainer.fit

        def timed_fit(module: Any, *args: Any, **kwargs: Any) -> Any:
            t, c = time.perf_counter(), time.process_time()
            try:
                return fit(module, *args, **kwargs)
            finally:
                fits.append(
                    FitRecord(
                        "lightning",
                        build_s,
                        time.perf_counter() - t,
                        timer.epochs,
                        timer.epoch_s,
                        batch_size=timer.batch_size,
                        state=_state(module),
                        cpu_s=time.process_time() - c,
                    )
                )

        trainer.fit = timed_fit
        return trainer

    pretrain.make_trainer = finetune.make_trainer = make
    try:
        yield fits
    finally:
        pretrain.make_trainer = finetune.make_trainer = original


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


def build_data(cfg: Any, route: str) -> float:
    """Run the data stage for ``route`` (into ``cfg.paths.data_dir``); returns its seconds."""
    from omegaconf import OmegaConf

    from transferlab.stages import data

    t = time.perf_counter()
    data.run(OmegaConf.merge(cfg, {"route": route, "trainer": {"enable_progress_bar": False}}))
    return time.perf_counter() - t


def pretrain_arm(arm: str, cfg: Any, work: Path, route: str, objective: str) -> FitRecord:
    """One pre-training of ``objective`` through the stage's ``run`` (outputs under ``work``)."""
    from omegaconf import OmegaConf

    from transferlab.config import validate
    from transferlab.stages import pretrain

    cfg = OmegaConf.merge(
        cfg, {"route": route, "objective": objective, "paths": {"models_dir": str(work)}}
    )
    validate(cfg, "pretrain")
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(work), stage_trainers(arm) as fits:
        pretrain.run(cfg)
    return fits[-1]


def finetune_arm(arm: str, cfg: Any, work: Path, target: str, variant: str) -> FitRecord:
    """One fine-tuning fit through the stage's ``finetune_one``, logged to MLflow like the stage."""
    from transferlab.data.loaders import load_dataset
    from transferlab.stages.common import configure_torch, route_dirs
    from transferlab.stages.finetune import finetune_one
    from transferlab.tracking import StageRun

    configure_torch(cfg.trainer)  # as the finetune stage does before its fits
    data = load_dataset(route_dirs(cfg, "image")["data"] / "targets" / f"{target}.pt")
    work.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.chdir(work),
        stage_trainers(arm) as fits,
        StageRun(cfg, "finetune", tags={"run_name": "bench:finetune"}) as tr,
    ):
        logger = tr.lightning_logger(f"bench:{target}:{variant}")
        finetune_one(cfg, "image", target, variant, data, logger)
    return fits[-1]


def same_weights(a: FitRecord, b: FitRecord) -> bool:
    import torch

    return a.state.keys() == b.state.keys() and all(
        torch.equal(a.state[k], b.state[k]) for k in a.state
    )


def compare_arms(runs: Sequence[tuple[FitRecord, FitRecord]], label: str) -> dict[str, Any]:
    """Overhead of the Lightning arm over the bare one; the best of the repeats of each arm."""
    light = min((r[0] for r in runs), key=lambda r: r.total_s)
    bare = min((r[1] for r in runs), key=lambda r: r.total_s)
    return {
        "label": label,
        "steps": light.steps,
        "epochs": len(light.epochs),
        "batch_size": light.batch_size,
        "repeats": len(runs),
        "lightning_s": _r(light.total_s),
        "lightning_build_s": _r(light.build_s),
        "bare_s": _r(bare.total_s),
        "ratio": _r(light.total_s / bare.total_s),
        "all_lightning_s": [_r(r[0].total_s) for r in runs],
        "all_bare_s": [_r(r[1].total_s) for r in runs],
        "lightning_step_ms": _r(light.step_s * 1e3, 2),
        "bare_step_ms": _r(bare.step_s * 1e3, 2),
        "step_ratio": _r(light.step_s / bare.step_s),
        "cpu_ratio": _r(min(r[0].cpu_s for r in runs) / min(r[1].cpu_s for r in runs)),
        "same_steps": light.steps == bare.steps,
        "same_weights": same_weights(light, bare),
        "_light": light,
        "_bare": bare,
    }


# ---------------------------------------------------------------------------------- efficiency
def step_probe(
    cfg: Any, route: str, objective: str, batch_size: int, device: str = "cpu"
) -> tuple[Any, Callable]:
    """The objective's module as the stage builds it and one real fwd+bwd step at ``batch_size``."""
    from omegaconf import OmegaConf

    from transferlab.data.loaders import load_dataset
    from transferlab.stages.common import route_dirs, seed_all
    from transferlab.stages.pretrain import _tensors, build_objective

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
        "gflop_per_step": _r(flops / 1e9),
        "gemm_gflop_per_step": _r(sum(g.flops for g in gemms) / 1e9),
        "step_ms": _r(step_s * 1e3, 2),
        "achieved_gflop_s": _r(achieved / 1e9, 2),
        "matmul_gflop_s_at_model_shapes": _r(peak["flops_per_s"] / 1e9, 2),
        "gemm_only_step_ms": _r(peak["gemm_s_per_step"] * 1e3, 2),
        "matmul_gflop_s_1024_square": _r(square_flops / 1e9, 2),
        "mfu": _r(achieved / peak["flops_per_s"]),
        "mfu_bare_loop": _r(flops / bare_step_s / peak["flops_per_s"]) if bare_step_s else None,
        "mfu_vs_square": _r(achieved / square_flops),
        "gemm_shapes": peak["shapes"],
    }


# ----------------------------------------------------------------------------------- data path
def loader_rate(loader: Any, max_batches: int | None = None) -> float:
    """Samples/s of iterating ``loader`` and converting its inputs as a step does."""
    from transferlab.data.loaders import to_float

    n = 0
    t = time.perf_counter()
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x = batch[0] if isinstance(batch, list | tuple) else batch
        to_float(x)
        n += len(x)
    return n / (time.perf_counter() - t)


def data_path(
    cfg: Any, route: str, split: dict[str, Any], batch_size: int, fit: FitRecord, bare: FitRecord
) -> dict[str, Any]:
    """Loader throughput against model throughput; the per-sample baseline for comparison."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from transferlab.data.loaders import make_loader

    tensors = [split[k] for k in ("x", "y") if k in split]
    loader = make_loader(*tensors, batch_size=batch_size, shuffle=True, seed=int(cfg.seed))
    rate = loader_rate(loader)
    naive = DataLoader(
        TensorDataset(*tensors),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    naive_rate = loader_rate(naive, max_batches=max(2, 2048 // batch_size))
    model_rate = batch_size / fit.step_s
    train_s = sum(e[-1] - e[0] for e in bare.epochs if len(e) > 1) or bare.fit_s
    return {
        "route": route,
        "batch_size": batch_size,
        "loader_samples_s": round(rate),
        "per_sample_loader_samples_s": round(naive_rate),
        "model_samples_s": round(model_rate),
        "loader_vs_model": _r(rate / model_rate, 1),
        "data_wait_share": _r((bare.data_wait_s or 0.0) / train_s, 4),
    }


# ------------------------------------------------------------------------------------- scaling
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

    route, objective = "image", str(cfg.objective)
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
        rows.append({"n": n, "epoch_s": _r(t), "step_ms": _r(s * 1e3, 2)})
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
                "epoch_s": _r(t),
                "step_ms": _r(s * 1e3, 2),
                "gflop_per_step": _r(flops / 1e9),
                "achieved_gflop_s": _r(flops / s / 1e9, 2),
            }
        )
    return {
        "objective": objective,
        "epochs": epochs,
        "dataset": {
            "rows": rows,
            "exponent": _r(growth_exponent(sizes, [r["epoch_s"] for r in rows]), 2),
        },
        "width": {
            "n": width_n,
            "rows": wrows,
            "exponent": _r(growth_exponent(width_factors, [r["epoch_s"] for r in wrows]), 2),
            "flops_exponent": _r(
                growth_exponent(width_factors, [r["gflop_per_step"] for r in wrows]), 2
            ),
        },
    }


# ---------------------------------------------------------------------------------- pipeline
def record_run(project: Path, pipeline_id: str, start: float, exit_code: int) -> Path:
    """Append a ``make run`` to ``reports/run_timing.json`` (kept out of DVC; last 20 runs)."""
    path = project / TIMING_FILE
    runs: list[dict[str, Any]] = []
    with contextlib.suppress(OSError, ValueError, KeyError):
        runs = list(json.loads(path.read_text())["runs"])
    end = time.time()
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=False
    ).stdout.strip()
    runs.append(
        {
            "pipeline_id": pipeline_id,
            "command": "dvc repro",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start)),
            "wall_s": round(end - start, 2),
            "exit_code": int(exit_code),
            "git_commit": commit or "unknown",
            "machine": {"cpu": _cpu_model(), "nproc": len(os.sched_getaffinity(0))},
        }
    )
    write_json_atomic(path, {"runs": runs[-20:]})
    return path


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _tracking_uri(project: Path) -> str | None:
    """The project's MLflow store (``logger.tracking_uri``), sqlite paths made absolute; None if
    it is a sqlite file that does not exist (searching would create an empty one)."""
    uri = "sqlite:///mlflow.db"
    with contextlib.suppress(Exception):
        from omegaconf import OmegaConf

        uri = str(OmegaConf.load(project / "params.yaml").logger.tracking_uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        path = path if path.is_absolute() else project / path
        return f"sqlite:///{path}" if path.exists() else None
    return uri


def stage_runs(tracking_uri: str, pipeline_id: str) -> list[dict[str, Any]]:
    """Top-level MLflow runs tagged with ``pipeline_id``: one per stage execution."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        ids, filter_string=f"tags.`pipeline.id` = '{pipeline_id}'", max_results=5000
    )
    out = []
    for r in runs:
        if "mlflow.parentRunId" in r.data.tags or r.info.end_time is None:
            continue
        out.append(
            {
                "stage": r.data.tags.get("dvc.stage", r.data.tags.get("transferlab.stage", "?")),
                "status": r.info.status,
                "start": r.info.start_time / 1000,
                "seconds": round((r.info.end_time - r.info.start_time) / 1000, 2),
            }
        )
    return sorted(out, key=lambda r: r["start"])


def dvc_stages(project: Path) -> list[str]:
    proc = subprocess.run(
        [str(BIN / "dvc"), "stage", "list", "--name-only"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
        env=_env(),
    )
    return proc.stdout.split() if proc.returncode == 0 else []


def last_pipeline_run(project: Path) -> dict[str, Any]:
    """The latest recorded ``make run`` in which stages ran, with per-stage MLflow durations."""
    path = project / TIMING_FILE
    if not path.exists():
        return {"recorded": False, "note": f"no `make run` recorded yet ({TIMING_FILE} is missing)"}
    runs = json.loads(path.read_text()).get("runs", [])
    uri = _tracking_uri(project)
    if uri is None:
        return {"recorded": False, "note": "the project's MLflow store does not exist"}
    all_stages = dvc_stages(project)
    for rec in reversed(runs):
        stages = stage_runs(uri, rec["pipeline_id"])
        if not stages:
            continue  # a no-op `make run`: nothing ran
        done = {s["stage"] for s in stages}
        in_stages = sum(s["seconds"] for s in stages)
        return {
            "recorded": True,
            **{
                k: rec[k]
                for k in ("pipeline_id", "started_at", "wall_s", "exit_code", "git_commit")
            },
            "machine": rec.get("machine"),
            "complete": bool(all_stages) and set(all_stages) <= done,
            "missing_stages": sorted(set(all_stages) - done),
            "stages": [{k: s[k] for k in ("stage", "status", "seconds")} for s in stages],
            "in_stage_runs_s": round(in_stages, 1),
            "outside_stage_runs_s": round(rec["wall_s"] - in_stages, 1),
        }
    return {"recorded": False, "note": "no recorded `make run` ran any stage (all were no-ops)"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true")
    return env


def noop_repro(project: Path, repeats: int = 2) -> dict[str, Any]:
    """Wall time of ``dvc repro`` when nothing changed; not run unless ``dvc status`` is clean."""
    if not (project / "dvc.lock").exists():
        return {"measured": False, "note": "no dvc.lock: run `make run` first"}
    dvc = str(BIN / "dvc")
    t = time.perf_counter()
    st = subprocess.run(
        [dvc, "status", "--json"], cwd=project, capture_output=True, text=True, env=_env()
    )
    status_s = time.perf_counter() - t
    try:
        changed = json.loads(st.stdout or "{}")
    except ValueError:
        changed = {"?": st.stdout[-200:] + st.stderr[-200:]}
    if st.returncode != 0 or changed:
        return {
            "measured": False,
            "status_s": _r(status_s, 2),
            "changed_stages": sorted(changed)[:20],
            "note": "the pipeline is not up to date, so `dvc repro` would run stages: not timed",
        }
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        proc = subprocess.run(
            [dvc, "repro"], cwd=project, capture_output=True, text=True, env=_env()
        )
        times.append(time.perf_counter() - t)
        if proc.returncode != 0:
            return {"measured": False, "note": f"dvc repro failed: {proc.stderr[-300:]}"}
    return {"measured": True, "status_s": _r(status_s, 2), "repro_s": [_r(x, 2) for x in times]}


def startup_times(project: Path) -> dict[str, Any]:
    """Seconds a fresh interpreter needs for the imports a stage pays before any work
    (``transferlab.cli``, the stage module, and ``mlflow`` for its tracking run)."""

    def wall(code: str) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=_env(), cwd=project)
        return round(time.perf_counter() - t, 2)

    out: dict[str, Any] = {"python": wall("pass")}
    for mod in ("torch", "lightning", "mlflow"):
        out[f"import {mod}"] = wall(f"import {mod}")
    stages = {
        stage: wall(f"import transferlab.cli, transferlab.stages.{mod}, mlflow")
        for stage, mod in STAGE_MODULES.items()
    }
    if (project / "params.yaml").exists():
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "transferlab", "validate"],
            cwd=project,
            capture_output=True,
            env=_env(),
        )
        out["transferlab validate"] = round(time.perf_counter() - t, 2)
    return {"imports": out, "stages": stages}


def sweep_overhead(
    cfg: Any, work: Path, models_dir: Path, n_trials: int, fit_s: float, target: str
) -> dict[str, Any]:
    """A fixed-point Optuna sweep of ``n_trials`` identical trials (the search space pinned to the
    config's values, so each trial is the fine-tuning fit timed in-process): time per trial
    beyond that fit (process start-up, study, config, data, model, MLflow)."""
    import optuna

    fcfg = cfg.finetune
    storage = f"sqlite:///{work / 'optuna.db'}"
    cmd = [
        sys.executable,
        "-m",
        "transferlab.sweep",
        "-m",
        "hparams_search=lr_freeze_wd",
        "hydra/sweeper/pruner=nop",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=bench",
        "hydra.sweeper.export_best=false",
        f"hydra.sweep.dir={work / 'multirun'}",
        f"sweep.target={target}",
        f"paths.data_dir={cfg.paths.data_dir}",
        f"paths.models_dir={models_dir}",
        f"logger.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        f"finetune.lr=choice({fcfg.lr})",  # a one-point space: every trial is the same fit
        f"finetune.freeze_depth={fcfg.freeze_depth}",
        f"finetune.weight_decay={fcfg.weight_decay}",
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"measured": False, "note": (proc.stdout + proc.stderr)[-600:]}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name="bench", storage=storage).get_trials()
    durations = [
        (tr.datetime_complete - tr.datetime_start).total_seconds()
        for tr in trials
        if tr.datetime_complete and tr.datetime_start
    ]
    n = len(durations)
    return {
        "measured": True,
        "trials": n,
        "sweep_wall_s": _r(wall, 2),
        "fit_s": _r(fit_s, 2),
        "trial_s": [_r(d, 2) for d in durations],
        "outside_trials_s": _r(wall - sum(durations), 2),
        "per_trial_overhead_s": _r((wall - n * fit_s) / n, 2) if n else None,
        # After the first trial, which also pays the imports (lightning, the stage modules):
        "steady_trial_overhead_s": _r(statistics.median(durations[1:]) - fit_s, 2)
        if n > 1
        else None,
        "per_trial_overhead_share": _r((wall - n * fit_s) / wall, 3) if n else None,
    }


# ------------------------------------------------------------------------------------------ GPU
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
    fit = pretrain_arm("lightning", cfg, work / "gpu", "image", str(cfg.objective))
    _, step = step_probe(cfg, "image", str(cfg.objective), batch_size, device="cuda")
    step()
    flops = count_flops(step)
    gemms = record_gemms(step)
    peak = matmul_peak(gemms, 0.02, device="cuda", dtype=torch.bfloat16)
    achieved = flops / fit.step_s
    return {
        "device": torch.cuda.get_device_name(0),
        "widths": widths,
        "batch_size": batch_size,
        "step_ms": _r(fit.step_s * 1e3, 3),
        "achieved_tflop_s": _r(achieved / 1e12, 2),
        "bf16_matmul_tflop_s_at_model_shapes": _r(peak["flops_per_s"] / 1e12, 2),
        "mfu": _r(achieved / peak["flops_per_s"]),
    }


# --------------------------------------------------------------------------------------- report
def goals(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue #9 with its measured value and whether it is met (None: not measured)."""
    rows: list[dict[str, Any]] = []

    def add(figure: str, value: Any, goal: str, met: bool | None) -> None:
        rows.append({"figure": figure, "value": value, "goal": goal, "met": met})

    for key, o in result.get("overhead", {}).items():
        add(
            f"overhead {key}",
            o["ratio"],
            f"<= {GOALS['overhead_ratio']}",
            o["ratio"] <= GOALS["overhead_ratio"],
        )
    for key, e in result.get("efficiency", {}).items():
        add(f"MFU {key}", e["mfu"], f">= {GOALS['mfu']}", e["mfu"] >= GOALS["mfu"])
    for key, d in result.get("data", {}).items():
        add(
            f"loader/model {key}",
            d["loader_vs_model"],
            "> 1",
            d["loader_vs_model"] > GOALS["loader_vs_model"],
        )
    noop = result.get("pipeline", {}).get("noop_repro")
    if noop is not None:
        best = min(noop["repro_s"]) if noop.get("measured") else None
        add(
            "no-op dvc repro s",
            best,
            f"< {GOALS['noop_repro_s']}",
            None if best is None else best < GOALS["noop_repro_s"],
        )
    return rows


def table(result: Mapping[str, Any]) -> str:
    """The figures as a plain-text table (what `make bench` prints)."""
    lines: list[str] = []
    m = result["machine"]
    lines.append(
        f"transferlab bench — {m['cpu']}, {m['nproc']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), 1-min load {m.get('loadavg_1min_start')}→"
        f"{m.get('loadavg_1min_end')}, bench wall {result.get('wall_s', 0):.0f} s"
    )
    rows: list[tuple[str, str, str]] = []

    def row(section: str, figure: str, value: str) -> None:
        rows.append((section, figure, value))

    for key, o in result.get("overhead", {}).items():
        row(
            "overhead",
            f"{key}: {o['label']}, {o['steps']} steps",
            f"{o['ratio']:.3f}× ({o['lightning_s']:.2f} s vs {o['bare_s']:.2f} s; CPU time "
            f"{o['cpu_ratio']:.3f}×); per step {o['step_ratio']:.3f}× ({o['lightning_step_ms']:.1f}"
            f" vs {o['bare_step_ms']:.1f} ms); same weights: {'yes' if o['same_weights'] else 'NO'}",
        )
    for key, e in result.get("efficiency", {}).items():
        row(
            "efficiency",
            f"{key}: {e['objective']}, batch {e['batch_size']}",
            f"MFU {e['mfu']:.2f} ({e['achieved_gflop_s']:.1f} GFLOP/s of "
            f"{e['matmul_gflop_s_at_model_shapes']:.1f} at its GEMM shapes; "
            f"{e['gflop_per_step']:.3f} GFLOP/step in {e['step_ms']:.1f} ms; bare loop "
            f"{e['mfu_bare_loop']}; 1024³ matmul {e['matmul_gflop_s_1024_square']:.1f})",
        )
    for key, d in result.get("data", {}).items():
        row(
            "data path",
            f"{key}: batch {d['batch_size']}",
            f"loader {d['loader_samples_s']:,}/s vs model {d['model_samples_s']:,}/s "
            f"({d['loader_vs_model']}×); waiting {100 * d['data_wait_share']:.2f} % of a step; "
            f"per-sample DataLoader {d['per_sample_loader_samples_s']:,}/s",
        )
    p = result.get("pipeline", {})
    if "last_run" in p:
        lr = p["last_run"]
        if lr.get("recorded"):
            slow = sorted(lr["stages"], key=lambda s: -s["seconds"])[:3]
            row(
                "pipeline",
                f"last recorded `make run` ({lr['started_at']}, {'complete' if lr['complete'] else 'partial'})",
                f"{lr['wall_s']:.0f} s wall; {lr['in_stage_runs_s']:.0f} s in {len(lr['stages'])} "
                f"stage runs, {lr['outside_stage_runs_s']:.0f} s outside (start-up, DVC); slowest "
                + ", ".join(f"{s['stage']} {s['seconds']:.0f} s" for s in slow),
            )
        else:
            row("pipeline", "last recorded `make run`", lr["note"])
    if "noop_repro" in p:
        n = p["noop_repro"]
        row(
            "pipeline",
            "no-op dvc repro",
            f"{min(n['repro_s']):.2f} s (runs {n['repro_s']}; dvc status {n['status_s']} s)"
            if n.get("measured")
            else n["note"],
        )
    if "startup" in p:
        s = p["startup"]
        row(
            "pipeline",
            "stage start-up (imports)",
            ", ".join(f"{k} {v:.1f} s" for k, v in s["stages"].items()),
        )
        row("pipeline", "imports", ", ".join(f"{k} {v:.1f} s" for k, v in s["imports"].items()))
    sw = result.get("sweep")
    if sw:
        row(
            "pipeline",
            "sweep overhead per trial",
            f"{sw['per_trial_overhead_s']:.2f} s beyond a {sw['fit_s']:.2f} s fit "
            f"({100 * sw['per_trial_overhead_share']:.1f} % of the sweep; {sw['trials']} trials in "
            f"{sw['sweep_wall_s']:.1f} s, {sw['outside_trials_s']:.1f} s outside trials; after the "
            f"first trial {sw['steady_trial_overhead_s']} s)"
            if sw.get("measured")
            else sw["note"],
        )
    sc = result.get("scaling")
    if sc:
        d, w = sc["dataset"], sc["width"]
        row(
            "scaling",
            "epoch time vs dataset size",
            ", ".join(f"n={r['n']}: {r['epoch_s']:.2f} s" for r in d["rows"])
            + f"; exponent {d['exponent']}",
        )
        row(
            "scaling",
            f"epoch time vs width (n={w['n']})",
            ", ".join(f"×{r['width_factor']:g}: {r['epoch_s']:.2f} s" for r in w["rows"])
            + f"; exponent {w['exponent']} (FLOPs {w['flops_exponent']})",
        )
    g = result.get("gpu")
    if g and "error" in g:
        row("gpu", "trainer=gpu pretrain", g["error"])
    elif g:
        row(
            "gpu",
            f"trainer=gpu pretrain, widths {g['widths']}, batch {g['batch_size']}",
            f"MFU {g['mfu']} ({g['achieved_tflop_s']} of {g['bf16_matmul_tflop_s_at_model_shapes']} TFLOP/s) on {g['device']}",
        )
    w1 = max(len(r[0]) for r in rows) if rows else 0
    w2 = max(len(r[1]) for r in rows) if rows else 0
    lines += [f"{a:<{w1}}  {b:<{w2}}  {c}" for a, b, c in rows]
    lines.append("goals:")
    for gl in result.get("goals", []):
        status = {True: "met", False: "MISSED", None: "not measured"}[gl["met"]]
        lines.append(f"  {gl['figure']:<40} {gl['value']!s:<10} goal {gl['goal']:<8} {status}")
    return "\n".join(lines)


def _public(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("_")}


# ----------------------------------------------------------------------------------------- main
def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from omegaconf import OmegaConf

    sections = set(args.sections)
    project = Path(args.project).resolve()
    params = project / "params.yaml"
    t_start = time.perf_counter()
    result: dict[str, Any] = {"machine": machine_info(), "started_at": time.strftime("%FT%T%z")}
    work = Path(tempfile.mkdtemp(prefix="transferlab-bench-"))
    try:
        cfg = stage_config(params, work, args.overrides)
        image_obj = str(cfg.objective)
        from transferlab.config import primary_objective

        text_obj = primary_objective(cfg, "text")
        arms = sections & {"overhead", "efficiency", "data", "sweep"}
        if arms or sections & {"scaling", "gpu"}:
            result["data_build_s"] = {"image": _r(build_data(cfg, "image"), 2)}
        if sections & {"overhead", "efficiency", "data"} and not args.no_text:
            result["data_build_s"]["text"] = _r(build_data(cfg, "text"), 2)
        comparisons: dict[str, dict[str, Any]] = {}
        if arms:
            pairs = []
            for i in range(args.repeats):
                light = pretrain_arm("lightning", cfg, work / "light", "image", image_obj)
                bare = pretrain_arm("bare", cfg, work / f"bare{i}", "image", image_obj)
                pairs.append((light, bare))
            comparisons["image_pretrain"] = compare_arms(
                pairs, f"pretrain {image_obj} (stage fit vs bare loop)"
            )
            target = str(cfg.data.image.targets[0])
            pairs = []
            ft_cfg = OmegaConf.merge(cfg, {"paths": {"models_dir": str(work / "light")}})
            for _ in range(args.repeats):
                light = finetune_arm("lightning", ft_cfg, work / "light", target, image_obj)
                bare = finetune_arm("bare", ft_cfg, work / "light", target, image_obj)
                pairs.append((light, bare))
            comparisons["image_finetune"] = compare_arms(
                pairs, f"finetune {target} from {image_obj}"
            )
            if not args.no_text:
                # The text objective's own budget is the longest fit here: --text-epochs of it.
                tcfg = OmegaConf.merge(
                    cfg, {"objectives": {text_obj: {"max_epochs": args.text_epochs}}}
                )
                light = pretrain_arm("lightning", tcfg, work / "light", "text", text_obj)
                bare = pretrain_arm("bare", tcfg, work / "bare_text", "text", text_obj)
                comparisons["text_pretrain"] = compare_arms(
                    [(light, bare)],
                    f"pretrain {text_obj}, {args.text_epochs} epoch(s) (stage fit vs bare loop)",
                )
        if "overhead" in sections:
            result["overhead"] = {k: _public(v) for k, v in comparisons.items()}
        if "efficiency" in sections:
            result["efficiency"] = {}
            for key, route, obj in (
                ("image_pretrain", "image", image_obj),
                ("text_pretrain", "text", text_obj),
            ):
                if key in comparisons:
                    c = comparisons[key]
                    result["efficiency"][key] = efficiency(
                        cfg, route, obj, c["batch_size"], c["_light"].step_s, c["_bare"].step_s
                    )
        if "data" in sections:
            from transferlab.data.loaders import load_dataset
            from transferlab.stages.common import route_dirs

            result["data"] = {}
            for key, route, split in (
                ("image_pretrain", "image", "source.pt"),
                ("image_finetune", "image", f"targets/{cfg.data.image.targets[0]}.pt"),
                ("text_pretrain", "text", "source.pt"),
            ):
                if key in comparisons:
                    c = comparisons[key]
                    tensors = load_dataset(route_dirs(cfg, route)["data"] / split)["train"]
                    result["data"][key] = data_path(
                        cfg, route, tensors, c["batch_size"], c["_light"], c["_bare"]
                    )
        if "sweep" in sections and "image_finetune" in comparisons:
            result["sweep"] = sweep_overhead(
                cfg,
                work,
                work / "light",
                args.sweep_trials,
                comparisons["image_finetune"]["_light"].total_s,
                str(cfg.data.image.targets[0]),
            )
        if "scaling" in sections:
            n = int(cfg.data.image.source_train)
            result["scaling"] = scaling(
                cfg,
                work,
                sizes=[n // 8, n // 4, n // 2],
                width_factors=[0.5, 1.0, 2.0],
                width_n=n // 8,
            )
        if "pipeline" in sections:
            result["pipeline"] = {
                "last_run": last_pipeline_run(project),
                "noop_repro": noop_repro(project),
                "startup": startup_times(project),
            }
        if "gpu" in sections:
            import torch

            if torch.cuda.is_available():
                try:
                    result["gpu"] = gpu_section(params, work)
                except Exception as exc:  # report, do not lose the CPU figures
                    result["gpu"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["goals"] = goals(result)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["record-run"]:
        p = argparse.ArgumentParser(prog="bench.py record-run")
        p.add_argument("--pipeline-id", required=True)
        p.add_argument(
            "--start", type=float, required=True, help="epoch seconds at dvc repro start"
        )
        p.add_argument("--exit-code", type=int, default=0)
        p.add_argument("--project", default=".")
        a = p.parse_args(argv[1:])
        record_run(Path(a.project), a.pipeline_id, a.start, a.exit_code)
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", default=".", help="project root (params.yaml, dvc.lock, mlflow.db)")
    p.add_argument("--out", default="reports/bench.json")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--repeats", type=int, default=2, help="runs of each image arm (best is kept)")
    p.add_argument("--sweep-trials", type=int, default=3)
    p.add_argument("--no-text", action="store_true", help="skip the text route's arms")
    p.add_argument("--text-epochs", type=int, default=1, help="epochs of the text arms")
    p.add_argument("--pruning", action="store_true", help="also run scripts/bench_pruning.py")
    p.add_argument("overrides", nargs="*", help="key=value overrides of params.yaml, after `--`")
    args = p.parse_args(argv)
    result = run_bench(args)
    out = Path(args.project) / args.out
    write_json_atomic(out, result)
    print(table(result))
    print(f"wrote {out}")
    if args.pruning:
        return subprocess.call([sys.executable, str(ROOT / "scripts" / "bench_pruning.py")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
