"""MLflow: one parent run per study, one child run per trial.

The parent run's id is kept in the study's user attributes, so a resumed sweep (or a second worker)
adds its children under the same parent. A child run is created before its trial is launched, so
the job can log its own curves into it (``TrialContext.mlflow_run_id``); the sweeper then adds the
parameters, Optuna's intermediate values (metric ``optuna/intermediate``, step = reported step),
the final value(s), the state and a ``pruned`` tag, and closes it.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.trial import TrialState

from transferlab.tracking import mask_secret

PARENT_ATTR = "mlflow_parent_run_id"
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    def __init__(self, tracking_uri: str | None, experiment: str) -> None:
        # lazy: mlflow costs ~1.1 s of import; a sweep imports this module with MLflow off too
        import mlflow
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        self.tracking_uri = mlflow.get_tracking_uri()
        self.client = MlflowClient(self.tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                self.experiment_id = self.client.create_experiment(experiment)
            except MlflowException:  # a second worker created it first: read theirs
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
        if exp is not None:
            self.experiment_id = exp.experiment_id
        self.parent_id: str | None = None

    def _alive(self, run_id: str) -> bool:
        try:
            run = self.client.get_run(run_id)
        except Exception:
            return False
        return run.info.lifecycle_stage == "active" and run.info.experiment_id == self.experiment_id

    def open_parent(self, study: Any, tags: Mapping[str, str], params: Mapping[str, str]) -> str:
        """Reuse the study's parent run (resume, other workers) or create it."""
        key = f"{PARENT_ATTR}:{self.tracking_uri}"
        known = study.user_attrs.get(key)
        if known and self._alive(known):
            self.parent_id = known
            self.client.update_run(known, status="RUNNING")
            return known
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"sweep:{study.study_name}",
            tags={"transferlab.stage": "sweep", "git.commit": _git_commit(), **tags},
        )
        self.parent_id = run.info.run_id
        self._log_params(self.parent_id, params)
        study.set_user_attr(key, self.parent_id)
        return self.parent_id

    def close_leftovers(self, study: Any, metric_names: Sequence[str]) -> int:
        """Close the child runs of finished trials that the sweeper never closed.

        A sweep killed between Optuna's ``tell`` and the MLflow update leaves such a child
        (RUNNING, or FINISHED by the job's own logger) without the trial's state and values.
        """
        if self.parent_id is None:
            return 0
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
            max_results=50000,
        )
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        closed = 0
        for run in runs:
            if "optuna.state" in run.data.tags:
                continue
            number = run.data.tags.get("optuna.trial_number")
            frozen = by_number.get(int(number)) if number is not None else None
            if frozen is not None and frozen.state.is_finished():
                self.close_child(
                    run.info.run_id, frozen, metric_names, frozen.user_attrs.get("fail_reason")
                )
                closed += 1
        return closed

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        # lazy: mlflow costs ~1.1 s of import; a sweep imports this module with MLflow off too
        from mlflow.entities import Param

        items = [Param(str(k)[:250], mask_secret(str(k), str(v))[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def open_child(self, study_name: str, number: int, overrides: Sequence[str]) -> str:
        assert self.parent_id is not None
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{study_name}:trial_{number}",
            tags={
                "mlflow.parentRunId": self.parent_id,
                "transferlab.stage": "sweep-trial",
                "optuna.study_name": study_name,
                "optuna.trial_number": str(number),
            },
        )
        params = {}
        for ov in overrides:
            key, _, value = ov.partition("=")
            params[key.lstrip("+~")] = value.strip("'")
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def close_child(
        self, run_id: str, frozen: Any, metric_names: Sequence[str], reason: str | None
    ) -> None:
        # lazy: mlflow costs ~1.1 s of import; a sweep imports this module with MLflow off too
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics = [
            Metric("optuna/intermediate", float(v), now, int(step))
            for step, v in sorted(frozen.intermediate_values.items())
            if v is not None and math.isfinite(v)
        ]
        for name, value in zip(metric_names, frozen.values or [], strict=False):
            if value is not None and math.isfinite(value):
                metrics.append(Metric(f"optuna/{name}", float(value), now, 0))
        state = frozen.state.name
        tags = [
            RunTag("optuna.state", state),
            RunTag("pruned", "true" if state == "PRUNED" else "false"),
        ]
        if frozen.intermediate_values:
            tags.append(RunTag("optuna.last_step", str(max(frozen.intermediate_values))))
        if reason:
            tags.append(RunTag("optuna.fail_reason", reason[:5000]))
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])
        self.client.log_batch(run_id, tags=tags)
        status = STATUS.get(state, "KILLED")
        if frozen.user_attrs.get("interrupted"):
            status = "KILLED"
        self.client.set_terminated(run_id, status=status)

    def close_parent(
        self, study: Any, metric_names: Sequence[str], counts: Mapping[str, int], status: str
    ) -> None:
        # lazy: mlflow costs ~1.1 s of import; a sweep imports this module with MLflow off too
        from mlflow.entities import Metric, RunTag

        if self.parent_id is None:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(f"trials/{k}", float(v), now, 0) for k, v in counts.items()]
        tags: list[Any] = []
        best = best_trials(study)
        if best:
            b = best[0]
            tags.append(RunTag("optuna.best_trial", str(b.number)))
            for name, value in zip(metric_names, b.values, strict=True):
                metrics.append(Metric(f"best/{name}", float(value), now, 0))
        self.client.log_batch(self.parent_id, metrics=metrics, tags=tags)
        self.client.set_terminated(self.parent_id, status=status)


def best_trials(study: Any) -> list[Any]:
    """The best trial (single objective) or the Pareto front, best first objective first."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    sign = 1 if study.directions[0].name == "MINIMIZE" else -1
    return sorted(study.best_trials, key=lambda t: (sign * t.values[0], t.number))
