"""Screenshots of the MLflow UI over a project's store, taken by headless Chromium.

    python scripts/ui_screenshot.py [--project .] [--out reports/ui]

Starts ``mlflow ui`` on 127.0.0.1 (a free port, one worker, no job runner) in its own process group,
opens the experiment's training-runs table in Debian's ``chromium`` through Selenium and Debian's
``chromedriver`` (no browser download), saves ``mlflow_runs.png``, selects every run, presses
*Compare*, saves ``mlflow_compare.png``, and stops the server. ``tests/test_ui.py`` drives it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("TRANSFERLAB_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TRANSFERLAB_CHROMEDRIVER", "/usr/bin/chromedriver")
# Headless as root in a container: no sandbox, no GPU, and nothing that phones home.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1600,1200",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mlflow_bin() -> str:
    here = Path(sys.executable).parent / "mlflow"
    return str(here) if here.exists() else (shutil.which("mlflow") or "mlflow")


@contextlib.contextmanager
def mlflow_ui(project: Path, port: int | None = None, timeout: float = 120.0) -> Iterator[str]:
    """``mlflow ui`` over ``<project>/mlflow.db``; yields its base URL, stops its process group."""
    port = port or free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    cmd = [
        mlflow_bin(),
        "ui",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{(project / 'mlflow.db').resolve()}",
    ]
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        # Own session: one killpg stops the server and its worker, whatever they spawn.
        proc = subprocess.Popen(
            cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout
            while not _healthy(base):
                if proc.poll() is not None:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"mlflow ui exited with {proc.returncode}:\n{tail}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mlflow ui did not answer on {base} within {timeout:.0f}s")
                time.sleep(0.3)
            yield base
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium driven by Selenium, with a fresh profile that is removed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="transferlab-chromium-")
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def experiment_id(project: Path, name: str = "transferlab") -> str:
    con = sqlite3.connect(f"file:{project / 'mlflow.db'}?mode=ro", uri=True)
    try:
        row = con.execute(
            "SELECT experiment_id FROM experiments WHERE name = ?", (name,)
        ).fetchone()
    finally:
        con.close()
    if row is None:
        raise LookupError(
            f"no experiment '{name}' in {project / 'mlflow.db'}: run `dvc repro` first"
        )
    return str(row[0])


def runs_table_url(base: str, exp_id: str) -> str:
    # MLflow 3 opens experiments in the GenAI (traces) view; this is the training-runs table.
    return f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning"


def _close_assistant(driver: Any) -> None:
    """Best effort: MLflow 3 opens an assistant side panel that covers part of the page."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        with contextlib.suppress(WebDriverException):
            if button.is_displayed():
                button.click()


def capture(project: Path, out: Path, timeout: float = 60.0) -> dict[str, Any]:
    """Screenshot the runs table and the compare view; return what the pages showed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    def body_with(*patterns: str) -> Any:
        def check(d: Any) -> str | bool:
            text = d.find_element(By.TAG_NAME, "body").text
            return text if all(re.search(p, text) for p in patterns) else False

        return check

    out.mkdir(parents=True, exist_ok=True)
    exp_id = experiment_id(project)
    with mlflow_ui(project) as base, chromium() as driver:
        wait = WebDriverWait(driver, timeout)
        driver.get(runs_table_url(base, exp_id))
        # The count reads 0 until the first page of runs has arrived.
        runs_text = wait.until(body_with(r"[1-9]\d*\s+matching runs?"))
        _close_assistant(driver)
        matching = int(re.search(r"(\d+)\s+matching runs?", runs_text).group(1))
        runs_png = out / "mlflow_runs.png"
        driver.save_screenshot(str(runs_png))

        # ag-grid draws its own checkbox over the (hidden) input: click the input from JS.
        select_all = driver.find_element(By.CSS_SELECTOR, "input[aria-label='Select all runs']")
        driver.execute_script("arguments[0].click()", select_all)
        wait.until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid='runs-compare-button']"))
        ).click()
        compare_text = wait.until(body_with("Comparing", "Run details", "Parameters", "Metrics"))
        _close_assistant(driver)
        time.sleep(1.0)  # let the layout settle before the screenshot
        compare_png = out / "mlflow_compare.png"
        driver.save_screenshot(str(compare_png))
        return {
            "base": base,
            "experiment_id": exp_id,
            "runs_url": runs_table_url(base, exp_id),
            "matching_runs": matching,
            "runs_text": runs_text,
            "compare_url": driver.current_url,
            "compare_text": compare_text,
            "screenshots": [str(runs_png), str(compare_png)],
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, default=Path("."))
    p.add_argument("--out", type=Path, default=Path("reports/ui"))
    args = p.parse_args(argv)
    result = capture(args.project.resolve(), args.out)
    summary = {k: result[k] for k in ("runs_url", "matching_runs", "compare_url", "screenshots")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
