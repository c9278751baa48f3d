"""Linear probe (fmnist, few-shot): does a self-supervised backbone beat a random-init backbone?

Runs the real stages on the default config (Fashion-MNIST source, each objective's default budget)
in a throw-away project, then ``scripts/probe_objectives.py``'s probe: BatchNorm statistics
re-estimated on the same source images for every backbone, logistic regression on standardised
pooled features, C picked on the target's val split, accuracy on its test split. A backbone must
beat the *best* of three random initialisations and also the random backbone its own run started
from (``init``: the project's seed), so that a lucky initialisation cannot pass for pre-training.
Minutes on two cores, hence slow.

Measured at the default budgets (seed 1234; random 0.639 ± 0.007, best 0.649; init 0.657):
mae 0.707, contrastive 0.679, gan 0.672 (see the table the fixture prints; mae at seeds 1 and 2
gains 6.4 and 3.5 points over its own init, gan 1.6 and 1.3, ...).
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import pytest
from omegaconf import OmegaConf

from tests.conftest import BIN, ROOT, make_project, run

SELF_SUPERVISED = ["mae", "contrastive", "gan"]


def probe_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "probe_objectives", ROOT / "scripts" / "probe_objectives.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def probe_rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = make_project(tmp_path_factory.mktemp("probe"), [])
    tl = str(BIN / "transferlab")
    run([tl, "data", "route=image", "logger.enabled=false"], root, timeout=900)
    for name in SELF_SUPERVISED:
        cmd = [tl, "pretrain", "route=image", f"objective={name}", "logger.enabled=false"]
        run(cmd, root, timeout=900)
    probe = probe_script()
    seed = int(OmegaConf.load(root / "params.yaml").seed)
    rows = probe.probe_table(
        root / "data" / "image",
        root / "models" / "image" / "pretrain",
        "fmnist",
        SELF_SUPERVISED,
        init_seed=seed,
    )
    print("\n" + probe.markdown(rows, "fmnist"))
    return {row["backbone"]: row for row in rows}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "mae",
        "contrastive",
        # Measured after the train split became a 40-per-class pool (the study protocol): the
        # GAN probe ties the backbone it started from (0.683 vs 0.684, above every random init):
        # its 60 batches of pre-training barely move the features (issue: pre-training that
        # matters).
        pytest.param(
            "gan", marks=pytest.mark.xfail(reason="GAN probe ties its init", strict=False)
        ),
    ],
)
def test_self_supervised_backbone_beats_random_init(
    probe_rows: dict[str, dict[str, Any]], name: str
) -> None:
    random, init, row = probe_rows["random"], probe_rows["init"], probe_rows[name]
    assert len(random["test_accs"]) == 3
    # Better than the best of the random initialisations, not just their mean ...
    assert row["test_acc"] > max(random["test_accs"]), (row, random)
    # ... and than the backbone the run started from.
    assert row["test_acc"] > init["test_acc"], (row, init)
