"""Image data: real sources, exact few-shot sets, disjoint splits, deterministic builds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY_IMAGE
from transferlab.data.image import build_image_data, build_source, build_target
from transferlab.data.image_sources import load_fashion_mnist, load_texture_regions
from transferlab.errors import ConfigError, DataSourceError


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("image")
    return out, build_image_data(TINY_IMAGE, out, seed=7, progress=False)


def _rows(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in x}


def test_fashion_mnist_loads_from_the_debian_package() -> None:
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10


def test_shapes_and_exact_few_shot_counts(built: tuple[Path, dict]) -> None:
    out, manifest = built
    for name in TINY_IMAGE["targets"]:
        d = torch.load(out / "targets" / f"{name}.pt", weights_only=True)
        k = len(d["classes"])
        assert d["train"]["x"].shape[1:] == (1, 28, 28) and d["train"]["x"].dtype == torch.uint8
        assert (
            torch.bincount(d["train"]["y"], minlength=k).tolist()
            == [TINY_IMAGE["pool_per_class"]] * k  # the labelled pool each seed draws from
        )
        assert manifest["datasets"][name]["splits"]["train"] == TINY_IMAGE["pool_per_class"] * k
    src = torch.load(out / "source.pt", weights_only=True)
    assert [len(src[s]["y"]) for s in ("train", "val", "test")] == [256, 64, 64]


def test_splits_are_disjoint(built: tuple[Path, dict]) -> None:
    out, _ = built
    for name in ("source", *TINY_IMAGE["targets"]):
        path = out / "source.pt" if name == "source" else out / "targets" / f"{name}.pt"
        d = torch.load(path, weights_only=True)
        tr, va, te = (_rows(d[s]["x"]) for s in ("train", "val", "test"))
        assert not (tr & va) and not (tr & te) and not (va & te), name


def test_in_domain_target_never_saw_pretraining_images(built: tuple[Path, dict]) -> None:
    out, _ = built
    src = torch.load(out / "source.pt", weights_only=True)
    tgt = torch.load(out / "targets" / "fmnist.pt", weights_only=True)
    seen = set().union(*(_rows(src[s]["x"]) for s in ("train", "val", "test")))
    assert not seen & set().union(*(_rows(tgt[s]["x"]) for s in ("train", "val", "test")))


def test_inverted_target_is_the_same_images_inverted(built: tuple[Path, dict]) -> None:
    out, manifest = built
    a = torch.load(out / "targets" / "fmnist.pt", weights_only=True)
    b = torch.load(out / "targets" / "fmnist_inverted.pt", weights_only=True)
    assert torch.equal(255 - a["test"]["x"], b["test"]["x"]) and torch.equal(
        a["test"]["y"], b["test"]["y"]
    )
    assert manifest["ood_partners"] == {"fmnist": ["fmnist_gaussian_noise5", "fmnist_inverted"]}


def test_shift_family_is_the_base_images_corrupted_with_labels_kept(
    built: tuple[Path, dict],
) -> None:
    out, manifest = built
    assert manifest["families"]["fmnist_gaussian_noise"] == {
        "kind": "gaussian_noise",
        "targets": ["fmnist", "fmnist_gaussian_noise1", "fmnist_gaussian_noise5"],
        "severities": [0, 1, 5],
    }
    assert manifest["families"]["fmnist_contrast"]["targets"][1:] == [
        "fmnist_contrast1",
        "fmnist_contrast5",
    ]
    clean = torch.load(out / "targets" / "fmnist.pt", weights_only=True)
    drift = []
    for sev in (1, 5):
        d = torch.load(out / "targets" / f"fmnist_gaussian_noise{sev}.pt", weights_only=True)
        for s in ("train", "val", "test"):
            assert torch.equal(d[s]["y"], clean[s]["y"])  # same examples, same labels
        drift.append((d["test"]["x"].float() - clean["test"]["x"].float()).abs().mean())
    assert 0 < drift[0] < drift[1]  # the shift grows with severity
    low = torch.load(out / "targets" / "fmnist_contrast5.pt", weights_only=True)["test"]["x"]

    def spread(x: torch.Tensor) -> float:  # mean within-image standard deviation
        return float(x.float().flatten(1).std(dim=1).mean())

    assert spread(low) < 0.1 * spread(clean["test"]["x"])  # contrast factor 0.05


def test_ood_partner_outside_the_study_is_refused(tmp_path: Path) -> None:
    bad = {**TINY_IMAGE, "ood_partners": {"fmnist": ["fmnist_blur9"]}}
    with pytest.raises(ConfigError, match=r"ood_partners\.fmnist: 'fmnist_blur9' is not a target"):
        build_image_data(bad, tmp_path, seed=0, progress=False)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_texture_splits_come_from_disjoint_image_regions() -> None:
    regions = load_texture_regions()
    # Rows [0,256) train, [256,384) val, [384,512) test: 9 x 18, 4 x 18, 4 x 18 patches per texture.
    assert [len(regions[s][1]) for s in ("train", "val", "test")] == [3 * 162, 3 * 72, 3 * 72]


def test_build_is_deterministic_and_seed_dependent(
    tmp_path: Path, built: tuple[Path, dict]
) -> None:
    _, manifest = built
    again = build_image_data(TINY_IMAGE, tmp_path / "a", seed=7, progress=False)
    other = build_image_data(TINY_IMAGE, tmp_path / "b", seed=8, progress=False)
    assert again["hash"] == manifest["hash"]
    assert other["hash"] != manifest["hash"]
    f1 = (tmp_path / "a" / "targets" / "digits.pt").read_bytes()
    build_image_data(TINY_IMAGE, tmp_path / "c", seed=7, progress=False)
    assert (tmp_path / "c" / "targets" / "digits.pt").read_bytes() == f1


def test_missing_source_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="install the Debian package 'dataset-fashion-mnist'"):
        build_source({**TINY_IMAGE, "fashion_mnist_dir": str(tmp_path)}, seed=0)


def test_corrupt_source_is_reported(tmp_path: Path) -> None:
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tmp_path / f"{stem}.gz").write_bytes(b"not a gzip file")
    with pytest.raises(DataSourceError, match="corrupt"):
        load_fashion_mnist("train", tmp_path)


def test_few_shot_larger_than_a_class_is_refused() -> None:
    with pytest.raises(
        ConfigError,
        match=r"pool_per_class=150 is too large for class 'face' of target 'lfw' \(100 examples; allowed at most 98\)",
    ):
        build_target(
            "lfw", {**TINY_IMAGE, "pool_per_class": 150}, 0, (np.zeros((0, 28, 28)), np.zeros(0))
        )


def test_unknown_target_lists_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match="unknown target 'cifar'; allowed: fmnist, fmnist_inverted, digits, lfw, textures",
    ):
        build_image_data({**TINY_IMAGE, "targets": ["cifar"]}, tmp_path, seed=0, progress=False)
