"""`notebooks/compare_runs.ipynb`: committed without outputs, and it executes against a real run.

The notebook is executed by nbclient on the tiny pipeline (MLflow runs + DVC metrics) and a small
Optuna study; a probe cell appended to the in-memory copy prints the tables the notebook plotted,
which must equal the numbers in the reports and the study.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "compare_runs.ipynb"
STAGES = {"data", "pretrain", "finetune", "evaluate", "shift-analysis", "curves", "summary"}

PROBE = """
import json as _json
print("PROBE" + _json.dumps({
    "acc": acc_table.to_dict(), "gain": gain_table.to_dict(),
    "depth": {str(d): {t: float(depth_table.loc[d, ("test/acc", t)]) for t in targets} for d in depth_table.index},
    "shift": shift_table.to_dict(),
    "sweep": sweep_table.reset_index()[["number", "state", "value", "best_so_far"]].to_dict("records"),
    "stages": {k: int(v) for k, v in stage_counts.items()},
    "experiments": exp_table.to_dict("index"),
}))
"""


def test_notebook_is_committed_without_outputs() -> None:
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert nb.metadata.kernelspec.name == "python3"


def _study(storage: str) -> list[tuple[str, float]]:
    """Seven trials of (x − 2)² at fixed points, minimised; trial 3 is pruned after one report."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    xs = [0.0, 3.0, 1.5, 5.0, 2.25, 4.0, 1.0]
    study = optuna.create_study(study_name="lr-sweep", storage=storage, direction="minimize")
    for x in xs:
        study.enqueue_trial({"x": x})

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10, 10)
        if trial.number == 3:
            trial.report(7.5, step=0)
            raise optuna.TrialPruned
        return (x - 2.0) ** 2

    study.optimize(objective, n_trials=len(xs))
    return [("PRUNED", 7.5) if i == 3 else ("COMPLETE", (x - 2.0) ** 2) for i, x in enumerate(xs)]


def test_notebook_executes_against_the_tiny_pipeline(
    tiny_pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    expected_trials = _study(storage)
    monkeypatch.setenv("TRANSFERLAB_PROJECT", str(tiny_pipeline))
    monkeypatch.setenv("TRANSFERLAB_OPTUNA_STORAGE", storage)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell

    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 4  # objectives × targets, freezing depth, KL vs gain, sweep history
    # the Findings cell prints the summary's generated sentences, as reports/findings.json holds them
    found = json.loads((tiny_pipeline / "reports/findings.json").read_text())
    cell = next(c for c in nb.cells if c.get("id") == "findings-code")
    printed = "".join(o.get("text", "") for o in cell.outputs)
    assert found and all(f["text"] in printed for f in found)
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    probe = json.loads(text.split("PROBE", 1)[1])

    evaluate = json.loads((tiny_pipeline / "reports/image/evaluate.json").read_text())
    primary = evaluate["primary_objective"]
    for target, entry in evaluate["targets"].items():
        assert probe["acc"]["scratch"][target] == entry["scratch"]["test/acc"]
        assert probe["acc"][primary][target] == entry[primary]["test/acc"]
        assert probe["gain"][primary][target] == entry["gains"][primary]
        # MLflow's evaluate run and DVC's metrics file agree (freeze depth 0 is the default).
        assert probe["depth"]["0"][target] == pytest.approx(entry[primary]["test/acc"])
    assert "pretrained" not in probe["acc"] and list(probe["acc"])[-1] == "scratch"

    shift = json.loads((tiny_pipeline / "reports/image/shift.json").read_text())
    for target, row in shift["targets"].items():
        assert probe["shift"]["kl_input"][target] == pytest.approx(row["kl_input"])
        assert probe["shift"]["gain"][target] == pytest.approx(row["gain"])

    assert set(probe["stages"]) == STAGES and all(n >= 1 for n in probe["stages"].values())
    # the tiny pipeline ran as `dvc repro`: one experiment, the workspace, with the report's gains
    assert list(probe["experiments"]) == ["workspace"]
    for target, entry in evaluate["targets"].items():
        assert probe["experiments"]["workspace"][target] == pytest.approx(entry["gain"])

    sweep = probe["sweep"]
    assert [(r["state"], r["value"]) for r in sweep] == [
        (s, pytest.approx(v)) for s, v in expected_trials
    ]
    best = math.inf
    for row, (state, value) in zip(sweep, expected_trials, strict=True):
        best = min(best, value) if state == "COMPLETE" else best
        assert row["best_so_far"] == pytest.approx(best)
    assert best == pytest.approx(0.0625)  # x = 2.25
