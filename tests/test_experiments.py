"""The recipe of docs/tracking.md on the tiny config: a baseline commit, two `dvc exp run`s, then
DVC compares their metrics and plots and MLflow filters their runs by experiment."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import BIN, make_project, run

EXPS = {"lr-hi": "0.003", "lr-lo": "0.0003"}


@pytest.mark.slow
def test_dvc_experiments_carry_their_metrics_and_mlflow_runs_their_experiment(
    tmp_path: Path,
) -> None:
    root = make_project(tmp_path, ["+debug=tiny"])
    dvc = str(BIN / "dvc")
    run([dvc, "repro"], root, timeout=900)
    # the baseline, as a user commits it: the lock file and the reports (not the images)
    run(["git", "add", "dvc.lock", "reports"], root)
    staged = run(["git", "diff", "--cached", "--name-only"], root).stdout.split()
    assert (
        "reports/image/evaluate.json" in staged and "reports/image/plots/kl_vs_gain.json" in staged
    )
    assert not [f for f in staged if f.endswith(".png")], "images stay out of git (DVC caches them)"
    run(["git", "commit", "-qm", "baseline"], root)
    baseline = run(["git", "rev-parse", "HEAD"], root).stdout.strip()
    for name, lr in EXPS.items():
        run(
            [dvc, "exp", "run", "-n", name, "-S", "+debug=tiny", "-S", f"study.lr_grid=[{lr}]"],
            root,
        )

    shown = json.loads(run([dvc, "exp", "show", "--json"], root).stdout)
    (base,) = [r for r in shown if r["rev"] == baseline]
    exps = {e["name"]: e["revs"][0] for e in base["experiments"]}
    assert set(exps) == set(EXPS)
    for rev in (base, *exps.values()):
        metrics = rev["data"]["metrics"]
        for route in ("image", "text"):
            assert metrics[f"reports/{route}/evaluate.json"]["data"]["targets"], route
            assert metrics[f"reports/{route}/shift.json"]["data"]["targets"], route

    diff = json.loads(run([dvc, "metrics", "diff", baseline, "lr-hi", "--json"], root).stdout)
    changed = diff["reports/image/evaluate.json"]
    assert any(k.endswith(".gain") for k in changed), "fine-tuning at another lr moves some gain"

    out = tmp_path / "plots"
    run([dvc, "plots", "diff", baseline, *EXPS, "-o", str(out)], root)
    page = (out / "index.html").read_text()
    for name in EXPS:
        assert f"{name}_reports_image_plots_kl_vs_gain.png" in page  # the cached image, per rev
    assert "kl_input" in page  # the kl_vs_gain.json data, one series per revision

    con = sqlite3.connect(root / "mlflow.db")
    tags = {}
    for run_id, key, value in con.execute("SELECT run_uuid, key, value FROM tags"):
        tags.setdefault(run_id, {})[key] = value
    by_exp = {}
    for t in tags.values():
        if "transferlab.stage" in t:
            by_exp.setdefault(t.get("dvc.exp_name"), set()).add(t["transferlab.stage"])
    assert set(by_exp) == {"workspace", *EXPS}
    for name in EXPS:  # an experiment re-runs fine-tuning onward, never data or pre-training
        assert {"finetune", "evaluate", "shift-analysis", "curves", "summary"} <= by_exp[name]
        assert not {"data", "pretrain"} & by_exp[name]
    assert {t["dvc.exp_baseline_rev"] for t in tags.values() if t.get("dvc.exp_name") in EXPS} == {
        baseline
    }
    datasets = {name for (name,) in con.execute("SELECT name FROM datasets")}
    assert datasets == {"image:fashion_mnist", "text:news"}
