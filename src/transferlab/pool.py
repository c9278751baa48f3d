"""The fit executor: a stage's independent fine-tuning fits, run side by side in worker processes.

:func:`fit_executor` is the one way fits run (finetune, curves, the sweep trial): it hands each
:class:`~transferlab.study.Fit` to :func:`transferlab.stages.fit.run_fit` in a worker (or in
process) and yields :class:`~transferlab.study.FitResult` values in submission order.

Why: a few-shot fit trains on batches of 32, too small for torch's intra-op threads to pay off: on
the 2-core machine one ConvNet step (forward, backward, AdamW) takes 32.5 ms on two threads and
35.9 ms on one, while two one-thread processes side by side take 43 ms each, 1.5x the throughput
of one fit on two threads. The finetune and curves stages run dozens of such fits, independent
of each other; ``trainer.fit_workers`` of them run at once (null, the CPU default: one per core;
1: one after the other in the stage's own process, on ``trainer.num_threads``).

How (no maintained library does this for Lightning fits that must not touch shared outputs):

- Workers are forked, so they inherit the imported modules (a spawned worker would re-import
  Lightning, ~9 s) and the jobs' inputs (``shared``: datasets are never pickled). Each runs one
  intra-op thread: GNU OpenMP hangs in a child forked after its parent used a team of threads.
- Workers only compute. A fit's metrics go to a :class:`RecordingLogger`; they come back with
  the weights (``torch.save`` bytes, read with ``weights_only=True``) and the parent replays them
  into the fit's MLflow child run (:func:`transferlab.tracking.replay_fit`) and writes the
  checkpoints, so the tracking store and the stage's atomic output directory keep one writer.
- Results come back in submission order whatever finishes first, so outputs are byte-identical
  run to run. A fit's numbers depend on its thread count: ``fit_workers: 1`` and ``2`` may differ
  in the last bits, each is deterministic.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.loggers import Logger
from threadpoolctl import threadpool_limits

from transferlab.models.checkpoint import classifier_state
from transferlab.routes import Route
from transferlab.stages.context import Executor
from transferlab.stages.fit import run_fit
from transferlab.study import Fit, FitResult

#: What forked workers inherit from the stage: set by :func:`fit_pool` before the fork.
_SHARED: dict[str, Any] = {}

Map = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]


def shared(key: str) -> Any:
    """An input the stage handed to :func:`fit_pool` (a dataset, a path), read in a job."""
    return _SHARED[key]


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    # NumPy/SciPy's OpenBLAS keeps its own thread pool (the probes' L-BFGS runs on it): two
    # threads per worker on two cores made a logistic-regression probe 20x slower (3.2 s vs
    # 0.16 s for a 784-feature probe), most of it spinning in the kernel.
    threadpool_limits(1)
    # Ctrl-C reaches the whole process group: the parent stops the pool; workers stay quiet.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def fit_pool(workers: int, inputs: Mapping[str, Any] | None = None) -> Iterator[Map]:
    """``pmap(fn, jobs)``: ``fn(job)`` for every job, in order, on ``workers`` processes.

    ``fn`` must be a module-level function; ``inputs`` are readable in it through :func:`shared`.
    Enter this before anything starts threads (MLflow, progress bars): a fork copies only the
    calling thread, and a lock another thread held would stay locked in the child.
    """
    _SHARED.clear()
    _SHARED.update(inputs or {})
    try:
        if workers <= 1:
            yield lambda fn, jobs: map(fn, jobs)
            return
        # ProcessPoolExecutor, not multiprocessing.Pool: with "fork" it starts every worker
        # before its manager thread, and a worker that dies raises BrokenProcessPool in the
        # parent instead of leaving ``imap`` waiting (Pool.terminate hung once after a failed fit).
        executor = ProcessPoolExecutor(
            int(workers), mp_context=multiprocessing.get_context("fork"), initializer=_init_worker
        )
        try:
            yield lambda fn, jobs: executor.map(fn, jobs)
        finally:
            # On an error in the parent: drop the queued fits, let the running ones end.
            executor.shutdown(wait=True, cancel_futures=True)
    finally:
        _SHARED.clear()


def fit_workers(trainer_cfg: Mapping[str, Any], jobs: int) -> int:
    """Workers for ``jobs`` fits: ``trainer.fit_workers`` (null: one per usable core), never
    more than there are fits."""
    if "fit_workers" not in trainer_cfg:
        return 1
    wanted = trainer_cfg["fit_workers"]
    if wanted is None:
        wanted = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        )
    return max(1, min(int(wanted or 1), jobs))


# ------------------------------------------------------------------------------ fit results
@dataclass
class FitLog:
    """What a fit logged: ``metrics`` as ``(timestamp_ms, step, {key: value})`` per call."""

    start_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    end_ms: int = 0
    metrics: list[tuple[int, int, dict[str, float]]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


def recording_logger(log: FitLog) -> Any:
    """A Lightning logger that appends to ``log`` (replayed into MLflow by the parent)."""

    class RecordingLogger(Logger):
        @property
        def name(self) -> str:
            return "recording"

        @property
        def version(self) -> int:
            return 0

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            log.params.update(dict(params) if isinstance(params, Mapping) else vars(params))

        def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
            values = {k: float(v) for k, v in metrics.items() if not isinstance(v, str)}
            log.metrics.append((int(time.time() * 1000), int(step or 0), values))

        def finalize(self, status: str) -> None:
            log.end_ms = int(time.time() * 1000)

    return RecordingLogger()


def picklable(exc: Exception) -> Exception:
    """``exc`` if it survives the trip back to the parent, else a RuntimeError with its text
    (a result that cannot be unpickled would break the pool)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def pack_state(module: torch.nn.Module) -> bytes:
    """A module's weights as ``torch.save`` bytes (plain tensors: safe to read back)."""
    buf = io.BytesIO()
    torch.save(classifier_state(module), buf)
    return buf.getvalue()


