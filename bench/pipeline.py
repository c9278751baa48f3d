"""The pipeline as a user runs it: the last ``make run``, a no-op ``dvc repro``, start-up imports."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import BIN, TIMING_FILE, rnd, tool_env

STAGE_MODULES = {
    "data": "data",
    "pretrain": "pretrain",
    "finetune": "finetune",
    "evaluate": "evaluate",
    "shift-analysis": "shift",
    "curves": "curves",
    "summary": "summary",
}


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
        env=tool_env(),
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


def noop_repro(project: Path, repeats: int = 2) -> dict[str, Any]:
    """Wall time of ``dvc repro`` when nothing changed; not run unless ``dvc status`` is clean."""
    if not (project / "dvc.lock").exists():
        return {"measured": False, "note": "no dvc.lock: run `make run` first"}
    dvc = str(BIN / "dvc")
    t = time.perf_counter()
    st = subprocess.run(
        [dvc, "status", "--json"], cwd=project, capture_output=True, text=True, env=tool_env()
    )
    status_s = time.perf_counter() - t
    try:
        changed = json.loads(st.stdout or "{}")
    except ValueError:
        changed = {"?": st.stdout[-200:] + st.stderr[-200:]}
    if st.returncode != 0 or changed:
        return {
            "measured": False,
            "status_s": rnd(status_s, 2),
            "changed_stages": sorted(changed)[:20],
            "note": "the pipeline is not up to date, so `dvc repro` would run stages: not timed",
        }
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        proc = subprocess.run(
            [dvc, "repro"], cwd=project, capture_output=True, text=True, env=tool_env()
        )
        times.append(time.perf_counter() - t)
        if proc.returncode != 0:
            return {"measured": False, "note": f"dvc repro failed: {proc.stderr[-300:]}"}
    return {"measured": True, "status_s": rnd(status_s, 2), "repro_s": [rnd(x, 2) for x in times]}


def startup_times(project: Path) -> dict[str, Any]:
    """Seconds a fresh interpreter needs for the imports a stage pays before any work
    (``transferlab.cli``, the stage module, and ``mlflow`` for its tracking run)."""

    def wall(code: str) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=tool_env(), cwd=project)
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
            env=tool_env(),
        )
        out["transferlab validate"] = round(time.perf_counter() - t, 2)
    return {"imports": out, "stages": stages}
