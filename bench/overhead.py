"""Framework overhead: the stage's own Lightning fit against a bare PyTorch loop.

Both arms run through the stage code (``pretrain.run``, :func:`transferlab.stages.fit.run_fit`)
with ``make_trainer`` swapped for the arm's trainer in every module that imports it
(:data:`TRAINER_MODULES`), so they build identical models from identical data.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import rnd

#: The modules that import ``make_trainer`` by name: the bench swaps it in each of them.
TRAINER_MODULES = (
    "transferlab.stages.pretrain",
    "transferlab.stages.fit",
    "transferlab.routes.base",
)


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
        max_steps: int = -1,
        callbacks: Sequence[Any] = (),
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        record: Callable[[FitRecord], None] = lambda r: None,
        build_s: float = 0.0,
        **_: Any,
    ) -> None:
        from transferlab.resume import EpochSeed

        self.max_epochs = int(max_epochs)
        self.max_steps = int(max_steps)  # -1: no step limit (as Lightning's Trainer)
        self.global_step = 0
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
                if 0 <= self.max_steps <= self.global_step:
                    break
                t = time.perf_counter()
                starts.append(t)
                batch = next(batches)
                wait += time.perf_counter() - t
                loss = bare_losses(module, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self.global_step += 1
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
    """Swap ``make_trainer`` in every module that imports it (:data:`TRAINER_MODULES`: the
    pretrain stage, the fine-tuning fit, the routes' continued pre-training) for one arm's trainer.

    ``lightning``: the stage's own trainer plus a step timer; ``bare``: :class:`BareTrainer`.
    Yields the list the fits are recorded in.
    """
    import importlib

    from transferlab.training import make_trainer as original

    modules = [importlib.import_module(name) for name in TRAINER_MODULES]
    saved = [m.make_trainer for m in modules]
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

    for m in modules:
        m.make_trainer = make
    try:
        yield fits
    finally:
        for m, before in zip(modules, saved, strict=True):
            m.make_trainer = before


def pretrain_arm(arm: str, cfg: Any, work: Path, route: str, objective: str) -> FitRecord:
    """One pre-training of ``objective`` through the stage's ``run`` (outputs under ``work``)."""
    from omegaconf import OmegaConf

    from transferlab.config import validate
    from transferlab.runtime import StageRuntime
    from transferlab.stages import pretrain

    cfg = OmegaConf.merge(
        cfg, {"route": route, "objective": objective, "paths": {"models_dir": str(work)}}
    )
    validate(cfg, "pretrain")
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(work), stage_trainers(arm) as fits:
        pretrain.run(cfg, StageRuntime(cfg))
    return fits[-1]


def finetune_arm(arm: str, cfg: Any, work: Path, target: str, variant: str) -> FitRecord:
    """One fine-tuning fit of the image route's ``variant`` (a name of its study) on ``target``,
    run in process by the stage's :func:`~transferlab.stages.fit.run_fit` and logged to MLflow
    like the stage."""
    from omegaconf import OmegaConf

    from transferlab.routes import get_route
    from transferlab.stages.fit import run_fit
    from transferlab.study import by_name, fit_for, variants
    from transferlab.tracking import StageRun
    from transferlab.training import configure_torch

    cfg = OmegaConf.merge(cfg, {"route": "image"})
    route = get_route(cfg, "image")
    fit = fit_for(cfg, target, by_name(variants(cfg, route))[variant])
    configure_torch(cfg.trainer)  # as the finetune stage does before its fits
    data = route.target_data(target)
    work.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.chdir(work),
        stage_trainers(arm) as fits,
        StageRun(cfg, "finetune", tags={"run_name": "bench:finetune"}) as tr,
    ):
        logger = tr.lightning_logger(f"bench:{target}:{variant}")
        run_fit(fit, route, data, cfg.trainer, logger)
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
        "lightning_s": rnd(light.total_s),
        "lightning_build_s": rnd(light.build_s),
        "bare_s": rnd(bare.total_s),
        "ratio": rnd(light.total_s / bare.total_s),
        "all_lightning_s": [rnd(r[0].total_s) for r in runs],
        "all_bare_s": [rnd(r[1].total_s) for r in runs],
        "lightning_step_ms": rnd(light.step_s * 1e3, 2),
        "bare_step_ms": rnd(bare.step_s * 1e3, 2),
        "step_ratio": rnd(light.step_s / bare.step_s),
        "cpu_ratio": rnd(min(r[0].cpu_s for r in runs) / min(r[1].cpu_s for r in runs)),
        "same_steps": light.steps == bare.steps,
        "same_weights": same_weights(light, bare),
        "_light": light,
        "_bare": bare,
    }
