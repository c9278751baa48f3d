"""MLflow tracking for every stage execution, plus the progress bars stages share.

One MLflow run per stage execution, tagged with the DVC stage name, the git commit, a pipeline id
shared by the stages of one ``dvc repro`` and the data manifest hash; each fit inside a stage (one per
target × variant) is a nested child run. Imports of ``mlflow`` and ``lightning`` stay inside
functions so that ``--help`` and config validation start fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transferlab.config import check_tracking_uri  # noqa: F401  (lives in the core config module)
from transferlab.process import in_child, pipeline_id

SECRET_MARKERS = ("password", "secret", "token", "api_key", "apikey", "credential")


def git_commit(cwd: str | os.PathLike[str] = ".") -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _secret_env_values() -> set[str]:
    """Values of environment variables whose names look secret (e.g. ``MLFLOW_TRACKING_PASSWORD``)."""
    return {
        v
        for k, v in os.environ.items()
        if len(v) >= 4 and any(m in k.lower() for m in SECRET_MARKERS)
    }


def mask_secret(name: str, value: str, env_secrets: set[str] | None = None) -> str:
    """``value`` with anything secret-looking replaced by ``***``: a secret-named key, the password
    of a URI's ``user:password@`` part, or the value of a secret-named environment variable."""
    if any(m in name.lower() for m in SECRET_MARKERS):
        return "***"
    value = re.sub(r"(?<=://)([^/:@\s]*):[^/@\s]*@", r"\1:***@", value)
    for secret in env_secrets if env_secrets is not None else _secret_env_values():
        value = value.replace(secret, "***")
    return value


def flatten(
    cfg: Mapping[str, Any], prefix: str = "", env_secrets: set[str] | None = None
) -> dict[str, str]:
    """Dotted-key params for MLflow; secrets (see :func:`mask_secret`) are never logged."""
    env_secrets = _secret_env_values() if env_secrets is None else env_secrets
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}.", env_secrets))
        else:
            text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
            out[name] = mask_secret(name, text, env_secrets)
    return out


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


def experiment_tags(commit: str) -> dict[str, str]:
    """Which DVC experiment a run belongs to: ``dvc exp run`` sets ``DVC_EXP_NAME`` and
    ``DVC_EXP_BASELINE_REV``; any other run is the ``workspace`` on the current commit."""
    return {
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME") or "workspace",
        "dvc.exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV") or commit,
    }


def manifest_dataset(manifest: Path) -> Any:
    """An MLflow dataset (metadata only) for a data manifest: MLflow's ``MetaDataset`` keeps no
    profile, so this subclass adds the split sizes of every dataset in the manifest."""
    # lazy: mlflow costs ~1.4 s of import; the CLI imports this module at start-up
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    info = json.loads(manifest.read_text())
    profile = {name: d.get("splits", {}) for name, d in info.get("datasets", {}).items()}
    route = info.get("route") or info.get("kind") or manifest.parent.name
    origin = info.get("source", "data")
    origin = origin.get("name", "data") if isinstance(origin, dict) else origin

    class ManifestDataset(MetaDataset):
        @property
        def profile(self) -> dict[str, Any]:
            return profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(profile)}

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local file
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(manifest.resolve()))
    return ManifestDataset(
        source,
        name=f"{route}:{origin}",
        digest=str(info.get("hash", ""))[:16],
    )


