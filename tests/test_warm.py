"""Warm start: stages that DVC runs are forked from one pre-imported server and must behave
exactly like cold runs (same outputs bit for bit, exit codes, error lines, signals)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import BIN, WARM_DIR, make_project, project_env, run
from transferlab import warm

TL = str(BIN / "transferlab")


def _env(warm_on: bool, stage: str = "pretrain-image@mae") -> dict[str, str]:
    env = project_env()
    env["DVC_STAGE"] = stage  # what DVC sets for every stage command
    env["TRANSFERLAB_WARM"] = "1" if warm_on else "0"
    return env


def _server_log() -> str:
    return "".join(p.read_text() for p in Path(WARM_DIR).glob("*.log"))


def _children(pattern: str) -> list[int]:
    return [int(pid) for pid in re.findall(rf"(\d+) runs {pattern}", _server_log())]


def _child_of(pattern: str, timeout: float = 120, seen: list[int] | None = None) -> int:
    """The pid of the newest warm child that ran ``pattern`` (and is not in ``seen``)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if new := [pid for pid in _children(pattern) if pid not in (seen or [])]:
            return new[-1]
        time.sleep(0.05)
    raise AssertionError(f"no warm child ran {pattern!r}:\n{_server_log()[-2000:]}")


def _gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("warm"), ["+debug=tiny"])
    # with no server yet, the first warm command runs cold and starts one in the background
    run([TL, "data", "route=image"], root, env=_env(True, "data@image"))
    deadline = time.time() + 180
    while not any(Path(WARM_DIR).glob("*.sock")) and time.time() < deadline:
        time.sleep(0.1)
    assert any(Path(WARM_DIR).glob("*.sock")), _server_log()[-2000:]
    return root


def test_the_key_follows_code_and_import_time_environment(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    env = {"OMP_NUM_THREADS": "2", "HOME": "/root"}
    key = warm.fingerprint(pkg, env)
    assert warm.fingerprint(pkg, {**env, "HOME": "/elsewhere"}) == key  # read at run time
    assert warm.fingerprint(pkg, {**env, "OMP_NUM_THREADS": "1"}) != key  # read at import
    st = (pkg / "sub" / "b.py").stat()
    os.utime(pkg / "sub" / "b.py", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert warm.fingerprint(pkg, env) != key  # an edited module means a new server


def test_a_warm_stage_equals_the_cold_one_bit_for_bit(project: Path) -> None:
    cmd = [TL, "pretrain", "route=image", "objective=mae"]
    out = project / "models/image/pretrain/mae/backbone.pt"
    cold = run(cmd, project, env=_env(False))
    cold_weights = torch.load(out, weights_only=True)["state_dict"]
    shutil.rmtree(out.parent)
    hot = run(cmd, project, env=_env(True))
    assert _child_of("pretrain route=image objective=mae", timeout=1)
    hot_weights = torch.load(out, weights_only=True)["state_dict"]
    assert hot_weights.keys() == cold_weights.keys()
    assert all(torch.equal(hot_weights[k], cold_weights[k]) for k in cold_weights)
    # the caller prints what the child printed, through the same file descriptors
    assert "✓ pretrain route=image objective=mae done" in hot.stderr
    assert "✓ pretrain route=image objective=mae done" in cold.stderr
    con = sqlite3.connect(project / "mlflow.db")
    tags = con.execute(
        "SELECT r.start_time, t.key, t.value FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
        "WHERE t.key IN ('process.warm', 'process.torch_threads') AND r.name = 'pretrain:image:mae' "
        "ORDER BY r.start_time"
    ).fetchall()
    by_run: dict[int, dict[str, str]] = {}
    for start, key, value in tags:
        by_run.setdefault(start, {})[key] = value
    (c, h) = by_run.values()
    assert (c["process.warm"], h["process.warm"]) == ("false", "true")
    assert h["process.torch_threads"] == c["process.torch_threads"] == str(torch.get_num_threads())


def test_a_warm_stage_error_keeps_its_line_and_exit_code(project: Path) -> None:
    proc = run(
        [TL, "finetune", "route=image", "finetune.lr=-0.5"],
        project,
        check=False,
        env=_env(True, "finetune@image"),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        proc.stderr.strip().splitlines()[-1] == "transferlab: error: finetune.lr=-0.5 must be > 0"
    )
    _child_of(r"finetune route=image finetune\.lr=-0\.5", timeout=1)


def _long_run(project: Path, objective: str) -> tuple[subprocess.Popen, int]:
    args = ["pretrain", "route=image", f"objective={objective}", "pretrain.image.max_epochs=500"]
    args += [f"objectives.{objective}.max_epochs=500"]
    pattern = re.escape(" ".join(args))
    earlier = _children(pattern)
    proc = subprocess.Popen(
        [TL, *args],
        cwd=project,
        env=_env(True, f"pretrain-image@{objective}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    child = _child_of(pattern, seen=earlier)
    time.sleep(1.0)  # inside training
    assert proc.poll() is None and not _gone(child, timeout=0)
    return proc, child


def test_ctrl_c_on_the_caller_interrupts_the_stage(project: Path) -> None:
    proc, child = _long_run(project, "supervised")
    os.kill(proc.pid, signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "transferlab: interrupted" in err
    assert _gone(child)
    assert not (project / "models/image/pretrain/supervised").exists()


def test_a_killed_caller_takes_its_stage_with_it(project: Path) -> None:
    proc, child = _long_run(project, "supervised")
    os.killpg(proc.pid, signal.SIGKILL)  # what test_resume and a killed `dvc repro` do
    proc.communicate(timeout=60)
    assert _gone(child), "the stage outlived the command that ran it"
    assert not (project / "models/image/pretrain/supervised").exists()
