"""Bad inputs through the real CLI: exit 2, one line naming the problem, earlier outputs intact."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import BIN, make_project, run


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for sub in ("data", "models", "reports"):
        for p in sorted((root / sub).rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(root)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One pre-trained objective is enough here: the cases fail before the others would load.
    root = make_project(
        tmp_path_factory.mktemp("bad"), ["+debug=tiny", "pretrain.image.objectives=[mae]"]
    )
    run([str(BIN / "transferlab"), "data", "route=image"], root)
    run([str(BIN / "transferlab"), "pretrain", "route=image", "objective=mae"], root)
    return root


def _fails(project: Path, *args: str, contains: str) -> str:
    before = _tree_hash(project)
    proc = run([str(BIN / "transferlab"), *args], project, check=False, timeout=300)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert lines[-1].startswith("transferlab: error: "), lines
    assert contains in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr
    assert _tree_hash(project) == before, "a failed run must leave earlier outputs intact"
    if table := os.environ.get("TRANSFERLAB_BAD_INPUT_TABLE"):  # the closing note's table
        with open(table, "a") as f:
            f.write(f"| `transferlab {' '.join(args)}` | `{lines[-1]}` |\n")
    return lines[-1]


CASES = [
    (["finetune", "route=image", "finetune.lr=-0.5"], "finetune.lr=-0.5 must be > 0"),
    (["finetune", "route=image", "finetune.lr=0"], "finetune.lr=0 must be > 0"),
    (
        ["finetune", "route=image", "finetune.freeze_depth=9"],
        "beyond the model's depth 4; allowed 0..4",
    ),
    (
        ["finetune", "route=image", "finetune.optimizer=lbfgs"],
        "finetune.optimizer='lbfgs' is not allowed",
    ),
    (
        ["finetune", "route=image", "finetune.schedule=warmup"],
        "finetune.schedule='warmup' is not allowed",
    ),
    (["finetune", "route=image", "finetune.batch_size=0"], "finetune.batch_size=0 must be >= 1"),
    (["finetune", "route=image", "finetune.lrr=0.1"], "did you mean 'finetune.lr'"),
    (["pretrain", "route=image", "objective=simclr"], "objective='simclr' is not allowed"),
    (["data", "route=audio"], "route='audio' is not allowed"),
    (["data", "route=image", "data.image.targets=[cifar]"], "unknown target 'cifar'"),
    (["data", "route=image", "data.image.shots_per_class=500"], "shots_per_class=500 is too large"),
    (
        ["data", "route=image", "data.image.fashion_mnist_dir=/nonexistent"],
        "install the Debian package 'dataset-fashion-mnist'",
    ),
    (["data", "route=image", "seed=-1"], "seed=-1 must be >= 0"),
    (
        ["pretrain", "route=image", "objectives.mae.mask_ratio=1.0"],
        "mask_ratio=1.0 must be <= 0.99",
    ),
    (
        ["finetune", "route=image", "logger.tracking_uri=sqlite:////nonexistent/dir/m.db"],
        "missing or not writable",
    ),
    (["finetune", "route=image", "logger.tracking_uri=http://127.0.0.1:9/"], "is unreachable"),
    (["finetune", "route=image", "model/image=vit"], "changes the composition of conf/"),
    (
        ["finetune", "route=image", "--params", "missing.yaml"],
        "params file missing.yaml is missing",
    ),
    (
        [
            "finetune",
            "route=image",
            "finetune.multitask.tasks=[rotation]",
            "+finetune.multitask.weights.rotation=-1",
        ],
        "must all be numbers >= 0",
    ),
    (
        [
            "finetune",
            "route=image",
            "finetune.multitask.tasks=[rotation]",
            "finetune.multitask.weights.main=0",
            "+finetune.multitask.weights.rotation=0",
        ],
        "are all zero",
    ),
    (
        [
            "finetune",
            "route=image",
            "finetune.multitask.tasks=[rotation]",
            "+finetune.multitask.weights.rot=1",
        ],
        "expected one weight per task: ['main', 'rotation']",
    ),
    (
        ["finetune", "route=image", "finetune.multitask.tasks=[shuffle]"],
        "unknown task 'shuffle' for route image",
    ),
    (
        ["finetune", "route=image", "finetune.strategy=lpft"],
        "finetune.strategy='lpft' is not allowed",
    ),
    (
        ["finetune", "route=image", "finetune.alignment.kind=coral"],
        "alignment.kind='coral' is not allowed",
    ),
    (["finetune", "route=image", "finetune.wise_alphas=[0,2]"], "every alpha must be in [0, 1]"),
    (["finetune", "route=image", "trainer.fit_workers=0"], "trainer.fit_workers=0 must be >= 1"),
]


@pytest.mark.parametrize(("args", "contains"), CASES, ids=[c[1][:40] for c in CASES])
def test_bad_input_is_one_clear_line(project: Path, args: list[str], contains: str) -> None:
    _fails(project, *args, contains=contains)


def test_invalid_yaml_params(project: Path) -> None:
    bad = project / "broken.yaml"
    bad.write_text("seed: [1, 2\n")
    _fails(project, "finetune", "route=image", "--params", str(bad), contains="is not valid YAML")


def test_truncated_backbone_checkpoint(project: Path) -> None:
    ckpt = project / "models/image/pretrain/mae/backbone.pt"
    good = ckpt.read_bytes()
    try:
        ckpt.write_bytes(good[: len(good) // 3])
        _fails(project, "shift-analysis", "route=image", contains="truncated or corrupt") if (
            project / "reports/image/evaluate.json"
        ).exists() else None
        _fails(project, "finetune", "route=image", contains="truncated or corrupt")
    finally:
        ckpt.write_bytes(good)


def test_foreign_architecture_checkpoint(project: Path) -> None:
    _fails(
        project,
        "finetune",
        "route=image",
        "model.image.widths=[8,8,8,8]",
        contains="has another architecture (differs in widths)",
    )


def test_corrupt_processed_dataset(project: Path) -> None:
    path = project / "data/image/targets/lfw.pt"
    good = path.read_bytes()
    try:
        path.write_bytes(b"garbage")
        _fails(
            project, "finetune", "route=image", contains="data/image/targets/lfw.pt is unreadable"
        )
    finally:
        path.write_bytes(good)


def test_unwritable_output_directory(project: Path) -> None:
    _fails(
        project,
        "finetune",
        "route=image",
        "paths.models_dir=/proc/transferlab",
        contains="/proc/transferlab",
    )


def test_nan_loss_fails_the_run_and_marks_it_failed_in_mlflow(project: Path) -> None:
    line = _fails(
        project,
        "pretrain",
        "route=image",
        "objective=mae",
        "objectives.mae.lr=1e30",
        contains="became nan",
    )
    assert "lower the learning rate" in line
    con = sqlite3.connect(project / "mlflow.db")
    rows = con.execute(
        "SELECT r.status, t.value FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid WHERE t.key = 'error'"
    ).fetchall()
    assert any(status == "FAILED" and "train/loss became" in value for status, value in rows), rows


@pytest.mark.parametrize("workers", [1, 2])
def test_nan_in_a_fit_fails_the_stage_and_its_fit_run(project: Path, workers: int) -> None:
    """A fine-tuning fit that diverges: the stage exits with the fit's one line, writes nothing,
    and the failed fit's recorded child run is FAILED with the reason; in process and with the
    fit pool, where the other fits are still running when the parent raises."""
    line = _fails(
        project,
        "finetune",
        "route=image",
        "study.lr_grid=[1e30]",  # every rate diverges: nothing to select, the stage fails
        f"trainer.fit_workers={workers}",
        contains="became nan",
    )
    assert "lower the learning rate" in line
    con = sqlite3.connect(project / "mlflow.db")
    rows = con.execute(
        "SELECT r.name, r.status, t.value FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
        "WHERE t.key = 'error' AND r.name LIKE 'finetune%'"
    ).fetchall()
    names = {name for name, status, value in rows if status == "FAILED" and "became nan" in value}
    assert "finetune:image" in names, rows  # the stage run
    assert any(n.startswith("finetune:image:") for n in names), rows  # the fit's child run
