"""The bench (`python -m bench`, package `bench/`) at tiny sizes: structure and sanity of its figures,
never wall-time thresholds; and `make run`'s timing record (`transferlab.run_timing`)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bench import common, datapath, flops, mfu, overhead, pipeline, report
from tests.conftest import ROOT
from transferlab import run_timing


def test_flops_of_one_conv_layer_equal_the_hand_count() -> None:
    """fwd 2·N·Ho·Wo·Cout·Cin·k²; backward twice that (grad-input and grad-weight GEMMs)."""
    n, cin, cout, k, h, stride = 2, 3, 8, 3, 10, 2
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=1, bias=False)
    x = torch.randn(n, cin, h, h, requires_grad=True)
    ho = (h + 2 - k) // stride + 1
    fwd = 2 * n * ho * ho * cout * cin * k * k

    assert flops.count_flops(lambda: conv(x)) == fwd
    assert flops.count_flops(lambda: conv(x).sum().backward()) == 3 * fwd
    gemms = flops.record_gemms(lambda: conv(x).sum().backward())
    assert gemms == [
        flops.Gemm(1, n * ho * ho, cin * k * k, cout),  # forward: cols @ Wᵀ
        flops.Gemm(1, n * ho * ho, cout, cin * k * k),  # grad-input
        flops.Gemm(1, cout, n * ho * ho, cin * k * k),  # grad-weight
    ]
    # An input without gradient (a network's first layer) has no grad-input GEMM.
    x0 = x.detach()
    assert flops.count_flops(lambda: conv(x0).sum().backward()) == 2 * fwd
    assert sum(g.flops for g in flops.record_gemms(lambda: conv(x0).sum().backward())) == 2 * fwd


def test_gemms_cover_the_counted_flops_of_linear_and_attention() -> None:
    """Linear layers and CPU flash attention: the recorded GEMMs add up to the counted FLOPs."""
    from transferlab.models.text_encoder import SelfAttention

    torch.manual_seed(0)
    attn = SelfAttention(16, 2, 0.0)
    x = torch.randn(3, 5, 16)
    mask = torch.ones(3, 5, dtype=torch.bool)

    def step() -> None:
        attn(x, mask).sum().backward()

    counted = flops.count_flops(step)
    gemms = flops.record_gemms(step)
    assert counted > 0
    assert sum(g.flops for g in gemms) == counted
    assert any(g.batch == 3 * 2 for g in gemms)  # attention as batched GEMMs (B·heads)


def test_matmul_peak_weights_shapes_by_calls() -> None:
    gemms = [flops.Gemm(1, 32, 16, 8)] * 3 + [flops.Gemm(2, 8, 8, 8)]
    peak = flops.matmul_peak(gemms, min_s=0.0)
    assert peak["flops_per_s"] > 0 and peak["gemm_s_per_step"] > 0
    assert sorted(s["calls"] for s in peak["shapes"]) == [1, 3]
    assert flops.Gemm(2, 8, 8, 8).flops == 2 * 2 * 8 * 8 * 8


def test_growth_exponent_recovers_a_power_law() -> None:
    xs = [1.0, 2.0, 4.0, 8.0]
    assert math.isclose(common.growth_exponent(xs, [3 * x**2 for x in xs]), 2.0)
    assert math.isclose(common.growth_exponent(xs, [5.0] * 4), 0.0, abs_tol=1e-12)


TINY = [
    "data.image.source_train=96",
    "data.image.source_val=32",
    "data.image.source_test=32",
    "data.image.shots_per_class=2",
    "data.image.val_per_class=2",
    "data.image.test_per_class=2",
    "model.image.widths=[4,4,4,4]",
    "pretrain.image.max_epochs=2",
    "pretrain.image.batch_size=32",
    "finetune.max_steps.image=4",
    "finetune.batch_size=8",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """A tiny config over synthetic images in the data stage's layout (the real data stage and
    MLflow store cost seconds; the bench itself runs both)."""
    work = tmp_path_factory.mktemp("bench")
    cfg = common.stage_config(ROOT / "params.yaml", work, [*TINY, "logger.enabled=false"])
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> dict[str, torch.Tensor]:
        x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
        return {"x": x, "y": torch.arange(n) % 10}

    root = work / "data" / "image"
    (root / "targets").mkdir(parents=True)
    torch.save({"train": split(96), "val": split(32)}, root / "source.pt")
    classes = [str(c) for c in range(10)]
    torch.save(
        {"train": split(20), "val": split(20), "classes": classes}, root / "targets" / "fmnist.pt"
    )
    return cfg, work


# supervised re-estimates its BatchNorm statistics after the fit (mae does not): both paths
@pytest.mark.parametrize("objective", ["mae", "supervised"])
def test_bare_loop_matches_the_stage_fit_bit_for_bit(
    tiny: tuple[object, Path], objective: str
) -> None:
    """Both arms run the stage's own code on the same data: same steps, identical weights."""
    from omegaconf import OmegaConf

    cfg, work = tiny
    # An objective's own budget (supervised's batch size and epochs, mae's epochs) overrides
    # pretrain's: pin the knobs it has (the schema has no others) to pretrain's tiny budget.
    budget = {"batch_size": 32, "max_epochs": 2}
    own = {k: v for k, v in budget.items() if k in cfg.objectives[objective]}
    cfg = OmegaConf.merge(cfg, {"objectives": {objective: own}})
    light = overhead.pretrain_arm("lightning", cfg, work / "light", "image", objective)
    bare = overhead.pretrain_arm("bare", cfg, work / "bare", "image", objective)
    assert light.arm == "lightning" and bare.arm == "bare"
    assert light.steps == bare.steps == 2 * (96 // 32)
    assert [len(e) for e in light.epochs] == [3, 3] and len(bare.epoch_s) == 2
    assert light.batch_size == 32 and bare.batch_size == 32
    assert overhead.same_weights(light, bare)
    assert (work / "light" / "image" / "pretrain" / objective / "backbone.pt").exists()
    out = overhead.compare_arms([(light, bare)], "tiny")
    public = report.public(out)
    assert public["same_weights"] and public["same_steps"]
    assert public["ratio"] > 0 and public["step_ratio"] > 0 and public["cpu_ratio"] > 0
    json.dumps(public)  # what goes into bench.json is plain JSON

    from omegaconf import OmegaConf

    ft = OmegaConf.merge(cfg, {"paths": {"models_dir": str(work / "light")}})
    fl = overhead.finetune_arm("lightning", ft, work / "light", "fmnist", "mae")
    fb = overhead.finetune_arm("bare", ft, work / "light", "fmnist", "mae")
    # the step budget (finetune.max_steps.image=4), cut inside the second epoch of 3 batches
    assert fl.steps == fb.steps == 4 < 2 * math.ceil(20 / 8)
    assert overhead.same_weights(fl, fb)


def test_efficiency_and_data_path_figures_are_consistent(tiny: tuple[object, Path]) -> None:
    cfg, work = tiny
    light = overhead.pretrain_arm("lightning", cfg, work / "light2", "image", "mae")
    bare = overhead.pretrain_arm("bare", cfg, work / "bare2", "image", "mae")
    eff = mfu.efficiency(cfg, "image", "mae", 32, light.step_s, bare.step_s, min_s=0.0)
    assert eff["gflop_per_step"] > 0
    # All counted FLOPs of the CNN are GEMM-shaped (convolutions), so the two counts agree.
    assert eff["gemm_gflop_per_step"] == eff["gflop_per_step"]
    assert eff["mfu"] > 0 and eff["matmul_gflop_s_at_model_shapes"] > 0
    assert all(len(s["bmkn"]) == 4 for s in eff["gemm_shapes"])

    from transferlab.data.loaders import load_dataset

    split = load_dataset(work / "data" / "image" / "source.pt")["train"]
    d = datapath.data_path(cfg, "image", split, 32, light, bare)
    assert d["loader_samples_s"] > 0 and d["model_samples_s"] > 0
    assert 0 <= d["data_wait_share"] <= 1


def test_record_run_appends_atomically_and_reports_missing_runs(tmp_path: Path) -> None:
    assert not pipeline.last_pipeline_run(tmp_path)["recorded"]
    path = run_timing.record_run(tmp_path, "abc", start=0.0, exit_code=0)
    run_timing.record_run(tmp_path, "def", start=0.0, exit_code=1)
    runs = json.loads(path.read_text())["runs"]
    assert [r["pipeline_id"] for r in runs] == ["abc", "def"]
    assert runs[1]["exit_code"] == 1 and runs[0]["machine"]["nproc"] >= 1
    assert list(path.parent.glob(".run_timing.json.*")) == []  # no temporary file left
    # A recorded run without an MLflow store to read its stages from says so instead of failing.
    out = pipeline.last_pipeline_run(tmp_path)
    assert not out["recorded"] and "MLflow" in out["note"]
    assert not pipeline.noop_repro(tmp_path)["measured"]


RUN_KEYS = {"pipeline_id", "command", "started_at", "wall_s", "exit_code", "git_commit", "machine"}


def test_run_timing_cli_is_what_make_run_calls(tmp_path: Path) -> None:
    """`python -m transferlab.run_timing` (the Makefile's `run` recipe) appends one record with the
    keys the bench reads, imports neither torch nor mlflow, and keeps the last 20 runs."""
    cmd = [sys.executable, "-m", "transferlab.run_timing", "--project", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *cmd[1:], *("--pipeline-id", "p0", "--start", "0")],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert not {"torch", "mlflow", "omegaconf"} & imported
    for i in range(1, 22):
        subprocess.run([*cmd, "--pipeline-id", f"p{i}", "--start", "0"], check=True)
    runs = json.loads((tmp_path / "reports" / "run_timing.json").read_text())["runs"]
    assert len(runs) == 20 and runs[-1]["pipeline_id"] == "p21" and runs[0]["pipeline_id"] == "p2"
    assert all(set(r) == RUN_KEYS for r in runs)
    assert set(runs[0]["machine"]) == {"cpu", "nproc"} and runs[0]["exit_code"] == 0
    makefile = (ROOT / "Makefile").read_text()
    assert "python -m transferlab.run_timing --pipeline-id" in makefile
    assert "scripts/bench.py" not in makefile and "python -m bench" in makefile


def test_python_m_bench_is_the_entry_point() -> None:
    """`make bench` runs `python -m bench` from the project root: its CLI parses without a run."""
    env = dict(os.environ, PYTHONPATH="")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--sections" in proc.stdout and all(s in proc.stdout for s in common.SECTIONS)


def test_stage_runs_reads_top_level_runs_of_one_pipeline(tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("t")
    for pid, stage in (("p1", "data@image"), ("p1", "pretrain-image@mae"), ("p2", "summary")):
        run = client.create_run(exp, tags={"pipeline.id": pid, "dvc.stage": stage})
        client.set_terminated(run.info.run_id)
    parent = client.search_runs([exp], filter_string="tags.`dvc.stage` = 'data@image'")[0]
    child = client.create_run(
        exp, tags={"pipeline.id": "p1", "mlflow.parentRunId": parent.info.run_id}
    )
    client.set_terminated(child.info.run_id)
    stages = pipeline.stage_runs(uri, "p1")
    assert [s["stage"] for s in stages] == ["data@image", "pretrain-image@mae"]
    assert all(s["seconds"] >= 0 and s["status"] == "FINISHED" for s in stages)


def test_goals_and_table_report_met_missed_and_unmeasured() -> None:
    result = {
        "machine": {"cpu": "x", "nproc": 2, "torch": "t", "torch_threads": 2},
        "overhead": {
            "a": {
                "label": "l",
                "steps": 3,
                "ratio": 1.01,
                "lightning_s": 1.01,
                "bare_s": 1.0,
                "step_ratio": 1.0,
                "lightning_step_ms": 1.0,
                "bare_step_ms": 1.0,
                "cpu_ratio": 1.0,
                "same_weights": True,
            },
        },
        "efficiency": {
            "b": {
                "objective": "mae",
                "batch_size": 2,
                "mfu": 0.3,
                "achieved_gflop_s": 1.0,
                "matmul_gflop_s_at_model_shapes": 3.0,
                "gflop_per_step": 0.1,
                "step_ms": 1.0,
                "mfu_bare_loop": 0.4,
                "matmul_gflop_s_1024_square": 5.0,
            }
        },
        "pipeline": {"noop_repro": {"measured": False, "note": "not up to date"}},
    }
    result["goals"] = report.goals(result)
    met = {g["figure"]: g["met"] for g in result["goals"]}
    assert met == {"overhead a": True, "MFU b": False, "no-op dvc repro s": None}
    text = report.table(result)
    assert "MISSED" in text and "not measured" in text and "not up to date" in text


def test_fits_section_times_old_and_new_paths_on_the_same_fits(tiny: tuple[object, Path]) -> None:
    from bench.fits import fits_per_minute

    cfg, _ = tiny
    f = fits_per_minute(cfg, n=2)
    assert f["target"] == "fmnist" and f["fits"] == 2 and f["steps"] == 4
    for key in ("sgd_in_process", "sgd_pool", "probe_sgd_head", "probe_lbfgs"):
        assert f[key] > 0, key
    assert f["sgd_ratio"] == round(f["sgd_pool"] / f["sgd_in_process"], 2)
    assert f["probe_ratio"] == round(f["probe_lbfgs"] / f["probe_sgd_head"], 2)
