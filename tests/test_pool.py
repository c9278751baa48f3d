"""The fit pool: jobs in forked one-thread workers, results in submission order, fits recorded in
the worker and replayed into MLflow by the parent."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
import torch

from transferlab.pool import (
    FitLog,
    fit_pool,
    fit_workers,
    pack_state,
    recording_logger,
    shared,
    unpack_state,
)
from transferlab.tracking import StageRun


def _job(i: int) -> tuple[int, int, int, float]:
    # the first job is the slowest: its result must still come first
    time.sleep(0.3 if i == 0 else 0.01)
    x = shared("x")
    return i, os.getpid(), torch.get_num_threads(), float((x * i).sum())


def test_results_come_back_in_submission_order_from_one_thread_workers() -> None:
    x = torch.arange(4.0)
    with fit_pool(2, {"x": x}) as pmap:
        out = list(pmap(_job, range(6)))
    assert [o[0] for o in out] == list(range(6))
    assert [o[3] for o in out] == [float((x * i).sum()) for i in range(6)]
    pids = {o[1] for o in out}
    assert os.getpid() not in pids and len(pids) == 2, pids  # both workers were used
    assert {o[2] for o in out} == {1}  # OpenMP forbids more after a fork of a threaded parent


def test_one_worker_runs_in_process() -> None:
    with fit_pool(1, {"x": torch.ones(2)}) as pmap:
        out = list(pmap(_job, [1, 2]))
    assert {o[1] for o in out} == {os.getpid()}
    with pytest.raises(KeyError):  # inputs are dropped with the pool
        shared("x")


def _fails(i: int) -> int:
    if i == 1:
        raise ValueError("job 1 is bad")
    return i


def test_a_worker_error_reaches_the_parent() -> None:
    with fit_pool(2) as pmap, pytest.raises(ValueError, match="job 1 is bad"):
        list(pmap(_fails, range(3)))


def _dies(i: int) -> int:
    if i == 1:
        os._exit(3)  # a worker killed mid-job (OOM killer, segfault)
    time.sleep(0.05)
    return i


@pytest.mark.timeout(120)  # the failure this guards against is a hang
def test_a_dead_worker_fails_the_map_instead_of_hanging() -> None:
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool), fit_pool(2) as pmap:
        list(pmap(_dies, range(6)))


def test_fit_workers_never_exceeds_the_jobs() -> None:
    assert fit_workers({"fit_workers": 2}, 1) == 1
    assert fit_workers({"fit_workers": 2}, 10) == 2
    assert fit_workers({}, 10) == 1
    assert fit_workers({"fit_workers": None}, 1000) == len(os.sched_getaffinity(0))  # one per core


def test_weights_round_trip_bit_for_bit() -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    state = unpack_state(pack_state(m))
    assert state.keys() == m.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


def test_recorded_fit_is_replayed_as_a_child_run(tmp_path: Path) -> None:
    log = FitLog(start_ms=1_000_000)
    logger = recording_logger(log)
    logger.log_metrics({"train/loss": 2.5, "epoch": 0}, step=0)
    logger.log_metrics({"train/loss": 1.5, "val/acc": 0.5}, step=7)
    logger.log_hyperparams({"lr": 0.01})
    logger.finalize("success")
    assert log.end_ms >= log.metrics[-1][0]
    cfg = {"logger": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}", "experiment": "t"}}
    with StageRun(cfg, "finetune") as tr:
        tr.log_fit("finetune:image:fmnist:mae", {"target": "fmnist"}, log)
        tr.log_fit("finetune:image:fmnist:gan", {}, FitLog(), error=ValueError("bad\nmore"))
    con = sqlite3.connect(tmp_path / "m.db")
    runs = dict(con.execute("SELECT name, run_uuid FROM runs").fetchall())
    ok, bad = runs["finetune:image:fmnist:mae"], runs["finetune:image:fmnist:gan"]
    rows = con.execute(
        "SELECT key, value, step, timestamp FROM metrics WHERE run_uuid = ? ORDER BY step, key",
        (ok,),
    ).fetchall()
    assert [(k, v, s) for k, v, s, _ in rows] == [
        ("epoch", 0.0, 0),
        ("train/loss", 2.5, 0),
        ("train/loss", 1.5, 7),
        ("val/acc", 0.5, 7),
    ]
    assert {r[3] for r in rows} == {ts for ts, _, _ in log.metrics}  # the fit's own clock
    status = dict(con.execute("SELECT run_uuid, status FROM runs").fetchall())
    start = dict(con.execute("SELECT run_uuid, start_time FROM runs").fetchall())
    assert status[ok] == "FINISHED" and start[ok] == 1_000_000
    assert status[bad] == "FAILED"
    tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (bad,)).fetchall())
    assert tags["error"] == "ValueError: bad" and "mlflow.parentRunId" in tags
    params = con.execute("SELECT key, value FROM params WHERE run_uuid = ?", (ok,)).fetchall()
    assert params == [("lr", "0.01")]
