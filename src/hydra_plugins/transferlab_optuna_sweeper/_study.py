"""Storages, samplers, pruners, the cross-process lock and worker identity.

Storage strings: ``None`` is in-memory (one process only); anything with ``://`` is an SQLAlchemy
URL for Optuna's RDB storage (``sqlite:///optuna.db``, ``postgresql://…``); any other string is the
path of an Optuna journal file (``JournalFileBackend``, safe for several processes on one host or
NFS).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.errors import CompactHydraException
from optuna.storages import InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from hydra_plugins.transferlab_optuna_sweeper._space import SearchSpace

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp", "qmc", "nsgaii")
PRUNERS = ("nop", "median", "percentile", "successive_halving", "hyperband", "threshold")
log = logging.getLogger("hydra_plugins.transferlab_optuna_sweeper")
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# In-process registry: a job run by Hydra's basic launcher (same process as the sweeper) reuses the
# sweeper's storage object, so in-memory studies work and RDB caches stay coherent.
LIVE_STORAGES: dict[str, Any] = {}


class SweeperConfigError(CompactHydraException):
    pass


def redact(url: str | None) -> str:
    """A storage URL fit for logs and MLflow tags: passwords become ***."""
    if url is None:
        return "in-memory"
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///") :].split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def make_storage(url: str | None) -> Any:
    if url is None or url == "":
        return InMemoryStorage()
    if "://" in url:
        kwargs: dict[str, Any] = {}
        db = _sqlite_path(url)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            # several workers share the file: wait for its lock instead of failing after 5 s
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
        try:
            return RDBStorage(url, **kwargs)
        except Exception as exc:  # a bad URL, a missing driver, a server that is down
            raise SweeperConfigError(
                f"hydra.sweeper.storage={redact(url)} cannot be opened: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def lock_path(url: str | None) -> Path | None:
    """A per-storage lock file for storages that live in a local file (sqlite, journal)."""
    if url is None or url == "":
        return None
    if "://" in url:
        target = _sqlite_path(url)
        if target is None:
            return None
    else:
        target = Path(url)
    digest = hashlib.sha1(str(target.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"transferlab-optuna-{digest}.lock"


@contextlib.contextmanager
def storage_lock(url: str | None) -> Iterator[None]:
    """Serialise "count the trials, then ask for new ones" across worker processes.

    Without it two workers could both see one trial missing and both start it. Server databases
    get no file lock; there a rare race can start one trial too many, which the sweeper finishes
    as FAIL (``surplus``) without running it.
    """
    path = lock_path(url)
    if path is None:
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- workers


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_id() -> str:
    """``host:pid:start``: the start time tells a live worker from a recycled pid."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '?'}"


def worker_is_dead(worker: str) -> bool:
    """True only when the worker ran on this host and its process is gone (else: unknown)."""
    try:
        host, pid, start = worker.rsplit(":", 2)
    except ValueError:
        return False
    if host != socket.gethostname() or start == "?" or not Path("/proc/self/stat").exists():
        return False
    return _start_time(int(pid)) != start


# --------------------------------------------------------------------------- samplers, pruners


def trial_seed(seed: int | None, number: int) -> int | None:
    """The sampler seed for trial ``number``: reproducible per trial, distinct across trials.

    Seeding per trial rather than per process is what lets a resumed sweep or a second worker
    with the same ``seed`` draw new points instead of replaying the first process's draws.
    """
    if seed is None:
        return None
    return (int(seed) * 1_000_003 + number + 1) % (2**32)