def unpack_state(data: bytes) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------ the executor
def test_accuracy(route: Route, model: torch.nn.Module, data: Mapping[str, Any]) -> float:
    """Accuracy on the target's test split (batched for speed: outputs equal up to rounding)."""
    logits = route.predict(model, route.inputs(model.backbone, data["test"]), fast=True)
    return round(float((logits.argmax(-1) == data["test"]["y"]).float().mean()), 6)


def _fit_job(job: tuple[Fit, bool, bool, bool, Any]) -> FitResult:
    """One fit, in a pool worker or in process: its history, weights (bytes), test accuracy, log."""
    fit, tracked, want_state, want_test_acc, hooks = job
    route: Route = shared("route")
    data = shared("data")[fit.target]
    log = FitLog()
    try:
        logger, callbacks = hooks if hooks is not None else (False, ())
        if tracked:
            logger = recording_logger(log)
        model, history = run_fit(fit, route, data, shared("trainer"), logger, callbacks)
        return FitResult(
            fit,
            history,
            state=pack_state(model) if want_state else None,  # type: ignore[arg-type]
            test_acc=test_accuracy(route, model, data) if want_test_acc else None,
            log=log,
        )
    except Exception as exc:  # the parent logs the failed fit, then raises it
        log.end_ms = log.end_ms or log.start_ms
        return FitResult(fit, [], error=picklable(exc), log=log)


@contextlib.contextmanager
def fit_executor(
    route: Route, datasets: Mapping[str, Any], trainer_cfg: Mapping[str, Any], n_fits: int
) -> Iterator[Executor]:
    """Run fits of ``route`` on ``datasets`` (target → data) on ``trainer.fit_workers`` workers.

    ``execute(fits, tracked=False, state=True, test_acc=False, logger=False, callbacks=())``
    yields one
    :class:`~transferlab.study.FitResult` per fit, in order: with ``tracked`` the fit's metrics
    are recorded for the caller's tracker, with ``state`` its weights come back (a state dict),
    with ``test_acc`` its accuracy on the target's test split. Enter it before anything starts
    threads (see :func:`fit_pool`).
    """
    inputs = {"route": route, "data": datasets, "trainer": trainer_cfg}
    workers = fit_workers(trainer_cfg, n_fits)
    with fit_pool(workers, inputs) as pmap:

        def execute(
            fits: Sequence[Fit],
            *,
            tracked: bool = False,
            state: bool = True,
            test_acc: bool = False,
            logger: Any = False,
            callbacks: Sequence[Any] = (),
        ) -> Iterator[FitResult]:
            """``logger``/``callbacks``: a Lightning logger and callbacks for in-process fits
            (the sweep trial's MLflow run and pruning callback; they cannot cross a fork)."""
            hooks = None
            if logger is not False or callbacks:
                if workers > 1:
                    raise ValueError("a logger or callbacks need in-process fits (fit_workers: 1)")
                hooks = (logger, tuple(callbacks))
            jobs = [(f, tracked, state, test_acc, hooks) for f in fits]
            for res in pmap(_fit_job, jobs):
                if res.state is not None:
                    res.state = unpack_state(res.state)  # type: ignore[arg-type]
                yield res

        yield execute
