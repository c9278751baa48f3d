"""The study's values and the route interface: typed variants, one fit per (target, variant),
stages without route branches, layers that point one way."""

from __future__ import annotations

import configparser
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import transferlab
from transferlab.config import compose
from transferlab.errors import ConfigError
from transferlab.routes import get_route
from transferlab.routes.image import ImageRoute
from transferlab.routes.text import TextRoute
from transferlab.study import (
    Init,
    Protocol,
    by_name,
    final_fits,
    fit_for,
    grid_fits,
    merge_knobs,
    target_arms,
    variants,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg():
    return compose()


def test_routes_are_chosen_by_target_in_the_config(cfg) -> None:
    assert isinstance(get_route(cfg, "image"), ImageRoute)
    assert isinstance(get_route(cfg, "text"), TextRoute)
    with pytest.raises(
        ConfigError, match="route='audio' is not allowed; choose one of: image, text"
    ):
        get_route(cfg, "audio")


def test_image_variants_are_declared_not_parsed(cfg) -> None:
    arms = variants(cfg, get_route(cfg, "image"))
    names = [v.name for v in arms]
    assert names == [
        "mae", "supervised",  # finetune.fine_tuned; every objective gets a probe:
        "mae/linear_probe", "mae/lp_ft",
        "contrastive/linear_probe", "gan/linear_probe", "supervised/linear_probe",
        "scratch", "floor/random_init", "floor/raw_input",
    ]  # fmt: skip
    arm = by_name(arms)
    assert arm["mae/lp_ft"].init == Init("pretrained", "cnn", "mae")
    assert arm["mae/lp_ft"].overrides["strategy"] == "lp_ft"
    assert arm["scratch"].init == Init("scratch", "cnn") and arm["scratch"].is_control
    # the probe floors: the same architecture at random init, and the raw input, probed alike
    assert (
        arm["floor/random_init"].init == Init("scratch", "cnn") and arm["floor/random_init"].floor
    )
    assert (
        arm["floor/raw_input"].init == Init("raw", "raw") and not arm["floor/raw_input"].is_control
    )
    # a probe's gain is measured against the random-init probe, every other arm's against scratch
    assert arm["mae/linear_probe"].control == "floor/random_init"
    probes = [v for v in arms if v.name.endswith("/linear_probe")]
    assert {v.control for v in probes} == {"floor/random_init"}
    fitted = [v for v in arms if not v.is_control and not v.floor and v not in probes]
    assert {v.control for v in fitted} == {"scratch"}


def test_a_declared_variant_may_start_from_another_objective(cfg) -> None:
    from transferlab.config import validate

    c = OmegaConf.merge(cfg, {"finetune": {"variants": {"probe": {"init": "gan", "lr": 0.1}}}})
    arm = by_name(variants(c, get_route(c, "image")))["gan/probe"]
    assert arm.init == Init("pretrained", "cnn", "gan") and arm.overrides == {"lr": 0.1}
    # gan is an image objective: the text route's study leaves the entry out
    text = OmegaConf.merge(c, {"route": "text", "logger": {"enabled": False}})
    assert not any(v.name.endswith("/probe") for v in variants(text, get_route(text)))
    validate(text, "finetune")
    bad = OmegaConf.merge(text, {"finetune": {"variants": {"probe": {"init": "bogus"}}}})
    with pytest.raises(
        ConfigError, match=r"finetune\.variants\.probe\.init='bogus' is not allowed"
    ):
        validate(bad, "finetune")


def test_text_variants_have_one_control_per_architecture(cfg) -> None:
    default = by_name(variants(OmegaConf.merge(cfg, {"route": "text"}), get_route(cfg, "text")))
    # clm is not in finetune.fine_tuned: its probe only, against the decoder's random-init probe
    assert "clm" not in default and "scratch_decoder" not in default
    assert default["clm/linear_probe"].control == "floor/random_init_decoder"
    assert default["floor/random_init_decoder"].init == Init("scratch", "decoder")
    c = OmegaConf.merge(cfg, {"route": "text", "finetune": {"dapt_epochs": 1, "fine_tuned": None}})
    arm = by_name(variants(c, get_route(c)))
    assert arm["mlm"].control == "scratch" and arm["clm"].control == "scratch_decoder"
    assert arm["clm_dapt"].init == Init("adapted", "decoder", "clm")
    assert arm["scratch_decoder"].init == Init("scratch", "decoder")
    assert arm["mlm/lp_ft"].control == "scratch"


def test_a_hub_model_is_probed_next_to_its_random_twin_and_fine_tuned_on_request(cfg) -> None:
    text = compose(["route=text", "model/text=minilm"])
    arm = by_name(variants(text, get_route(text)))
    assert arm["minilm/linear_probe"].init == Init("hub", "minilm")
    assert arm["minilm/linear_probe"].control == "floor/random_init_minilm"
    assert arm["floor/random_init_minilm"].init == Init("scratch", "minilm")
    assert "minilm" not in arm and "scratch_minilm" not in arm  # not in finetune.fine_tuned
    tuned = compose(["route=text", "model/text=minilm", "finetune.fine_tuned=[mlm,minilm]"])
    arm = by_name(variants(tuned, get_route(tuned)))
    assert arm["minilm"].init == Init("hub", "minilm") and arm["minilm"].control == "scratch_minilm"


def test_shift_family_targets_fit_the_primary_and_its_control_only(cfg) -> None:
    arms = variants(cfg, get_route(cfg, "image"))
    assert [v.name for v in target_arms(cfg, arms, member=True)] == ["mae", "scratch"]
    assert target_arms(cfg, arms, member=False) == arms
    more = OmegaConf.merge(cfg, {"finetune": {"family_arms": ["mae", "scratch", "mae/lp_ft"]}})
    assert [v.name for v in target_arms(more, arms, member=True)] == ["mae", "mae/lp_ft", "scratch"]
    bad = OmegaConf.merge(cfg, {"finetune": {"family_arms": ["mae"]}})
    with pytest.raises(ConfigError, match=r"family_arms=\['mae'\] leaves out 'scratch'"):
        target_arms(bad, arms, member=True)


def test_continued_pretraining_skips_objectives_that_read_labels(cfg) -> None:
    c = OmegaConf.merge(cfg, {"finetune": {"dapt_epochs": 1, "fine_tuned": None}})
    names = [v.name for v in variants(c, get_route(c, "image"))]
    assert {"mae_dapt", "contrastive_dapt", "gan_dapt"} <= set(names)
    assert "supervised_dapt" not in names  # supervised pre-training reads labels


def test_a_fit_carries_the_variants_and_its_own_overrides(cfg) -> None:
    c = compose(["+experiment=remedies"])
    arm = by_name(variants(c, get_route(c, "image")))["mae/l2sp"]
    fit = fit_for(c, "digits", arm, overrides={"max_steps": 3}, shots=2, seed=7)
    assert fit_for(c, "digits", arm).hparams["max_steps"] == c.finetune.max_steps.image
    assert fit.hparams["regularizer"]["name"] == "l2_sp"
    assert fit.hparams["regularizer"]["alpha"] == arm.overrides["regularizer"]["alpha"]
    assert fit.hparams["weight_decay"] == 0.0 and fit.hparams["max_steps"] == 3
    assert fit.hparams["lr"] == cfg.finetune.lr  # untouched knobs keep the config's value
    assert (fit.seed, fit.shots, fit.target) == (7, 2, "digits")
    assert "variants" not in fit.hparams
    assert merge_knobs({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


def test_every_strategy_of_the_schema_has_a_freezing_mode() -> None:
    from transferlab.schema import STRATEGIES
    from transferlab.stages.fit import STRATEGY_MODES

    # linear_probe is no SGD fit: a logistic regression on frozen features (run_probe)
    assert set(STRATEGY_MODES) | {"linear_probe"} == set(STRATEGIES)


def test_the_protocol_fits_the_grid_on_selecting_seeds_then_the_rest(cfg) -> None:
    c = OmegaConf.merge(
        cfg, {"study": {"seeds": [3, 4, 5], "lr_grid": [0.1, 0.01], "select_seeds": 2}}
    )
    protocol = Protocol.from_cfg(c)
    arms = by_name(variants(c, get_route(c, "image")))
    fit = fit_for(c, "lfw", arms["scratch"])
    assert fit.shots == c.data.image.shots_per_class and fit.seed == 3
    grid = grid_fits(fit, protocol)
    assert [(f.hparams["lr"], f.seed) for f in grid] == [(0.1, 3), (0.1, 4), (0.01, 3), (0.01, 4)]
    assert [(f.hparams["lr"], f.seed) for f in final_fits(fit, protocol, 0.01)] == [(0.01, 5)]
    probe = fit_for(c, "lfw", arms["mae/linear_probe"])
    assert [f.seed for f in grid_fits(probe, protocol)] == [3, 4, 5]  # a probe has no rate
    assert final_fits(probe, protocol, None) == []


def test_stages_hold_no_route_branches() -> None:
    pattern = re.compile(r"route ?==|route ?!=|== ?\"(image|text)\"|== ?'(image|text)'")
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in (ROOT / "src/transferlab/stages").glob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_every_module_sits_in_a_layer_of_the_import_contract() -> None:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    layers = parser["importlinter:contract:layers"]["layers"]
    listed = set(re.findall(r"transferlab\.(\w+)", layers))
    modules = {m.name for m in pkgutil.iter_modules(transferlab.__path__)} - {"__main__"}
    assert modules - listed == set(), "add these modules to a layer in .importlinter"


def test_the_import_contracts_hold() -> None:
    """``lint-imports`` (also in ``make lint``): layers one way, no cycle between siblings."""
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.exists():
        pytest.skip("import-linter is not installed (dev extras)")
    proc = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "2 kept, 0 broken" in proc.stdout
