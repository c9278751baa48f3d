"""Backbone checkpoints: the one pre-train → fine-tune interface, and it refuses unsafe files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from transferlab.errors import CheckpointError
from transferlab.models.checkpoint import (
    build_backbone,
    classifier_state,
    load_backbone,
    load_classifier,
    save_backbone,
    save_classifier,
)
from transferlab.models.cnn import Classifier, ConvNet

ARCH = {
    "_target_": "transferlab.models.cnn.ConvNet",
    "in_channels": 1,
    "widths": [4, 8, 8, 8],
    "strides": [2, 2, 1, 1],
    "dropout": 0.0,
}


def test_round_trip_restores_identical_weights(tmp_path: Path) -> None:
    net = ConvNet(widths=ARCH["widths"], strides=ARCH["strides"])
    save_backbone(tmp_path / "b.pt", net, ARCH, {"objective": "mae"})
    loaded, meta = load_backbone(tmp_path / "b.pt", expected_arch=ARCH)
    assert meta == {"objective": "mae"}
    for (k, v), (k2, v2) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


class Evil:
    def __reduce__(self):  # the classic pickle payload
        return (print, ("pwned",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "transferlab-backbone/1", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_backbone(path)


def test_plain_pickle_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        load_backbone(path)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    net = ConvNet(widths=ARCH["widths"], strides=ARCH["strides"])
    save_backbone(tmp_path / "b.pt", net, ARCH, {})
    data = (tmp_path / "b.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_backbone(tmp_path / "t.pt")


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is missing"):
        load_backbone(tmp_path / "nope.pt")


def test_foreign_architecture_is_named(tmp_path: Path) -> None:
    net = ConvNet(widths=ARCH["widths"], strides=ARCH["strides"])
    save_backbone(tmp_path / "b.pt", net, ARCH, {})
    with pytest.raises(CheckpointError, match="another architecture \\(differs in widths\\)"):
        load_backbone(tmp_path / "b.pt", expected_arch={**ARCH, "widths": [8, 8, 8, 8]})


def test_target_outside_the_package_is_refused(tmp_path: Path) -> None:
    net = ConvNet(widths=ARCH["widths"], strides=ARCH["strides"])
    save_backbone(tmp_path / "b.pt", net, {**ARCH, "_target_": "os.system"}, {})
    with pytest.raises(CheckpointError, match="not allowed"):
        load_backbone(tmp_path / "b.pt")


TEXT_ARCH = {
    "_target_": "transferlab.models.text_encoder.TextEncoder",
    "vocab_size": 50,
    "max_len": 8,
    "d_model": 16,
    "n_layers": 1,
    "n_heads": 2,
}


def _seeded(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone(TEXT_ARCH)


def test_a_probe_of_a_rebuildable_backbone_is_saved_as_head_and_seed(tmp_path: Path) -> None:
    model = Classifier(_seeded(3), 4)
    model.frozen_seed = 3  # what stages.fit.run_probe sets for a hub or random-init probe
    save_classifier(tmp_path / "p.pt", classifier_state(model), TEXT_ARCH, 4, {})
    full = tmp_path / "full.pt"
    save_classifier(full, Classifier(_seeded(3), 4).state_dict(), TEXT_ARCH, 4, {})
    assert (tmp_path / "p.pt").stat().st_size < full.stat().st_size / 5
    loaded, _ = load_classifier(tmp_path / "p.pt", rebuild=_seeded)
    x = torch.randint(1, 50, (5, 8))
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))
    with pytest.raises(CheckpointError, match="holds a probe without its frozen backbone"):
        load_classifier(tmp_path / "p.pt")
    with pytest.raises(CheckpointError, match="the rebuilt backbone differs"):
        load_classifier(tmp_path / "p.pt", rebuild=lambda s: _seeded(s + 1))
