"""Team setup: Optuna storage and the MLflow tracking server on PostgreSQL.

A throw-away PostgreSQL cluster is started by the test (Debian `postgresql`: `initdb` + `pg_ctl` on a
free port of 127.0.0.1, trust auth, removed afterwards). Without PostgreSQL or psycopg2 the tests
are skipped with the reason; as root the cluster runs as the `postgres` system user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import project_env

pytestmark = pytest.mark.postgres


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4])
    )
    return versions[-1] if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    """A PostgreSQL server on 127.0.0.1 with databases `mlflow` and `optuna`; yields their URLs."""
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    prefix: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="transferlab-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        if not shutil.which("runuser"):
            shutil.rmtree(base)
            pytest.skip("running as root without runuser to drop to the 'postgres' user")
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, sock, port = base / "data", base / "sock", _free_port()

    def pg(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, timeout=120)

    try:
        pg("mkdir", str(sock))
        pg(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = f"-h 127.0.0.1 -p {port} -k {sock} -F"
        pg(pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "server.log"), "-w", "start")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"could not start PostgreSQL: {(exc.stderr or exc.stdout).strip()[-300:]}")
    try:
        con = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        con.autocommit = True
        with con.cursor() as cur:
            for db in ("mlflow", "optuna"):
                cur.execute(f"CREATE DATABASE {db}")
        con.close()
        root = f"postgres@127.0.0.1:{port}"
        yield {
            "port": str(port),
            "mlflow": f"postgresql://{root}/mlflow",
            "optuna": f"postgresql+psycopg2://{root}/optuna",
            "dsn_mlflow": f"host=127.0.0.1 port={port} user=postgres dbname=mlflow",
            "dsn_optuna": f"host=127.0.0.1 port={port} user=postgres dbname=optuna",
        }
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pg(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def _query(dsn: str, sql: str, args: tuple = ()) -> list[tuple]:
    import psycopg2

    con = psycopg2.connect(dsn)
    try:
        with con.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        con.close()


def test_optuna_study_shared_by_two_workers(postgres: dict[str, str]) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    xs = [0.0, 1.0, 1.75, 3.0, 2.5, 4.0]
    first = optuna.create_study(
        study_name="pg-sweep", storage=postgres["optuna"], direction="minimize"
    )
    for x in xs:
        first.enqueue_trial({"x": x})

    def objective(trial: optuna.Trial) -> float:
        return (trial.suggest_float("x", -5.0, 5.0) - 2.0) ** 2

    # Two "workers" (separate study objects, as two machines would hold) drain one queue.
    second = optuna.load_study(study_name="pg-sweep", storage=postgres["optuna"])
    first.optimize(objective, n_trials=3)
    second.optimize(objective, n_trials=3)

    again = optuna.load_study(study_name="pg-sweep", storage=postgres["optuna"])
    assert sorted(t.params["x"] for t in again.trials) == sorted(xs)
    assert again.best_params == {"x": 1.75} and again.best_value == pytest.approx(0.0625)
    rows = _query(postgres["dsn_optuna"], "SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'")
    assert rows == [(len(xs),)]


STAGE_RUN = textwrap.dedent(
    """
    import sys
    from transferlab.tracking import StageRun, check_tracking_uri

    uri = sys.argv[1]
    check_tracking_uri(uri)
    cfg = {"seed": 7, "logger": {"enabled": True, "tracking_uri": uri, "experiment": "transferlab"}}
    with StageRun(cfg, "evaluate", tags={"route": "image", "run_name": "evaluate:image"}) as tr:
        tr.log_metrics({"fmnist/gain": 0.25})
        tr.log_text("hello", "notes.txt")
        print("RUN_ID=" + tr.run_id)
    """
)


@pytest.mark.slow
def test_mlflow_server_on_postgres(postgres: dict[str, str], tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(project_env(), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    artifacts = tmp_path / "artifacts"
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        postgres["mlflow"],
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            assert time.monotonic() < deadline, (
                "mlflow server did not start:\n" + log.read_text()[-3000:]
            )
            time.sleep(0.5)

        proc = subprocess.run(
            [sys.executable, "-c", STAGE_RUN, url],
            env=project_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_id = proc.stdout.split("RUN_ID=", 1)[1].split()[0]

        # The run landed in PostgreSQL, with the stage tags, the metric and the config as params.
        status = _query(
            postgres["dsn_mlflow"], "SELECT status FROM runs WHERE run_uuid = %s", (run_id,)
        )
        assert status == [("FINISHED",)]
        tags = dict(
            _query(
                postgres["dsn_mlflow"], "SELECT key, value FROM tags WHERE run_uuid = %s", (run_id,)
            )
        )
        assert (
            tags["transferlab.stage"] == "evaluate" and tags["mlflow.runName"] == "evaluate:image"
        )
        metric = _query(
            postgres["dsn_mlflow"],
            "SELECT value FROM metrics WHERE run_uuid = %s AND key = 'fmnist/gain'",
            (run_id,),
        )
        assert metric == [(0.25,)]
        params = dict(
            _query(
                postgres["dsn_mlflow"],
                "SELECT key, value FROM params WHERE run_uuid = %s",
                (run_id,),
            )
        )
        assert params["seed"] == "7"
        # Artifacts went through the server (proxied) into its artifact destination.
        assert [p.read_text() for p in artifacts.rglob("notes.txt")] == ["hello"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)
