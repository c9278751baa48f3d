"""Config: params.yaml is the composition of conf/, and bad values fail fast with one clear line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import BIN, ROOT, project_env
from transferlab import config
from transferlab.errors import ConfigError


def test_committed_params_yaml_equals_the_composition_of_conf() -> None:
    committed = (ROOT / "params.yaml").read_text()
    assert committed == config.params_yaml(), "params.yaml is stale: run `make params`"


def test_composition_matches_what_dvc_writes(tmp_path: Path) -> None:
    # DVC's own Hydra integration (used by `dvc exp run -S`) must produce the same file.
    from dvc.utils.hydra import compose_and_dump

    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(ROOT / "conf"), None, "config", "", ["finetune.lr=0.01"])
    assert out.read_text() == config.params_yaml(["finetune.lr=0.01"])


def test_groups_per_concern_exist() -> None:
    groups = {p.name for p in (ROOT / "conf").iterdir() if p.is_dir()}
    assert {
        "data",
        "model",
        "objectives",
        "pretrain",
        "finetune",
        "trainer",
        "logger",
        "paths",
        "experiment",
        "debug",
    } <= groups


def test_experiment_and_debug_overrides_compose() -> None:
    cfg = config.compose(["+experiment=linear_probe", "+debug=tiny"])
    assert cfg.finetune.strategy == "linear_probe" and cfg.study.seeds == [0, 1]
    assert cfg.data.image.source_train == 512


def _cfg(*overrides: str):
    cfg = config.compose()
    cfg.logger.enabled = False
    return config.apply_overrides(cfg, overrides)


@pytest.mark.parametrize(
    ("override", "stage", "message"),
    [
        ("finetune.lr=0", "finetune", "finetune.lr=0 must be > 0"),
        ("finetune.lr=-0.1", "finetune", "finetune.lr=-0.1 must be > 0"),
        (
            "finetune.freeze_depth=7",
            "finetune",
            "finetune.freeze_depth=7 is beyond the model's depth 4; allowed 0..4",
        ),
        (
            "finetune.optimizer=rmsprop",
            "finetune",
            "finetune.optimizer='rmsprop' is not allowed; choose one of: adam, adamw, sgd",
        ),
        ("finetune.schedule=linear", "finetune", "choose one of: constant, inverse_time"),
        ("finetune.max_steps.image=0", "finetune", "finetune.max_steps.image=0 must be >= 1"),
        ("study.lr_grid=[]", "finetune", "study.lr_grid must be a non-empty list"),
        ("finetune.fine_tuned=[supervised]", "finetune", "leaves out the image route's primary"),
        (
            "finetune.fine_tuned=[mae,maee]",
            "finetune",
            "finetune.fine_tuned: unknown objective 'maee'",
        ),
        (
            "study.select_seeds=4",
            "finetune",
            "study.select_seeds=4 exceeds the 3 seeds of study.seeds",
        ),
        ("objective=bogus", "pretrain", "objective='bogus' is not allowed; choose one of: mae"),
        ("route=audio", "data", "route='audio' is not allowed"),
        ("data.image.shots_per_class=0", "data", "data.image.shots_per_class=0 must be >= 1"),
        (
            "objectives.mae.mask_ratio=1.5",
            "pretrain",
            "objectives.mae.mask_ratio=1.5 must be <= 0.99",
        ),
        ("seed=-3", "data", "seed=-3 must be >= 0"),
        ("finetune.lr=fast", "finetune", "finetune.lr='fast' must be a number"),
    ],
)
def test_bad_values_are_named(override: str, stage: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        config.validate(_cfg(override), stage)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_suggests_the_right_one() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown config key 'finetune\.lrr'; did you mean 'finetune\.lr'\?"
    ):
        _cfg("finetune.lrr=0.1")


def test_group_override_on_a_snapshot_points_to_dvc_exp() -> None:
    with pytest.raises(ConfigError, match="dvc exp run -S model/image=vit"):
        _cfg("model/image=vit")


def test_unknown_group_option_is_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        config.compose(["model/image=resnet9000"])
    assert "resnet9000" in str(err.value) and "\n" not in str(err.value)


def test_cli_reports_one_line_and_exit_2_without_writing(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(OmegaConf.to_yaml(config.compose()))
    proc = subprocess.run(
        [str(BIN / "transferlab"), "finetune", "finetune.lr=-1", "--params", str(params)],
        cwd=tmp_path,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["transferlab: error: finetune.lr=-1 must be > 0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"], "nothing may be written"


def test_unwritable_tracking_store_fails_before_training(tmp_path: Path) -> None:
    cfg = config.compose(
        ["logger.tracking_uri=sqlite:////nonexistent-dir/mlflow.db", "objective=mae"]
    )
    with pytest.raises(ConfigError, match=r"logger\.tracking_uri=.*missing or not writable"):
        config.validate(cfg, "pretrain")


def test_check_mode_detects_a_stale_params_file(tmp_path: Path) -> None:
    stale = tmp_path / "params.yaml"
    stale.write_text("seed: 1\n")
    proc = subprocess.run(
        [str(BIN / "transferlab"), "params", "--check", "--out", str(stale)],
        cwd=ROOT,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "make params" in proc.stderr


def test_validation_names_match_the_implementations() -> None:
    from transferlab.finetune.schedules import OPTIMIZERS, SCHEDULES

    assert set(config.SCHEDULES) == set(SCHEDULES)
    assert set(config.OPTIMIZERS) == set(OPTIMIZERS)
