"""Tracking: progress output around Lightning fits, secret masking, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from transferlab.progress import progress_bar
from transferlab.tracking import StageRun, flatten, mask_secret


def _tiny_fit(progress: bool) -> None:
    from lightning.pytorch.demos.boring_classes import BoringModel

    from transferlab.training import make_trainer

    trainer = make_trainer(
        {"enable_progress_bar": progress}, max_epochs=1, limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(BoringModel())


def test_stage_progress_survives_lightning_bars_inside(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Lightning's RichProgressBar clears the shared console's live stack when a fit starts; an
    # enclosing live bar then crashed on exit ("pop from empty list") after a whole finetune stage.
    monkeypatch.delenv("TRANSFERLAB_NO_PROGRESS", raising=False)
    with progress_bar(True, hosts_fits=True) as bar:
        task = bar.add_task("finetune[image]", total=2)
        for name in ("fmnist/mae", "fmnist/scratch"):
            bar.update(task, description=f"finetune[image] {name}")
            _tiny_fit(progress=True)
            bar.advance(task)
    err = capsys.readouterr().err
    assert "finetune[image] fmnist/mae done: 1/2" in err
    assert "finetune[image] fmnist/scratch done: 2/2" in err


def test_secret_keys_uri_passwords_and_env_secrets_are_masked() -> None:
    env = {"hunter2-token-value"}
    cfg = {
        "logger": {
            "tracking_uri": "http://alice:s3cr3t@mlflow.example:5000",
            "api_key": "abc123",
            "experiment": "transferlab",
        },
        "db": {"url": "postgresql://bob:pa55@localhost/optuna", "note": "uses hunter2-token-value"},
        "finetune": {"lr": 0.001, "tasks": ["rotation"]},
    }
    flat = flatten(cfg, env_secrets=env)
    assert flat["logger.tracking_uri"] == "http://alice:***@mlflow.example:5000"
    assert flat["logger.api_key"] == "***"
    assert flat["db.url"] == "postgresql://bob:***@localhost/optuna"
    assert flat["db.note"] == "uses ***"
    assert flat["logger.experiment"] == "transferlab"
    assert flat["finetune.lr"] == "0.001"
    assert flat["finetune.tasks"] == '["rotation"]'
    assert mask_secret("x", "sqlite:///mlflow.db", set()) == "sqlite:///mlflow.db"


def test_stage_run_never_logs_environment_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "very-secret-pw")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = {
        "logger": {"enabled": True, "tracking_uri": uri, "experiment": "t"},
        "remote": "https://ci:very-secret-pw@example.org",
        "finetune": {"lr": 0.01},
    }
    with StageRun(cfg, "finetune") as tr:
        run_id = tr.run_id
    run = mlflow.MlflowClient(uri).get_run(run_id)
    logged = " ".join(f"{k}={v}" for k, v in run.data.params.items())
    logged += " ".join(run.data.tags.values())
    assert "very-secret-pw" not in logged
    assert run.data.params["finetune.lr"] == "0.01"
    assert run.data.params["remote"] == "https://ci:***@example.org"


def _writer(uri: str, worker: int, n_stages: int, n_fits: int) -> None:
    import torch

    torch.set_num_threads(1)
    cfg = {"logger": {"enabled": True, "tracking_uri": uri, "experiment": "concurrent"}}
    for s in range(n_stages):
        with StageRun(cfg, "finetune", tags={"worker": str(worker)}) as tr:
            for f in range(n_fits):
                logger = tr.lightning_logger(f"w{worker}-s{s}-f{f}", {"worker": str(worker)})
                for step in range(20):
                    logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
                logger.finalize("success")
            tr.log_metrics({"test/acc": 0.5 + worker / 10})


def test_two_pipelines_writing_one_store_lose_no_run(tmp_path: Path) -> None:
    """Two processes write stage runs with child runs and metrics into one SQLite store at once."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The store's schema is created once up front, as the first stage of a pipeline would.
    mlflow.MlflowClient(uri).search_experiments()
    n_stages, n_fits = 4, 3
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(uri, w, n_stages, n_fits)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        status = dict(con.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        n_metrics = con.execute("SELECT COUNT(*) FROM metrics WHERE key = 'train/loss'").fetchone()[
            0
        ]
    per_worker = n_stages * (1 + n_fits)
    assert status == {"FINISHED": 2 * per_worker}
    assert n_metrics == 2 * n_stages * n_fits * 20


def test_a_stage_run_knows_its_dvc_experiment_and_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tags ``dvc.exp_name``/``dvc.exp_baseline_rev`` (``workspace`` outside ``dvc exp run``) and
    the manifest as an MLflow dataset input: name, digest = manifest hash, split sizes as profile."""
    import json

    import mlflow

    manifest = tmp_path / "manifest.json"
    splits = {"source": {"splits": {"train": 10, "val": 2}}, "digits": {"splits": {"train": 4}}}
    manifest.write_text(
        json.dumps(
            {"route": "image", "source": "fashion_mnist", "hash": "ab" * 32, "datasets": splits}
        )
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = {"logger": {"enabled": True, "tracking_uri": uri, "experiment": "t"}}
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    with StageRun(cfg, "evaluate", manifest=manifest) as workspace_run:
        pass
    monkeypatch.setenv("DVC_EXP_NAME", "plush-mast")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123abc")
    with StageRun(cfg, "evaluate", manifest=manifest) as exp_run:
        pass
    client = mlflow.MlflowClient(uri)
    ws, ex = (client.get_run(r.run_id) for r in (workspace_run, exp_run))
    assert ws.data.tags["dvc.exp_name"] == "workspace"
    assert ex.data.tags["dvc.exp_name"] == "plush-mast"
    assert ex.data.tags["dvc.exp_baseline_rev"] == "0123abc"
    (ds,) = ex.inputs.dataset_inputs
    assert ds.dataset.name == "image:fashion_mnist" and ds.dataset.digest == "ab" * 8
    assert json.loads(ds.dataset.profile) == {k: v["splits"] for k, v in splits.items()}
    found = client.search_runs(
        [ex.info.experiment_id], filter_string="tags.`dvc.exp_name` = 'plush-mast'"
    )
    assert [r.info.run_id for r in found] == [exp_run.run_id]


def test_losing_the_race_to_create_the_experiment_reads_the_winners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from transferlab.tracking import experiment_id

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    winner = mlflow.create_experiment("raced")  # another process got there first
    real = mlflow.get_experiment_by_name
    calls = []

    def stale_first(name: str):  # our first look predates the winner's create
        calls.append(name)
        return None if len(calls) == 1 else real(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", stale_first)
    assert experiment_id("raced") == winner
    assert len(calls) == 2
