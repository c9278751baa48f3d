"""Hydra launchers for sweeps: `hydra/launcher=joblib|submitit_local|submitit_slurm` on the project's conf.

The multirun app below composes `conf/` and runs `transferlab.config.validate`, the first thing every
sweep trial does; each job writes what it saw, so the test checks that every point of the sweep ran
once, in its own process, with its own overrides.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_project, project_env, run

APP = """
import json, os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(config_path={conf!r}, config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    from transferlab.config import validate

    validate(cfg, "finetune")
    out = Path(HydraConfig.get().runtime.output_dir) / "job.json"
    out.write_text(json.dumps({{"num": HydraConfig.get().job.num, "pid": os.getpid(),
                               "lr": cfg.finetune.lr, "freeze_depth": cfg.finetune.freeze_depth}}))
    return float(cfg.finetune.lr)


if __name__ == "__main__":
    main()
"""


def _multirun(tmp_path: Path, launcher: list[str]) -> list[dict]:
    app = tmp_path / "sweep_app.py"
    app.write_text(APP.format(conf=str(ROOT / "conf")))
    sweep_dir = tmp_path / "multirun"
    cmd = [
        sys.executable,
        str(app),
        "-m",
        *launcher,
        "finetune.lr=0.001,0.01",
        "finetune.freeze_depth=0,2",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra/job_logging=disabled",
    ]
    run(cmd, tmp_path, timeout=300, env=project_env())
    jobs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/job.json"))]
    return sorted(jobs, key=lambda j: j["num"])


def _check_grid(jobs: list[dict]) -> None:
    # Hydra's basic sweeper: the cartesian product, in order, one job per point.
    assert [(j["lr"], j["freeze_depth"]) for j in jobs] == [
        (0.001, 0),
        (0.001, 2),
        (0.01, 0),
        (0.01, 2),
    ]
    assert [j["num"] for j in jobs] == [0, 1, 2, 3]


def test_submitit_local_runs_each_point_in_its_own_process(tmp_path: Path) -> None:
    jobs = _multirun(tmp_path, ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"])
    _check_grid(jobs)
    assert len({j["pid"] for j in jobs}) == 4
    assert (tmp_path / "multirun/.submitit").is_dir()


@pytest.mark.slow
def test_joblib_runs_the_sweep_in_parallel_workers(tmp_path: Path) -> None:
    jobs = _multirun(tmp_path, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    _check_grid(jobs)
    assert 1 <= len({j["pid"] for j in jobs}) <= 2


@pytest.mark.slow
def test_project_sweep_app_under_submitit_local(tiny_pipeline: Path, tmp_path: Path) -> None:
    """`python -m transferlab.sweep -m hydra/launcher=submitit_local ...`: real fine-tuning trials."""
    project = make_project(tmp_path / "sweep", ["+debug=tiny"])
    shutil.copytree(tiny_pipeline / "data", project / "data")
    shutil.copytree(tiny_pipeline / "models/image/pretrain", project / "models/image/pretrain")
    sweep_dir = project / "multirun"
    cmd = [
        sys.executable,
        "-m",
        "transferlab.sweep",
        "-m",
        "hydra/launcher=submitit_local",
        "+debug=tiny",
        "finetune.max_steps.image=3",
        "finetune.lr=0.001,0.01",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    run(cmd, project, timeout=400)
    results = [json.loads((sweep_dir / str(i) / "result.json").read_text()) for i in (0, 1)]
    for r in results:
        assert 0.0 <= r["metrics"]["val/acc"] <= 1.0 and r["seeds"] == [0, 1]
    # Each job fine-tuned with its own override: same schedule, learning rates 10x apart.
    lr0, lr1 = (r["history"]["0"][0]["train/lr"] for r in results)
    assert lr1 / lr0 == pytest.approx(10.0, rel=1e-5)
    assert len(list((sweep_dir / ".submitit").iterdir())) >= 2


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
        ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ],
)
def test_launchers_compose_with_the_project_conf(launcher: str, target: str) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose(
            "config",
            overrides=[f"hydra/launcher={launcher}", "hydra.sweep.dir=multirun"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_ == target
    if launcher == "submitit_slurm":
        assert "partition" in cfg.hydra.launcher and "gres" in cfg.hydra.launcher
