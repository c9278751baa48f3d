"""End-to-end: `dvc repro` runs all five stages on the tiny config, tracked in MLflow."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.conftest import BIN, run

METRIC_KEYS = {
    "test/acc",
    "test/f1_macro",
    "test/nll",
    "test/ece",
    "train/loss",
    "test/loss",
    "gen_gap",
}
TARGETS = ["fmnist", "fmnist_inverted", "digits", "lfw", "textures"]
#: The graded shift family of debug/tiny (data.image.corruptions.severities: [2, 5]).
FAMILY = ["fmnist_gaussian_noise2", "fmnist_gaussian_noise5"]


def test_evaluate_report_follows_the_contract(tiny_pipeline: Path) -> None:
    report = json.loads((tiny_pipeline / "reports/image/evaluate.json").read_text())
    assert list(report["targets"]) == TARGETS + FAMILY
    for target, entry in report["targets"].items():
        for variant in ("pretrained", "scratch"):
            assert set(entry[variant]) >= METRIC_KEYS, (target, variant)
            row = entry[variant]
            assert 0.0 <= row["test/acc"] <= 1.0 and 0.0 <= row["test/ece"] <= 1.0
            assert abs(row["gen_gap"] - (row["test/loss"] - row["train/loss"])) < 1e-5
        assert (
            abs(entry["gain"] - (entry["pretrained"]["test/acc"] - entry["scratch"]["test/acc"]))
            < 1e-5
        )
    fm = report["targets"]["fmnist"]["pretrained"]  # data.image.ood_partners of debug/tiny
    assert fm["ood/acc"] == fm["ood/fmnist_gaussian_noise2/acc"]
    assert 0.0 <= fm["ood/fmnist_inverted/acc"] <= 1.0
    for target in FAMILY:  # the family fits the primary and its control only
        arms = {
            v for v, r in report["targets"][target].items() if isinstance(r, dict) and "ci" in r
        }
        assert arms == {"pretrained", "scratch", "mae"}, target


def test_every_arm_is_seed_averaged_with_intervals_and_its_selected_rate(
    tiny_pipeline: Path,
) -> None:
    report = json.loads((tiny_pipeline / "reports/image/evaluate.json").read_text())
    assert report["protocol"]["seeds"] == [0, 1]  # study.seeds in debug/tiny
    grid = report["protocol"]["lr_grid"]
    for target, entry in report["targets"].items():
        assert entry["seeds"] == [0, 1]
        if target in FAMILY:
            continue
        for variant in ("mae", "scratch", "mae/lp_ft", "mae/linear_probe", "floor/random_init"):
            row = entry[variant]
            acc = row["per_seed"]["test/acc"]
            assert len(acc) == 2, (target, variant)
            assert abs(row["test/acc"] - sum(acc) / 2) < 1e-5
            lo, hi = row["ci"]["test/acc"]
            assert 0.0 <= lo <= row["test/acc"] <= hi <= 1.0, (target, variant)
            if variant.endswith("linear_probe") or variant.startswith("floor/"):
                assert row["lr"] is None  # a probe chooses its C, not a rate
            else:
                assert row["lr"] in grid, (target, variant)
        # the raw-input floor is a row of every target; every gain carries a paired interval
        assert "floor/raw_input" in entry and "floor/raw_input" not in entry["gains"]
        for variant, g in entry["gains"].items():
            iv = entry["gain_intervals"][variant]
            assert iv["lo"] <= g <= iv["hi"] and iv["resolved"] == (iv["lo"] > 0 or iv["hi"] < 0)
        lo, hi = entry["gain_ci"]
        assert lo <= entry["gain"] <= hi
    # every seed's checkpoint is on disk, at the selected rate
    ckpt = tiny_pipeline / "models/image/finetune/mae/fmnist"
    assert sorted(p.name for p in ckpt.glob("*.pt")) == ["seed0.pt", "seed1.pt"]


def test_failed_fits_are_flagged_in_the_report_mlflow_and_summary(tiny_pipeline: Path) -> None:
    # 6 optimizer steps (debug/tiny) leave most fits at chance: each must be flagged.
    history = json.loads((tiny_pipeline / "models/image/finetune/history.json").read_text())
    report = json.loads((tiny_pipeline / "reports/image/evaluate.json").read_text())
    manifest = json.loads((tiny_pipeline / "data/image/manifest.json").read_text())
    expected: dict[tuple[str, str], list[int]] = {}
    for target, arms in history["targets"].items():
        k = len(manifest["datasets"][target]["classes"])
        for variant, arm in arms.items():
            bad = [
                int(s)
                for s, rec in arm["seeds"].items()
                if rec["history"][-1]["train/acc_eval"] < 1 / k + 0.1
            ]
            if bad:
                expected[(target, variant)] = bad
    assert expected, "the tiny budget should leave some fit at chance"
    flagged = {(t, v): s for t, e in report["targets"].items() for v, s in e["failed"].items()}
    assert flagged == expected
    # SGD fits that learned but stay below study.fit_threshold (0.9) are flagged as underfit
    under = {
        (t, v): [
            int(s)
            for s, rec in arm["seeds"].items()
            if int(s) not in expected.get((t, v), []) and rec["history"][-1]["train/acc_eval"] < 0.9
        ]
        for t, arms in history["targets"].items()
        for v, arm in arms.items()
        if arm["lr"] is not None
    }
    under = {k: s for k, s in under.items() if s}
    assert {
        (t, v): s for t, e in report["targets"].items() for v, s in e["underfit"].items()
    } == under
    con = sqlite3.connect(tiny_pipeline / "mlflow.db")
    tagged = con.execute(
        "SELECT COUNT(*) FROM tags WHERE key = 'failed' AND value = 'true'"
    ).fetchone()[0]
    assert tagged >= sum(len(s) for s in expected.values())
    summary = (tiny_pipeline / "reports/summary.md").read_text()
    assert summary.index("## Failed fits") < summary.index("## image route")
    t, v = next(iter(expected))
    assert any(line.startswith(f"| image | {t} | `{v}` |") for line in summary.splitlines())


def test_shift_report_and_plots(tiny_pipeline: Path) -> None:
    shift = json.loads((tiny_pipeline / "reports/image/shift.json").read_text())
    assert set(shift["targets"]) == set(TARGETS + FAMILY)
    fam = shift["families"]["fmnist_gaussian_noise"]
    assert fam["targets"] == ["fmnist", *FAMILY] and fam["severities"] == [0, 2, 5]
    for m, c in shift["correlations"].items():  # every correlation has its interval
        lo, hi = c["spearman_ci"]
        assert lo is not None and lo <= c["spearman"] <= hi, m
    kl = {t: r["kl_input"] for t, r in shift["targets"].items()}
    assert all(v > 0 for v in kl.values())
    # Inverting Fashion-MNIST moves far more pixel mass than re-sampling it: the ordering the
    # study relies on must show up even at the tiny size.
    assert kl["fmnist"] < kl["digits"] < kl["fmnist_inverted"] < kl["textures"]
    assert "spearman_kl_gain" in shift
    for png in ("accuracy.png", "learning_curves.png", "kl_vs_gain.png"):
        assert (tiny_pipeline / "reports/image/plots" / png).read_bytes()[:4] == b"\x89PNG"


def test_every_stage_is_tracked_in_mlflow(tiny_pipeline: Path) -> None:
    con = sqlite3.connect(tiny_pipeline / "mlflow.db")
    tags = con.execute(
        "SELECT r.run_uuid, r.status, t.key, t.value FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid"
    ).fetchall()
    by_run: dict[str, dict[str, str]] = {}
    status: dict[str, str] = {}
    for run_id, st, k, v in tags:
        by_run.setdefault(run_id, {})[k] = v
        status[run_id] = st
    stage_runs = {r: t for r, t in by_run.items() if "pipeline.id" in t}
    stages = {t["transferlab.stage"] for t in stage_runs.values()}
    assert stages == {
        "data",
        "pretrain",
        "finetune",
        "evaluate",
        "shift-analysis",
        "curves",
        "summary",
    }
    assert len({t["pipeline.id"] for t in stage_runs.values()}) == 1, (
        "one dvc repro = one pipeline id"
    )
    assert all(status[r] == "FINISHED" for r in stage_runs)
    assert all(t.get("data.manifest_hash") for t in stage_runs.values())
    assert all("git.commit" in t for t in stage_runs.values())
    # Fits are child runs with per-step metrics.
    children = [r for r, t in by_run.items() if "mlflow.parentRunId" in t]
    assert len(children) >= 1 + 2 * len(TARGETS)
    n_metrics = con.execute(
        "SELECT COUNT(*) FROM metrics WHERE key = 'train/loss_step'"
    ).fetchone()[0]
    assert n_metrics > 0
    params = dict(
        con.execute(
            "SELECT key, value FROM params WHERE run_uuid = ?", (next(iter(stage_runs)),)
        ).fetchall()
    )
    assert params["seed"] == "1234" and "finetune.lr" in params


def test_second_repro_is_a_noop(tiny_pipeline: Path) -> None:
    proc = run([str(BIN / "dvc"), "repro"], tiny_pipeline)
    out = proc.stdout + proc.stderr
    assert "Running stage" not in out
    assert "up to date" in out or "didn't change" in out


def test_finetune_knob_invalidates_only_downstream_stages(tiny_pipeline: Path) -> None:
    params = tiny_pipeline / "params.yaml"
    original = params.read_text()
    try:
        run([str(BIN / "transferlab"), "params", "+debug=tiny", "finetune.lr=0.005"], tiny_pipeline)
        status = json.loads(
            run([str(BIN / "dvc"), "status", "--json"], tiny_pipeline).stdout or "{}"
        )
    finally:
        params.write_text(original)
    changed = set(status)
    assert "finetune@image" in changed
    assert not any(s.startswith(("data@", "pretrain-image@")) for s in changed), changed


def test_rows_per_objective_and_strategy_and_wise_endpoints(tiny_pipeline: Path) -> None:
    report = json.loads((tiny_pipeline / "reports/image/evaluate.json").read_text())
    for target, entry in report["targets"].items():
        if target in FAMILY:
            continue
        for variant in ("mae", "supervised", "mae/linear_probe", "mae/lp_ft"):
            assert "test/acc" in entry[variant], (target, variant)
        # WiSE-FT: alpha = 0 is the linear probe (pre-trained backbone), alpha = 1 the model
        # fine-tuned from that probe's head (LP-FT), seed by seed.
        assert entry["mae/wise_0"]["per_seed"] == entry["mae/linear_probe"]["per_seed"], target
        assert entry["mae/wise_1"]["per_seed"] == entry["mae/lp_ft"]["per_seed"], target
        assert entry["pretrained"] == entry["mae"]


def test_summary_lists_every_target_of_every_route(tiny_pipeline: Path) -> None:
    summary = (tiny_pipeline / "reports/summary.md").read_text()
    for route in ("image", "text"):
        report = json.loads((tiny_pipeline / f"reports/{route}/evaluate.json").read_text())
        shift = json.loads((tiny_pipeline / f"reports/{route}/shift.json").read_text())
        assert f"## {route} route" in summary
        for target in {*shift["targets"], *report["targets"]}:
            rows = [line for line in summary.splitlines() if line.startswith(f"| {target} |")]
            assert len(rows) == 1, (route, target)
            cells = [c.strip() for c in rows[0].strip("|").split("|")]
            assert cells[1] != "–", f"{route}/{target}: its first shift measure is missing"
    curves = json.loads((tiny_pipeline / "reports/image/curves.json").read_text())
    assert list(curves["targets"]) == ["fmnist", "lfw"]  # curves.image.targets in debug/tiny
    for target, c in curves["targets"].items():
        assert set(c["freeze_depth"]) == {"0", "4"}, target
        assert set(c["shots"]) == {"mae", "scratch"}
    # Both routes' curves are on the page, one table column per target.
    sections = summary.split("## ")
    for route in ("image", "text"):
        section = next(s for s in sections if s.startswith(f"{route} route"))
        assert "| frozen blocks k |" in section and "| examples per class |" in section, route
    assert (tiny_pipeline / "reports/image/plots/confusion.png").read_bytes()[:4] == b"\x89PNG"