class _GridSampler(optuna.samplers.GridSampler):
    # Optuna's GridSampler calls study.stop() when the grid is exhausted, which raises outside
    # Study.optimize; the sweep loop checks exhaustion itself.
    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def accepted_kwargs(cls: Any, kwargs: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The kwargs ``cls`` takes; the others are dropped with a warning.

    Switching ``hydra/sweeper/pruner=hyperband`` on the command line keeps the kwargs a search
    config wrote for its median pruner; they should not stop the sweep.
    """
    params = inspect.signature(cls).parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    dropped = sorted(set(kwargs) - set(params))
    if dropped:
        log.warning("%s does not take %s: ignored", what, ", ".join(dropped))
    return {k: v for k, v in kwargs.items() if k in params}


def make_sampler(
    name: str,
    seed: int | None,
    kwargs: Mapping[str, Any],
    space: SearchSpace,
    n_objectives: int,
) -> optuna.samplers.BaseSampler:
    s = optuna.samplers
    classes = {
        "tpe": s.TPESampler,
        "random": s.RandomSampler,
        "grid": _GridSampler,
        "qmc": s.QMCSampler,
        "nsgaii": s.NSGAIISampler,
        "cmaes": s.CmaEsSampler,
        "gp": s.GPSampler,
    }
    if name in classes:
        kwargs = accepted_kwargs(classes[name], kwargs or {}, f"the {name} sampler")
    if name == "tpe":
        return s.TPESampler(seed=seed, **kwargs)
    if name == "random":
        return s.RandomSampler(seed=seed, **kwargs)
    if name == "grid":
        return _GridSampler(space.grid(), seed=seed, **kwargs)
    if name == "qmc":
        return s.QMCSampler(seed=seed, **kwargs)
    if name == "nsgaii":
        return s.NSGAIISampler(seed=seed, **kwargs)
    if name == "cmaes":
        try:
            # lazy: an optional package (not a dependency), probed only for sampler=cmaes
            import cmaes  # noqa: F401
        except ImportError:
            raise SweeperConfigError(
                "hydra.sweeper.sampler=cmaes needs the `cmaes` package (pip install cmaes); "
                "tpe, random, grid, qmc, gp and nsgaii work without it"
            ) from None
        if n_objectives > 1:
            raise SweeperConfigError("the cmaes sampler is single-objective; use tpe or nsgaii")
        return s.CmaEsSampler(seed=seed, **kwargs)
    if name == "gp":
        try:
            # lazy: torch + scipy cost ~1.2 s of import, probed only for sampler=gp
            import scipy  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            raise SweeperConfigError(
                "hydra.sweeper.sampler=gp needs torch and scipy (pip install torch scipy)"
            ) from None
        return s.GPSampler(seed=seed, **kwargs)
    raise SweeperConfigError(
        f"hydra.sweeper.sampler.name={name!r} is not known; choose one of: {', '.join(SAMPLERS)}"
    )


def make_pruner(name: str, kwargs: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    p = optuna.pruners
    kwargs = dict(kwargs or {})
    table = {
        "nop": p.NopPruner,
        "none": p.NopPruner,
        "median": p.MedianPruner,
        "percentile": p.PercentilePruner,
        "successive_halving": p.SuccessiveHalvingPruner,
        "hyperband": p.HyperbandPruner,
        "threshold": p.ThresholdPruner,
    }
    if name not in table:
        raise SweeperConfigError(
            f"hydra.sweeper.pruner.name={name!r} is not known; choose one of: {', '.join(PRUNERS)}"
        )
    try:
        return table[name](**accepted_kwargs(table[name], kwargs, f"the {name} pruner"))
    except TypeError as exc:
        raise SweeperConfigError(f"hydra.sweeper.pruner.kwargs for {name}: {exc}") from None


def directions_of(direction: Any) -> list[str]:
    items = [direction] if isinstance(direction, str) else list(direction)
    out = [str(d).lower() for d in items]
    bad = [d for d in out if d not in ("minimize", "maximize")]
    if not out or bad:
        raise SweeperConfigError(
            f"hydra.sweeper.direction={direction!r}: use minimize, maximize or a list of them"
        )
    return out


def check_study_name(name: str) -> str:
    if not STUDY_NAME.match(name):
        raise SweeperConfigError(
            f"hydra.sweeper.study_name={name!r}: use letters, digits, '_', '-' and '.' only "
            "(it names the exported experiment file)"
        )
    return name


def open_study(
    name: str, storage: Any, directions: Sequence[str], sampler: Any, pruner: Any
) -> optuna.Study:
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        directions=list(directions),
        load_if_exists=True,
    )
    have = [d.name.lower() for d in study.directions]
    if have != list(directions):
        raise SweeperConfigError(
            f"study '{name}' in this storage optimises {have}, not {list(directions)}: "
            "use another hydra.sweeper.study_name or the same direction"
        )
    return study
