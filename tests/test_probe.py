"""Linear probe (fmnist, few-shot): does a self-supervised backbone beat a random-init backbone?

Runs the real stages on the default config (Fashion-MNIST source, each objective's default budget)
in a throw-away project, then ``scripts/probe_objectives.py``'s probe: BatchNorm statistics
re-estimated on the same source images for every backbone, logistic regression on standardised
pooled features, C picked on the target's val split, accuracy on its test split; a backbone must
beat the *best* of three random initialisations. Minutes on two cores, hence slow.

Measured at the default budgets (see the table ``scripts/probe_objectives.py`` prints): contrastive
clears the bar; the masked-reconstruction and GAN backbones land within the random-init spread
(mean-pooled MAE features are known to probe poorly, and a DCGAN discriminator needs far more than
the ~30 steps the pipeline's budget allows), so those two are expected failures until their budgets
or the probe change. ``strict=False``: a backbone that starts to pass is news, not a broken build.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import BIN, ROOT, make_project, run

SELF_SUPERVISED = ["mae", "contrastive", "gan"]
BELOW_RANDOM_AT_DEFAULT_BUDGET = "measured within the random-init spread at the default budget"


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
    rows = probe.probe_table(
        root / "data" / "image", root / "models" / "image" / "pretrain", "fmnist", SELF_SUPERVISED
    )
    print("\n" + probe.markdown(rows, "fmnist"))
    return {row["backbone"]: row for row in rows}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param("mae", marks=pytest.mark.xfail(reason=BELOW_RANDOM_AT_DEFAULT_BUDGET)),
        "contrastive",
        pytest.param("gan", marks=pytest.mark.xfail(reason=BELOW_RANDOM_AT_DEFAULT_BUDGET)),
    ],
)
def test_self_supervised_backbone_beats_random_init(
    probe_rows: dict[str, dict[str, Any]], name: str
) -> None:
    random, row = probe_rows["random"], probe_rows[name]
    assert len(random["test_accs"]) == 3
    # Better than the best of the random initialisations, not just their mean.
    assert row["test_acc"] > max(random["test_accs"]), (row, random)
