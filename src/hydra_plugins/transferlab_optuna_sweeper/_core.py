"""The sweep loop: ask → launch → tell, until the study holds ``n_trials`` finished trials.

Resume and parallel workers come from counting in the storage rather than in this process:

* *finished* = COMPLETE or PRUNED; the loop asks for ``n_trials − finished − running`` more, so a
  re-run of the same command continues the study and a second worker shares the remaining trials;
* counting and asking happen under a per-storage file lock (sqlite, journal), so two workers never
  start the same missing trial; on server databases a trial asked in a race beyond ``n_trials`` is
  finished as FAIL (``surplus``) without running;
* a RUNNING trial whose worker process is gone (killed sweep) is finished as FAIL
  (``interrupted``, outside the failure budget) and its parameters are queued again, so the
  interrupted point is retried first.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobStatus
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.transferlab_optuna_sweeper._export import (
    experiment_yaml,
    primary_config_dir,
    write_atomic,
)
from hydra_plugins.transferlab_optuna_sweeper._job import ENV, encode, live_key
from hydra_plugins.transferlab_optuna_sweeper._space import parse_search_space
from hydra_plugins.transferlab_optuna_sweeper._study import (
    LIVE_STORAGES,
    SweeperConfigError,
    check_study_name,
    directions_of,
    lock_path,
    make_pruner,
    make_sampler,
    make_storage,
    open_study,
    redact,
    storage_lock,
    trial_seed,
    worker_id,
    worker_is_dead,
)
from hydra_plugins.transferlab_optuna_sweeper._tracking import Tracker, best_trials

log = logging.getLogger("hydra_plugins.transferlab_optuna_sweeper")

# Samplers whose sequence depends on one seed for the whole study (grid order, QMC scrambling).
FIXED_SEED_SAMPLERS = ("grid", "qmc")
ORPHAN_AFTER_S = 120.0


class SweepAborted(CompactHydraException):
    """The sweep stopped on purpose (failure budget, fatal error): Hydra prints only this line."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:1000]


@dataclass
class Asked:
    trial: optuna.Trial
    overrides: list[str]  # fixed + sampled, the trial's whole command line
    sampled: list[str]
    started: float = field(default_factory=time.perf_counter)
    mlflow_run_id: str | None = None

    @property
    def number(self) -> int:
        return self.trial.number


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # counted against the failure budget
    interrupted: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


