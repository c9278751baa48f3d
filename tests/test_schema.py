"""The config schema (transferlab.schema): one place for every knob's type, default and doc.

Hydra composes conf/ onto it (also in DVC's own process), validation is derived from it, and the
knob reference (docs/reference/knobs.md) is generated from it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from tests.conftest import ROOT, project_env
from transferlab import config, schema
from transferlab.errors import ConfigError


def _paths(node: DictConfig, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(value, DictConfig):
            out += _paths(value, f"{path}.")
    return out


def test_knob_reference_is_generated_from_the_schema() -> None:
    committed = (ROOT / "docs" / "reference" / "knobs.md").read_text()
    assert committed == schema.knobs_markdown(), (
        "docs/reference/knobs.md is stale: run `python -m transferlab.schema`"
    )


@pytest.mark.parametrize(
    "overrides", [[], ["trainer=gpu"], ["trainer=ddp"], ["model/text=minilm"], ["+debug=tiny"]]
)
def test_every_composed_key_is_in_the_schema_and_has_a_doc(overrides: list[str]) -> None:
    cfg = OmegaConf.load(ROOT / "params.yaml") if not overrides else config.compose(overrides)
    undocumented = [p for p in _paths(cfg) if not schema.doc_of(p)]
    assert undocumented == []
    schema.check(cfg, schema.TransferlabConf)  # the composition satisfies its own schema


def test_every_schema_knob_has_a_one_line_doc() -> None:
    knobs = schema.knobs()
    assert len(knobs) > 150
    for k in knobs:
        assert k.doc and "\n" not in k.doc, k.key


def test_the_image_primary_moved_under_pretrain() -> None:
    cfg = config.compose()
    assert cfg.pretrain.image.primary == "mae" and cfg.pretrain.text.primary == "mlm"
    assert cfg.objective is None  # only the argument of one pretrain stage run
    assert config.primary_objective(cfg, "image") == "mae"
    assert config.primary_objective(cfg, "text") == "mlm"


def _cfg(*overrides: str, route: str = "image") -> DictConfig:
    cfg = config.compose()
    cfg.logger.enabled = False
    cfg.route = route
    return config.apply_overrides(cfg, overrides)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # a wrong type
        ("finetune.batch_size=2.5", "finetune.batch_size=2.5 must be an integer"),
        (
            "finetune.freeze_norm_stats=maybe",
            "finetune.freeze_norm_stats='maybe' must be true or false",
        ),
        ("shift.image.alpha=[1]", "shift.image.alpha=[1] must be a number"),
        ("curves.image.shots=3", "curves.image.shots=3 must be a list"),
        # out of range
        ("finetune.label_smoothing=1.5", "finetune.label_smoothing=1.5 must be <= 0.99"),
        ("data.text.val_frac=0.7", "data.text.val_frac=0.7 must be < 0.5"),
        (
            "objectives.contrastive.temperature=0",
            "objectives.contrastive.temperature=0 must be > 0",
        ),
        ("finetune.lr=.inf", "finetune.lr=inf must be finite"),
        (
            "curves.image.shots=[0,5]",
            "curves.image.shots contains 0; every shot count must be >= 1",
        ),
        ("objectives.multi.weights.mae=-1", "objectives.multi.weights.mae=-1 must be >= 0"),
        # outside the allowed values
        (
            "finetune.regularizer.name=l3",
            "finetune.regularizer.name='l3' is not allowed; choose one of: none, l2, l2_sp",
        ),
        (
            "trainer.accelerator=fpga",
            "trainer.accelerator='fpga' is not allowed; choose one of: cpu",
        ),
        ("finetune.multitask.tasks=[jigsaw]", "every task must be one of: aux, rotation, shuffle"),
        ("sweep.reduce=median", "sweep.reduce='median' is not allowed; choose one of: last, best"),
        # keys
        ("+finetune.lrr=0.1", "unknown config key 'finetune.lrr'; did you mean 'finetune.lr'?"),
        ("+trainer.compile=true", "unknown config key 'trainer.compile'"),
    ],
)
def test_schema_violations_are_one_line_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.validate(_cfg(override), "finetune")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_missing_key_is_named() -> None:
    cfg = _cfg()
    del cfg.finetune["lr"]
    with pytest.raises(ConfigError, match=r"config key 'finetune\.lr' is missing"):
        config.validate(cfg, "finetune")


@pytest.mark.parametrize("route", ["image", "text"])
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+finetune.variants.lp_ft.init=bogus",
            "finetune.variants.lp_ft.init='bogus' is not allowed; choose one of: ",
        ),
        ("+finetune.variants.fast.lrr=1", "finetune.variants.fast.lrr is not a finetune knob"),
        ("+finetune.variants.lp_ft.lr=-1", "finetune.variants.lp_ft.lr=-1 must be > 0"),
        (
            "+finetune.variants.l2sp.regularizer.name=l1",
            "finetune.variants.l2sp.regularizer.name='l1' is not allowed",
        ),
        ("+finetune.variants.x.multitask.weights.main=0", None),  # valid: no aux task, main only
    ],
)
def test_variants_are_validated_on_both_routes(
    route: str, override: str, message: str | None
) -> None:
    cfg = _cfg(override, route=route)
    if message is None:
        config.validate(cfg, "finetune")
        return
    with pytest.raises(ConfigError) as err:
        config.validate(cfg, "finetune")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_variant_init_names_a_pretrained_objective() -> None:
    """``init`` names an objective some route pre-trains; the variant runs on that route only."""
    config.validate(_cfg("+finetune.variants.lp_ft.init=contrastive"), "finetune")
    config.validate(_cfg("+finetune.variants.lp_ft.init=clm", route="text"), "finetune")
    config.validate(_cfg("+finetune.variants.lp_ft.init=mae", route="text"), "finetune")
    with pytest.raises(ConfigError, match="choose one of: mae, contrastive, gan, supervised, mlm"):
        config.validate(_cfg("+finetune.variants.lp_ft.init=simclr", route="text"), "finetune")


def test_dapt_is_allowed_on_both_routes() -> None:
    for route in ("image", "text"):
        config.validate(_cfg("finetune.dapt_epochs=1", route=route), "finetune")


def test_a_pretrain_run_needs_its_objective() -> None:
    with pytest.raises(
        ConfigError, match=r"objective is not set: .*objective=<o>.*mae, contrastive"
    ):
        config.validate(_cfg(), "pretrain")
    config.validate(_cfg("objective=gan"), "pretrain")


def test_hydra_enforces_the_schema_while_composing() -> None:
    with pytest.raises(ConfigError) as err:
        config.compose(["finetune.lr=fast"])
    assert "finetune.lr=fast" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="lrr"):
        config.compose(["finetune.lrr=0.1"])


def test_dvc_composes_with_the_schema_in_its_own_process(tmp_path: Path) -> None:
    # DVC never imports transferlab: Hydra's plugin discovery (hydra_plugins/transferlab_schema.py)
    # must register the schema before conf/config.yaml's defaults list is read.
    out = tmp_path / "params.yaml"
    code = (
        "import sys\n"
        "from dvc.utils.hydra import compose_and_dump\n"
        f"compose_and_dump({str(out)!r}, {str(ROOT / 'conf')!r}, None, 'config', '', "
        "['finetune.lr=0.002', 'pretrain.image.primary=gan'])\n"
        "print('transferlab.config' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
    assert out.read_text() == config.params_yaml(
        ["finetune.lr=0.002", "pretrain.image.primary=gan"]
    )


def test_schema_is_a_core_module() -> None:
    code = (
        "import sys, transferlab.schema\n"
        "print(sorted(m for m in sys.modules if m.startswith(('transferlab', 'torch', 'mlflow'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=project_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "['transferlab', 'transferlab.errors', 'transferlab.schema']"


def test_allowed_values_match_the_implementations() -> None:
    from transferlab.finetune.schedules import OPTIMIZERS, SCHEDULES
    from transferlab.finetune.tasks import AUX_TASKS

    assert set(schema.SCHEDULES) == set(SCHEDULES)
    assert set(schema.OPTIMIZERS) == set(OPTIMIZERS)
    from transferlab.routes.image import ImageRoute
    from transferlab.routes.text import TextRoute

    # "aux" is each route's own task (its route module's aux_task)
    assert set(schema.AUX_TASK_NAMES) == {"aux", *AUX_TASKS}
    assert {t for ts in schema.AUX_TASKS.values() for t in ts} == {"aux", *AUX_TASKS}
    for route in (ImageRoute, TextRoute):
        assert route.aux_task in schema.AUX_TASKS[route.name]
