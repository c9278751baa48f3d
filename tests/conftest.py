from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY_IMAGE = {
    "source": "fashion_mnist",
    "fashion_mnist_dir": "/usr/share/datasets/fashion-mnist",
    "source_train": 256,
    "source_val": 64,
    "source_test": 64,
    "targets": ["fmnist", "fmnist_inverted", "digits", "lfw", "textures"],
    "shots_per_class": 4,
    "pool_per_class": 6,
    "val_per_class": 4,
    "test_per_class": 8,
    "texture_patch": 28,
    "corruptions": {
        "base": "fmnist",
        "kinds": ["gaussian_noise", "contrast"],
        "severities": [1, 5],
    },
    "ood_partners": {"fmnist": ["fmnist_gaussian_noise5", "fmnist_inverted"]},
}


#: The suite's own warm-start server (stages run by `dvc repro` fork from it), stopped at the end.
WARM_DIR = tempfile.mkdtemp(prefix="tl-warm-")


def project_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        TRANSFERLAB_NO_PROGRESS="1",
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        TRANSFERLAB_WARM_DIR=WARM_DIR,
    )
    env.pop("TRANSFERLAB_PIPELINE_ID", None)
    return env


@pytest.fixture(scope="session", autouse=True)
def _stop_warm_servers() -> object:
    yield
    from transferlab import warm

    for pid_file in Path(WARM_DIR).glob("*.pid"):
        warm.stop(pid_file.with_suffix(".sock"))


def run(
    cmd: list[str], cwd: Path, timeout: int = 600, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env or project_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def make_project(dest: Path, overrides: list[str]) -> Path:
    """A throw-away copy of the project (conf, dvc.yaml, src for dep hashing) as its own git+DVC repo."""
    for name in ("conf", "src"):
        shutil.copytree(
            ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, dest / name)
    (dest / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    shutil.copy(ROOT / ".dvc" / ".gitignore", dest / ".dvc" / ".gitignore")
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.email", "test@transferlab.invalid"], dest)
    run(["git", "config", "user.name", "transferlab tests"], dest)
    run([str(BIN / "transferlab"), "params", *overrides], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "tiny project"], dest)
    return dest


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole pipeline run once by `dvc repro` on the tiny debug config (shared by e2e tests)."""
    root = make_project(tmp_path_factory.mktemp("tiny"), ["+debug=tiny"])
    proc = run([str(BIN / "dvc"), "repro"], root, timeout=600)
    (root / "repro.log").write_text(proc.stdout + proc.stderr)
    return root