def is_rank_zero() -> bool:
    """False in the processes a multi-process (DDP) launch adds: they must not track or write."""
    return all(os.environ.get(v, "0") in ("", "0") for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def interrupted(exc: BaseException | None) -> bool:
    """Ctrl-C: a KeyboardInterrupt, or what was raised while handling one (Lightning's
    ``sys.exit(1)``, a tracking write the interrupt cut short)."""
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__context__
    return False


def experiment_id(name: str) -> str:
    """The MLflow experiment ``name``'s id, created if missing. Two processes starting on one
    store may both find it missing: the one whose create loses the race (a unique-constraint
    error) reads the winner's."""
    import mlflow
    from mlflow.exceptions import MlflowException

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    try:
        return str(mlflow.create_experiment(name))
    except MlflowException:
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


class StageRun:
    """Context manager: one MLflow run for a stage execution, FAILED with the reason on error."""

    def __init__(
        self,
        cfg: Mapping[str, Any],
        stage: str,
        tags: Mapping[str, str] | None = None,
        manifest: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.stage = stage
        self.logger_cfg = cfg.get("logger", {}) or {}
        # The extra ranks of a DDP fit re-run the stage: only rank 0 tracks it.
        self.enabled = bool(self.logger_cfg.get("enabled", True)) and is_rank_zero()
        self.tags = dict(tags or {})
        self.manifest = manifest
        self.run_id: str | None = None
        self.exp_tags: dict[str, str] = {}
        self.experiment_id: str | None = None

    @property
    def tracking_uri(self) -> str:
        return str(self.logger_cfg.get("tracking_uri", "sqlite:///mlflow.db"))

    def __enter__(self) -> StageRun:
        if not self.enabled:
            return self
        # lazy: mlflow + torch cost ~2.2 s of import; the CLI imports this module at start-up
        import mlflow
        import torch

        mlflow.set_tracking_uri(self.tracking_uri)
        exp_name = str(self.logger_cfg.get("experiment", "transferlab"))
        self.experiment_id = experiment_id(exp_name)
        commit = git_commit()
        self.exp_tags = experiment_tags(commit)
        tags = {
            "transferlab.stage": self.stage,
            "dvc.stage": os.environ.get("TRANSFERLAB_DVC_STAGE", self.stage),
            "git.commit": commit,
            "pipeline.id": pipeline_id(),
            **self.exp_tags,
            "process.warm": str(in_child()).lower(),  # forked by the warm-start server
            "process.torch_threads": str(torch.get_num_threads()),
            "mlflow.source.name": mask_secret("", "transferlab " + " ".join(sys.argv[1:])),
            **self.tags,
        }
        if self.manifest is not None and self.manifest.exists():
            tags["data.manifest_hash"] = json.loads(self.manifest.read_text()).get("hash", "")
        run = mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=self.tags.get("run_name", self.stage),
            tags=tags,
        )
        self.run_id = run.info.run_id
        params = flatten(self.cfg)
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow caps one batch at 100 params
            mlflow.log_params(dict(items[i : i + 100]))
        if self.manifest is not None and self.manifest.exists():
            self.log_dataset(self.manifest)
        return self

    def log_dataset(self, manifest: Path) -> None:
        """The data this run read, as an MLflow dataset input (the runs table's Dataset column):
        named ``<route>:<source>``, the manifest hash as its digest, split sizes as its profile."""
        if not self.enabled:
            return
        # lazy: mlflow costs ~1.4 s of import; the CLI imports this module at start-up
        import mlflow

        mlflow.log_input(manifest_dataset(manifest), context="training")

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if not self.enabled:
            return
        # lazy: mlflow costs ~1.4 s of import; the CLI imports this module at start-up
        import mlflow

        if exc is None:
            mlflow.end_run(status="FINISHED")
            return
        if not interrupted(exc):
            mlflow.set_tag("error", _one_line(exc))
            mlflow.end_run(status="FAILED")
            return
        # Ctrl-C can land inside an MLflow write and leave SQLite locked by this very process:
        # the interrupt, not a tracking error, is what the user must see.
        with contextlib.suppress(Exception):
            mlflow.set_tag("error", "interrupted")
            mlflow.end_run(status="KILLED")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.enabled:
            # lazy: mlflow costs ~1.4 s of import; the CLI imports this module at start-up
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        if self.enabled and Path(path).exists():
            # lazy: mlflow costs ~1.4 s of import; the CLI imports this module at start-up
            import mlflow

            if Path(path).is_dir():
                mlflow.log_artifacts(str(path), artifact_path=artifact_path)
            else:
                mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.enabled:
            # lazy: mlflow costs ~1.4 s of import; the CLI imports this module at start-up
            import mlflow

            mlflow.set_tags(dict(tags))

    def log_text(self, text: str, name: str) -> None:
        if self.enabled:
            # lazy: mlflow costs ~1.4 s of import; the CLI imports this module at start-up
            import mlflow

            mlflow.log_text(text, name)

    def log_fit(
        self,
        run_name: str,
        tags: Mapping[str, str] | None,
        log: Any,
        error: BaseException | None = None,
    ) -> None:
        """Replay a fit recorded by a pool worker (:class:`transferlab.pool.FitLog`) into
        a new child run of this stage run: its metrics with their own steps and timestamps, its
        start and end times, FINISHED (or FAILED with ``error`` as tag ``error``)."""
        if not self.enabled:
            return
        # lazy: mlflow costs ~1.4 s of import; the CLI imports this module at start-up
        import mlflow
        from mlflow.entities import Metric, Param

        client = mlflow.MlflowClient()
        failed = {"error": _one_line(error)} if error is not None else {}
        run_id = self._child_run(run_name, {**(tags or {}), **failed}, start_ms=log.start_ms)
        metrics = [
            Metric(key=k, value=v, timestamp=ts, step=step)
            for ts, step, values in log.metrics
            for k, v in values.items()
        ]
        params = [Param(str(k), str(v)) for k, v in log.params.items()]
        for i in range(0, len(params), 100):  # MLflow's batch limits: 100 params, 1000 metrics
            client.log_batch(run_id, params=params[i : i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i : i + 1000])
        client.set_terminated(
            run_id,
            status="FAILED" if error is not None else "FINISHED",
            end_time=log.end_ms or None,
        )

    def lightning_logger(self, run_name: str, tags: Mapping[str, str] | None = None) -> Any:
        """A Lightning logger writing into a new child run of this stage run (or ``False``)."""
        if not self.enabled:
            return False
        return make_buffered_logger(self.tracking_uri, self._child_run(run_name, tags))

    def _child_run(
        self, run_name: str, tags: Mapping[str, str] | None, start_ms: int | None = None
    ) -> str:
        """A new child run of this stage run; returns its id."""
        # lazy: mlflow costs ~1.4 s of import; the CLI imports this module at start-up
        import mlflow

        child = mlflow.MlflowClient().create_run(
            self.experiment_id,
            start_time=start_ms,
            run_name=run_name,
            tags={
                "mlflow.parentRunId": self.run_id,
                "transferlab.stage": self.stage,
                **self.exp_tags,  # a fit's run is filtered with its experiment's
                **(tags or {}),
            },
        )
        return child.info.run_id


#: Buffered metrics are written once this many are waiting (MLflow's batch limit) ...
FLUSH_METRICS = 1000
#: ... or when the oldest waiting one is this many seconds old, so long fits still show live curves.
FLUSH_SECONDS = 30.0


def make_buffered_logger(tracking_uri: str, run_id: str) -> Any:
    """Lightning's MLFlowLogger, buffering metrics so a fit costs one DB write, not one per log step.

    A subclass rather than a new logger: it keeps MLFlowLogger's naming, hyper-parameter and
    finalisation behaviour, and only moves the write from every ``log_every_n_steps`` to flushes of
    up to 1,000 metrics (MLflow's batch limit): when 1,000 are waiting, when the oldest has waited
    ``FLUSH_SECONDS``, and when the fit ends (Lightning finalises its loggers on success and on
    an exception alike). Lightning calls ``save()`` after every ``log_metrics``; flushing there cost
    one SQLite commit (~25 ms) per logged step and epoch, ~15 % of a default fine-tuning fit.
    """
    # lazy: lightning + mlflow cost ~5.7 s of import; the CLI imports this module at start-up
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.entities import Metric

    class BufferedMLFlowLogger(MLFlowLogger):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._buffer: list[Metric] = []
            self._oldest: float | None = None

        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            ts = int(time.time() * 1000)
            self._buffer.extend(
                Metric(key=k, value=float(v), timestamp=ts, step=step or 0)
                for k, v in metrics.items()
                if not isinstance(v, str)
            )
            if self._oldest is None and self._buffer:
                self._oldest = time.monotonic()

        def flush(self) -> None:
            while self._buffer:
                batch, self._buffer = self._buffer[:1000], self._buffer[1000:]
                self.experiment.log_batch(run_id=self.run_id, metrics=batch)
            self._oldest = None

        def save(self) -> None:
            super().save()
            if len(self._buffer) >= FLUSH_METRICS or (
                self._oldest is not None and time.monotonic() - self._oldest >= FLUSH_SECONDS
            ):
                self.flush()

        def finalize(self, status: str = "success") -> None:
            self.flush()
            super().finalize(status)

    return BufferedMLFlowLogger(tracking_uri=tracking_uri, run_id=run_id)