class SweepRun:
    def __init__(self, sweeper: Any, arguments: list[str]) -> None:
        self.s = dict(sweeper.settings)
        self.config = sweeper.config
        self.context = sweeper.hydra_context
        self.launcher = sweeper.launcher
        self.arguments = arguments
        self.me = worker_id()
        self.tracker: Any = None

    # ------------------------------------------------------------------ set-up

    def _metric_names(self, n: int) -> list[str]:
        metric = self.s.get("metric")
        names = [metric] if isinstance(metric, str) else list(metric or [])
        if not names:
            return ["value"] if n == 1 else [f"value_{i}" for i in range(n)]
        if len(names) != n:
            raise SweeperConfigError(
                f"hydra.sweeper.metric has {len(names)} names for {n} directions: give one per direction"
            )
        return [str(x) for x in names]

    def _default_study_name(self) -> str:
        choices = self.config.hydra.runtime.choices
        return str(choices.get("hparams_search") or self.config.hydra.job.name)

    def _batch_size(self, n_jobs: Any) -> int:
        if n_jobs is None:
            launcher_jobs = OmegaConf.select(self.config, "hydra.launcher.n_jobs", default=None)
            if isinstance(launcher_jobs, int) and launcher_jobs != 0:
                # joblib's convention: -1 = every core, -2 = all but one, ...
                cpus = os.cpu_count() or 1
                n_jobs = launcher_jobs if launcher_jobs > 0 else cpus + 1 + launcher_jobs
            else:
                n_jobs = 1
        return max(1, int(n_jobs))

    def _is_group(self, key: str) -> bool:
        parent, _, leaf = key.rpartition("/")
        try:
            return leaf in self.context.config_loader.list_groups(parent)
        except Exception:
            return "/" in key

    # ------------------------------------------------------------------ main loop

    def run(self) -> Any:
        s = self.s
        self.space = parse_search_space(s.get("params"), self.arguments, self.context.config_loader)
        if not self.space.params and not self.space.simplexes:
            raise SweeperConfigError(
                "nothing to sweep: give hydra.sweeper.params or a sweep override such as "
                "finetune.lr=tag(log,interval(1e-4,1e-1))"
            )
        self._seeds()  # a held-out seed the search also uses: refused before any trial
        self.directions = directions_of(s.get("direction", "minimize"))
        self.n_obj = len(self.directions)
        self.metric_names = self._metric_names(self.n_obj)
        sampler = dict(s.get("sampler") or {"name": "tpe"})
        self.sampler_name = str(sampler.get("name", "tpe"))
        self.sampler_seed = sampler.get("seed")
        self.sampler_kwargs = dict(sampler.get("kwargs") or {})
        pruner = dict(s.get("pruner") or {"name": "nop"})
        self.pruner_cfg = {
            "name": str(pruner.get("name", "nop")),
            "kwargs": pruner.get("kwargs") or {},
        }
        if self.n_obj > 1 and self.pruner_cfg["name"] not in ("nop", "none"):
            log.warning(
                "pruning needs a single objective: %s pruner disabled", self.pruner_cfg["name"]
            )
            self.pruner_cfg = {"name": "nop", "kwargs": {}}
        self.n_trials = int(s.get("n_trials", 20))
        self.n_jobs = self._batch_size(s.get("n_jobs"))
        if self.n_trials < 1:
            raise SweeperConfigError(f"hydra.sweeper.n_trials={self.n_trials} must be >= 1")
        rate = float(s.get("max_failure_rate", 0.0))
        self.budget = math.floor(rate * self.n_trials + 1e-9)
        self.fatal = set(map(str, s.get("fatal_errors") or []))
        self.storage_url = s.get("storage") or None
        self.study_name = check_study_name(str(s.get("study_name") or self._default_study_name()))

        storage = make_storage(self.storage_url)
        self.study = open_study(
            self.study_name,
            storage,
            self.directions,
            sampler=self._sampler(-1),
            pruner=make_pruner(self.pruner_cfg["name"], self.pruner_cfg["kwargs"]),
        )
        LIVE_STORAGES[live_key(self.storage_url, self.study_name)] = self.study._storage
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        mlflow_cfg = s.get("mlflow") or {}
        if mlflow_cfg.get("enabled"):
            self.tracker = Tracker(
                mlflow_cfg.get("tracking_uri"), str(mlflow_cfg.get("experiment", "optuna"))
            )
        log.info(
            "study '%s' (%s): %s, %s sampler, %s pruner, %d trials, %d failures allowed",
            self.study_name,
            redact(self.storage_url),
            "/".join(self.directions),
            self.sampler_name,
            self.pruner_cfg["name"],
            self.n_trials,
            self.budget,
        )
        status = "FAILED"
        try:
            if self.tracker is not None:
                with storage_lock(self.storage_url):
                    self._reap_stale()
                    self.tracker.open_parent(self.study, self._parent_tags(), self._parent_params())
                    # a sweep killed between Optuna's tell and MLflow's close leaves a RUNNING child
                    self.tracker.close_leftovers(self.study, self.metric_names)
            while True:
                with storage_lock(self.storage_url):
                    self._reap_stale()
                    counts = self.counts()
                    if counts.failed > self.budget:
                        raise SweepAborted(
                            f"study '{self.study_name}': {counts.failed} failed trials, more than the "
                            f"budget of {self.budget} (hydra.sweeper.max_failure_rate × n_trials); "
                            f"last failure: {self._last_failure()}"
                        )
                    remaining = self.n_trials - counts.finished - counts.running
                    if self.sampler_name == "grid":
                        left = self._grid_left(counts)
                        if left <= 0 and remaining > 0 and counts.running == 0:
                            log.info("grid exhausted after %d finished trials", counts.finished)
                        remaining = min(remaining, left)
                    if remaining <= 0:
                        break
                    batch = [self._ask() for _ in range(min(self.n_jobs, remaining))]
                    batch = self._drop_surplus(batch)
                if batch:
                    self._run_batch(batch)
            self.heldout = self._heldout()
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self._finish(status)
        best = self._best()
        return best[0].values if best else None

    # ------------------------------------------------------------------ counting

    def counts(self) -> Counts:
        c = Counts()
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.COMPLETE:
                c.complete += 1
            elif t.state == TrialState.PRUNED:
                c.pruned += 1
            elif t.state == TrialState.RUNNING:
                c.running += 1
            elif t.state == TrialState.WAITING:
                c.waiting += 1
            elif t.state == TrialState.FAIL:
                if t.user_attrs.get("interrupted") or t.user_attrs.get("surplus"):
                    c.interrupted += 1
                else:
                    c.failed += 1
        return c

    def _last_failure(self) -> str:
        fails = [
            t
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if not t.user_attrs.get("interrupted")
        ]
        return fails[-1].user_attrs.get("fail_reason", "?") if fails else "?"

    def _grid_left(self, counts: Counts) -> int:
        grid = self.space.grid()
        size = math.prod(len(v) for v in grid.values())
        started = {
            t.system_attrs["grid_id"]
            for t in self.study.get_trials(deepcopy=False)
            if "grid_id" in t.system_attrs and t.state != TrialState.WAITING
        }
        return size - len(started) + counts.waiting

    # ------------------------------------------------------------------ ask

    def _sampler(self, number: int) -> Any:
        seed = self.sampler_seed
        if seed is not None:
            seed = (
                int(seed) if self.sampler_name in FIXED_SEED_SAMPLERS else trial_seed(seed, number)
            )
        return make_sampler(self.sampler_name, seed, self.sampler_kwargs, self.space, self.n_obj)

    def _ask(self) -> Asked:
        trial = self.study.ask()
        # tag first: a trial without its worker is only safe to reap under the storage lock
        trial.set_user_attr("worker", self.me)
        if self.sampler_name not in FIXED_SEED_SAMPLERS:
            self.study.sampler = self._sampler(trial.number)
        try:
            sampled = self.space.suggest(trial)
        except Exception as exc:
            self._fail(trial, f"sampling: {one_line(exc)}")
            raise
        overrides = [*self.space.fixed, *sampled]
        trial.set_user_attr("overrides", overrides)
        return Asked(trial=trial, overrides=overrides, sampled=sampled)

    def _drop_surplus(self, batch: list[Asked]) -> list[Asked]:
        """Server storages have no lock: finish trials a race started beyond n_trials."""
        alive = sorted(
            t.number
            for t in self.study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        )
        keep = []
        for item in batch:
            if item.number in alive and alive.index(item.number) >= self.n_trials:
                item.trial.set_user_attr("surplus", True)
                self._fail(item.trial, "surplus: other workers already started n_trials trials")
            else:
                keep.append(item)
        return keep

    # ------------------------------------------------------------------ launch and tell

    def _job_overrides(self, item: Asked) -> list[str]:
        env = encode(self.study_name, item.number, item.mlflow_run_id)
        return [
            *item.overrides,
            f"hydra.sweep.subdir=trial_{item.number}",
            f"++hydra.job.env_set.{ENV}={env}",
        ]

    def _run_batch(self, batch: list[Asked]) -> None:
        jobs: list[tuple[Asked, list[str]]] = []
        for item in batch:
            try:
                self.context.config_loader.load_sweep_config(self.config, list(item.overrides))
            except Exception as exc:
                # a key that does not exist or a group option that is missing: no other
                # parameter values can fix that, so stop instead of burning the failure budget
                self._fail(item.trial, f"composition: {one_line(exc)}")
                self._report(item, None)
                for other in batch:
                    if other is not item:
                        self._interrupt(other.trial, "interrupted: the sweep stopped")
                raise SweepAborted(
                    f"trial {item.number} cannot be composed: {one_line(exc)}"
                ) from None
            if self.tracker is not None:
                item.mlflow_run_id = self.tracker.open_child(
                    self.study_name, item.number, item.sampled
                )
                item.trial.set_user_attr("mlflow_run_id", item.mlflow_run_id)
            jobs.append((item, self._job_overrides(item)))
        if not jobs:
            return
        try:
            results = self.launcher.launch([j for _, j in jobs], initial_job_idx=jobs[0][0].number)
        except BaseException as exc:
            for item, _ in jobs:
                self._interrupt(item.trial, f"interrupted: {one_line(exc)}")
                self._report(item, None)
            raise
        for (item, _), ret in zip(jobs, results, strict=True):
            self._tell(item, ret)

    def _values(self, value: Any) -> tuple[list[float] | None, str | None]:
        items = list(value) if isinstance(value, list | tuple) else [value]
        if len(items) != self.n_obj:
            return None, f"the task returned {value!r}; the study needs {self.n_obj} number(s)"
        out: list[float] = []
        for v in items:
            try:
                f = float(v)
            except (TypeError, ValueError):
                return None, f"the task returned {value!r}, not a number"
            if not math.isfinite(f):
                return None, f"the task returned {f}"
            out.append(f)
        return out, None

    def _tell(self, item: Asked, ret: Any) -> None:
        trial = item.trial
        if ret.status == JobStatus.COMPLETED:
            values, error = self._values(ret.return_value)
            if error is None:
                self.study.tell(trial, values)
            else:
                self._fail(trial, error)
        else:
            exc = ret._return_value  # the job's exception (the public property re-raises it)
            if isinstance(exc, optuna.TrialPruned):
                trial.set_user_attr("pruned_reason", str(exc)[:1000])
                self.study.tell(trial, state=TrialState.PRUNED)
            else:
                self._fail(trial, one_line(exc))
                self._save_traceback(ret, exc)
        self._report(item, ret)
        if ret.status != JobStatus.COMPLETED and type(ret._return_value).__name__ in self.fatal:
            raise SweepAborted(
                f"trial {item.number} failed with {one_line(ret._return_value)} "
                f"(hydra.sweeper.fatal_errors: no other parameters can fix it)"
            )

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        trial.set_user_attr("fail_reason", reason)
        self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

    def _interrupt(self, trial: optuna.Trial, reason: str) -> None:
        frozen = self.study._storage.get_trial(trial._trial_id)
        if frozen.state.is_finished():
            return
        trial.set_user_attr("interrupted", True)
        self._fail(trial, reason)
        self._retry(frozen)

    def _retry(self, frozen: Any) -> None:
        if frozen.params:
            self.study.enqueue_trial(dict(frozen.params), user_attrs={"retry_of": frozen.number})

    def _reap_stale(self) -> None:
        storage = self.study._storage
        now = datetime.datetime.now()
        # Live workers tag a trial right after ask(), under the same lock this runs under: with a
        # file lock an untagged RUNNING trial is orphaned (its worker died inside ask()); without
        # one, give it time.
        grace = 0.0 if lock_path(self.storage_url) is not None else ORPHAN_AFTER_S
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get("worker")
            if worker is None:
                age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
                if age < grace:
                    continue
            elif worker == self.me or not worker_is_dead(worker):
                continue
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            storage.set_trial_user_attr(
                t._trial_id, "fail_reason", f"interrupted: worker {worker or '?'} is gone"
            )
            self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            self._retry(t)
            log.info(
                "trial %d: its worker %s is gone; marked FAIL, parameters queued again",
                t.number,
                worker,
            )
            run_id = t.user_attrs.get("mlflow_run_id")
            if self.tracker is not None and run_id:
                frozen = storage.get_trial(t._trial_id)
                with contextlib.suppress(Exception):
                    self.tracker.close_child(
                        run_id, frozen, self.metric_names, frozen.user_attrs.get("fail_reason")
                    )

    def _save_traceback(self, ret: Any, exc: BaseException) -> None:
        try:
            out = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
            text = "".join(traceback.format_exception(exc))
            (out / "traceback.txt").write_text(text)
        except Exception:
            pass

    def _report(self, item: Asked, ret: Any) -> None:
        frozen = self.study._storage.get_trial(item.trial._trial_id)
        seconds = time.perf_counter() - item.started
        if frozen.state == TrialState.COMPLETE:
            what = ", ".join(
                f"{n}={v:.4g}" for n, v in zip(self.metric_names, frozen.values, strict=True)
            )
        elif frozen.state == TrialState.PRUNED:
            what = f"at step {max(frozen.intermediate_values, default=-1)}"
        else:
            what = frozen.user_attrs.get("fail_reason", "")
        log.info(
            "trial %d %s %s (%.1f s) | %s",
            item.number,
            frozen.state.name,
            what,
            seconds,
            " ".join(item.sampled),
        )
        if self.tracker is not None and item.mlflow_run_id:
            self.tracker.close_child(
                item.mlflow_run_id,
                frozen,
                self.metric_names,
                frozen.user_attrs.get("fail_reason"),
            )

    # ------------------------------------------------------------------ end

    def _best(self) -> list[Any]:
        return best_trials(self.study)

    def _seeds(self) -> tuple[list[int], list[int]]:
        """``(sweep.heldout_seeds, the search's seeds)``; a held-out seed a trial also runs on
        is refused before the study starts."""
        held = [
            int(x) for x in OmegaConf.select(self.config, "sweep.heldout_seeds", default=[]) or []
        ]
        search = OmegaConf.select(self.config, "sweep.seeds", default=None)
        if search is None:
            search = OmegaConf.select(self.config, "study.seeds", default=[]) or []
        search = [int(x) for x in search]
        overlap = sorted(set(held) & set(search))
        if overlap:
            raise SweeperConfigError(
                f"sweep.heldout_seeds shares {overlap} with the search's seeds {search}: "
                "held-out seeds must be ones no trial runs on"
            )
        return held, search

    def _heldout(self) -> dict[str, Any] | None:
        """Re-run the best setting on ``sweep.heldout_seeds`` (seeds no trial ran on): how much of
        its search-time value was the search fitting its own seeds. One job, outside any trial
        (no pruning, no child run); the result goes to ``<sweep dir>/heldout.json``, the study's
        user attrs, the log line and the MLflow parent run."""
        held, search = self._seeds()
        best = self._best()
        if not held or not best or self.n_obj > 1 or "overrides" not in best[0].user_attrs:
            return None
        b = best[0]
        overrides = [
            *b.user_attrs["overrides"],
            f"sweep.seeds=[{','.join(map(str, held))}]",
            "hydra.sweep.subdir=heldout",
            f"++hydra.job.env_set.{ENV}=''",  # not a trial: no report, no child run
        ]
        log.info("re-running best trial %d on held-out seeds %s", b.number, held)
        try:
            (ret,) = self.launcher.launch([overrides], initial_job_idx=len(self.study.trials))
            value = float(ret.return_value)
        except Exception as exc:  # the study stands; only its held-out check is missing
            log.warning("held-out re-evaluation failed: %s", one_line(exc))
            return None
        info = {
            "trial": b.number,
            "metric": self.metric_names[0],
            "search_seeds": search,
            "search_value": float(b.values[0]),
            "heldout_seeds": held,
            "heldout_value": value,
            "drop": float(b.values[0]) - value,
        }
        self.study.set_user_attr("heldout", info)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        (sweep_dir / "heldout.json").write_text(json.dumps(info, indent=1))
        return info

    def _finish(self, status: str) -> None:
        counts = self.counts()
        best = self._best()
        heldout = getattr(self, "heldout", None)
        path = None
        try:
            if best and self.s.get("export_best", True):
                path = self._export(best[0])
        except Exception as exc:
            log.warning("could not export the best trial: %s", one_line(exc))
        if self.tracker is not None and heldout is not None and self.tracker.parent_id:
            try:
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                m = heldout["metric"]
                self.tracker.client.log_batch(
                    self.tracker.parent_id,
                    metrics=[
                        Metric(f"best/{m}/search", heldout["search_value"], now, 0),
                        Metric(f"best/{m}/heldout", heldout["heldout_value"], now, 0),
                    ],
                )
            except Exception as exc:
                log.warning("could not log the held-out value: %s", one_line(exc))
        if self.tracker is not None:
            try:
                self.tracker.close_parent(
                    self.study,
                    self.metric_names,
                    {
                        "complete": counts.complete,
                        "pruned": counts.pruned,
                        "failed": counts.failed,
                        "interrupted": counts.interrupted,
                    },
                    status,
                )
            except Exception as exc:
                log.warning("could not close the MLflow parent run: %s", one_line(exc))
        summary = (
            f"study '{self.study_name}': {counts.finished}/{self.n_trials} finished "
            f"({counts.complete} complete, {counts.pruned} pruned), {counts.failed} failed"
            + (f", {counts.interrupted} interrupted" if counts.interrupted else "")
            + (f", {counts.running} still running in other workers" if counts.running else "")
        )
        if best:
            b = best[0]
            values = ", ".join(
                f"{n}={v:.4g}" for n, v in zip(self.metric_names, b.values, strict=True)
            )
            summary += f"; best trial {b.number}: {values}"
            if heldout is not None:
                summary += (
                    f" on the search seeds {heldout['search_seeds']}, "
                    f"{heldout['heldout_value']:.4g} on held-out seeds {heldout['heldout_seeds']}"
                )
        if path is not None:
            summary += f"; best config: {path}"
        log.info(summary)

    def _export(self, trial: Any) -> Path | None:
        export_dir = self.s.get("export_dir")
        if export_dir:
            folder = Path(str(export_dir))
        else:
            conf = primary_config_dir(self.config)
            if conf is None:
                log.warning("no file-system config directory: set hydra.sweeper.export_dir")
                return None
            folder = conf / "experiment"
        text = experiment_yaml(
            self.study_name,
            trial,
            self.metric_names,
            redact(self.storage_url),
            trial.user_attrs.get("overrides", []),
            [str(x) for x in self.s.get("export_exclude") or []],
            self._is_group,
        )
        path = folder / f"best_{self.study_name}.yaml"
        if not path.exists() or path.read_text() != text:
            write_atomic(path, text)
        return path

    def _parent_tags(self) -> dict[str, str]:
        return {
            "optuna.study_name": self.study_name,
            "optuna.storage": redact(self.storage_url),
            "optuna.directions": ",".join(self.directions),
            "optuna.sampler": self.sampler_name,
            "optuna.pruner": self.pruner_cfg["name"],
            "optuna.metric": ",".join(self.metric_names),
        }

    def _parent_params(self) -> dict[str, str]:
        params = {f"space.{k}": str(v) for k, v in self.space.distributions().items()}
        for fixed in self.space.fixed:
            key, _, value = fixed.partition("=")
            params[f"fixed.{key.lstrip('+~')}"] = value
        params.update(
            {
                "n_trials": str(self.n_trials),
                "n_jobs": str(self.n_jobs),
                "max_failure_rate": str(self.s.get("max_failure_rate", 0.0)),
                "sampler.seed": str(self.sampler_seed),
                "sampler.kwargs": str(self.sampler_kwargs),
                "pruner.kwargs": str(self.pruner_cfg["kwargs"]),
            }
        )
        return params
