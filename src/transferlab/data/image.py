"""The image route's data stage: Fashion-MNIST as the source, five targets of increasing shift.

Targets (design.md §3; measured pixel-histogram KL from Fashion-MNIST in brackets):

- ``fmnist`` — in-domain few-shot Fashion-MNIST, drawn from the official test split so that none of
  its images were seen in pre-training;
- ``fmnist_inverted`` — the same images and splits inverted (``255 − x``, KL≈1.95): the corrupted
  (out-of-distribution) partner of ``fmnist``;
- ``digits`` — scikit-learn digits resized to 28×28 (KL≈0.11);
- ``lfw`` — scikit-image LFW faces vs non-faces (KL≈0.59);
- ``textures`` — brick / grass / gravel patches split by image region (KL≈4.65);
- the graded shift family ``<base>_<kind><severity>`` (``data.image.corruptions``): the base
  target's images and splits corrupted at each severity (:mod:`transferlab.data.corruptions`),
  labels unchanged, so that only the shift changes along the family.

``data.image.ood_partners`` names, per target, the targets its fine-tuned models are also tested
on (the manifest's ``ood_partners``; the first is the OOD partner).

Each dataset is written once as ``uint8`` tensors (``x``: ``(N, 1, 28, 28)``, ``y``: ``(N,)``) with a
few-shot train set of ``shots_per_class`` examples per class and disjoint, held-out val/test sets.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data import image_sources as src
from transferlab.data.corruptions import corrupt, family_name
from transferlab.errors import ConfigError
from transferlab.io import save_torch
from transferlab.progress import progress_bar

IMAGE_TARGETS = ("fmnist", "fmnist_inverted", "digits", "lfw", "textures")
Split = dict[str, np.ndarray]


def rng_for(seed: int, name: str) -> np.random.Generator:
    """A generator that depends only on the seed and the dataset's name (not on build order)."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def split_per_class(
    labels: np.ndarray,
    n_train: int,
    n_val: int,
    n_test: int,
    rng: np.random.Generator,
    dataset: str,
    classes: list[str],
) -> dict[str, np.ndarray]:
    """Disjoint per-class index sets: exactly ``n_train`` train, then up to ``n_val``/``n_test``.

    Few-shot train sets must be exact (they are the experiment's knob), so a class with fewer than
    ``n_train + 2`` examples is an error; val/test take what remains, at least one each.
    """
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(len(classes)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < n_train + 2:
            raise ConfigError(
                f"data.image.pool_per_class={n_train} is too large for class '{classes[c]}' of "
                f"target '{dataset}' ({len(idx)} examples; allowed at most {len(idx) - 2})"
            )
        rest = len(idx) - n_train
        v = min(n_val, max(1, rest // 2))
        t = min(n_test, rest - v)
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train : n_train + v])
        parts["test"].append(idx[n_train + v : n_train + v + t])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def _take(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
    return {"x": x[idx][:, None], "y": y[idx]}


def _sample_region(
    x: np.ndarray, y: np.ndarray, per_class: int, rng: np.random.Generator
) -> np.ndarray:
    picks = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]
    return np.sort(np.concatenate(picks))


def split_hash(split: Split) -> str:
    h = hashlib.sha256()
    for key in ("x", "y"):
        arr = np.ascontiguousarray(split[key])
        h.update(f"{key}{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def build_source(
    cfg: Mapping[str, Any], seed: int
) -> tuple[dict[str, Split], np.ndarray, np.ndarray]:
    """Source splits, plus the official-test images NOT used by the source (the in-domain pool)."""
    root = cfg["fashion_mnist_dir"]
    xtr, ytr = src.load_fashion_mnist("train", root)
    xte, yte = src.load_fashion_mnist("test", root)
    n_tr, n_va, n_te = int(cfg["source_train"]), int(cfg["source_val"]), int(cfg["source_test"])
    if n_tr + n_va > len(xtr):
        raise ConfigError(
            f"data.image.source_train + source_val = {n_tr + n_va} exceeds the {len(xtr)} "
            "Fashion-MNIST training images"
        )
    if n_te >= len(xte) // 2:
        raise ConfigError(
            f"data.image.source_test={n_te} must be below {len(xte) // 2} (the rest feeds the in-domain target)"
        )
    rng = rng_for(seed, "source")
    p = rng.permutation(len(xtr))
    q = rng.permutation(len(xte))
    splits = {
        "train": _take(xtr, ytr, np.sort(p[:n_tr])),
        "val": _take(xtr, ytr, np.sort(p[n_tr : n_tr + n_va])),
        "test": _take(xte, yte, np.sort(q[:n_te])),
    }
    pool = np.sort(q[n_te:])
    return splits, xte[pool], yte[pool]


def build_target(
    name: str,
    cfg: Mapping[str, Any],
    seed: int,
    fmnist_pool: tuple[np.ndarray, np.ndarray],
) -> tuple[dict[str, Split], list[str]]:
    shots, n_val, n_test = (
        int(cfg["pool_per_class"]),
        int(cfg["val_per_class"]),
        int(cfg["test_per_class"]),
    )
    if name in ("fmnist", "fmnist_inverted"):
        x, y = fmnist_pool
        classes = list(src.FASHION_MNIST_CLASSES)
        # Both share one RNG stream so the inverted target holds exactly the same images.
        idx = split_per_class(y, shots, n_val, n_test, rng_for(seed, "fmnist"), name, classes)
        if name == "fmnist_inverted":
            x = 255 - x
    elif name == "digits":
        x, y, classes = src.load_digits_28()
        idx = split_per_class(y, shots, n_val, n_test, rng_for(seed, name), name, classes)
    elif name == "lfw":
        x, y, classes = src.load_lfw_28()
        idx = split_per_class(y, shots, n_val, n_test, rng_for(seed, name), name, classes)
    elif name == "textures":
        regions = src.load_texture_regions(int(cfg["texture_patch"]))
        classes = list(src.TEXTURES)
        rng = rng_for(seed, name)
        out: dict[str, Split] = {}
        for split, per_class in (("train", shots), ("val", n_val), ("test", n_test)):
            rx, ry = regions[split]
            counts = np.bincount(ry, minlength=len(classes))
            if split == "train" and counts.min() < shots:
                raise ConfigError(
                    f"data.image.pool_per_class={shots} is too large for target 'textures' "
                    f"(its train region holds {counts.min()} patches per class)"
                )
            out[split] = _take(rx, ry, _sample_region(rx, ry, per_class, rng))
        return out, classes
    else:
        raise ConfigError(
            f"data.image.targets: unknown target '{name}'; allowed: {', '.join(IMAGE_TARGETS)}"
        )
    return {k: _take(x, y, v) for k, v in idx.items()}, classes


def family(cfg: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """The graded shift family of ``data.image.corruptions``: ``(name, kind, severity)`` in
    order, kind by kind and severity by severity (empty without a base)."""
    c = cfg.get("corruptions") or {}
    base = c.get("base")
    if not base:
        return []
    return [
        (family_name(str(base), str(k), int(s)), str(k), int(s))
        for k in c.get("kinds") or []
        for s in c.get("severities") or []
    ]


def all_targets(cfg: Mapping[str, Any]) -> list[str]:
    """``data.image.targets`` followed by the shift family's targets."""
    targets = [str(t) for t in cfg["targets"]]
    return targets + [name for name, _, _ in family(cfg) if name not in targets]


def families(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The manifest's ``families``: per kind, ``<base>_<kind>`` → its ordered ``targets`` (the
    clean base first, severity 0) with their ``severities`` and ``kind``."""
    base = (cfg.get("corruptions") or {}).get("base")
    out: dict[str, dict[str, Any]] = {}
    for name, kind, sev in family(cfg):
        fam = out.setdefault(
            f"{base}_{kind}", {"kind": kind, "targets": [str(base)], "severities": [0]}
        )
        fam["targets"].append(name)
        fam["severities"].append(sev)
    return out


def corrupted(
    splits: Mapping[str, Split], name: str, kind: str, severity: int, seed: int
) -> dict[str, Split]:
    """Every split of ``splits`` corrupted by ``kind`` at ``severity`` (labels kept); the noise
    depends on the seed and the family member's name only."""
    rng = rng_for(seed, name)
    return {k: {"x": corrupt(v["x"], kind, severity, rng), "y": v["y"]} for k, v in splits.items()}


def _describe(splits: Mapping[str, Split], classes: list[str]) -> dict[str, Any]:
    return {
        "classes": classes,
        "splits": {k: len(v["y"]) for k, v in splits.items()},
        "class_counts": {
            k: np.bincount(v["y"], minlength=len(classes)).astype(int).tolist()
            for k, v in splits.items()
        },
        "sha256": {k: split_hash(v) for k, v in splits.items()},
    }


def _save(path: Path, splits: Mapping[str, Split], classes: list[str]) -> None:
    payload: dict[str, Any] = {"classes": classes}
    for k, v in splits.items():
        payload[k] = {
            "x": torch.from_numpy(np.ascontiguousarray(v["x"])),
            "y": torch.from_numpy(v["y"]),
        }
    save_torch(path, payload)


def build_image_data(
    cfg: Mapping[str, Any], out_dir: Path, seed: int, progress: bool = True
) -> dict[str, Any]:
    """Build the source and every target into ``out_dir``; return the manifest (also written)."""
    named = [str(t) for t in cfg["targets"]]
    unknown = [t for t in named if t not in IMAGE_TARGETS]
    if unknown:
        raise ConfigError(
            f"data.image.targets: unknown target '{unknown[0]}'; allowed: {', '.join(IMAGE_TARGETS)}"
        )
    members = family(cfg)
    base = (cfg.get("corruptions") or {}).get("base")
    if members and base not in IMAGE_TARGETS:
        raise ConfigError(
            f"data.image.corruptions.base: unknown target '{base}'; allowed: "
            f"{', '.join(IMAGE_TARGETS)} (or null: no family)"
        )
    targets = all_targets(cfg)
    partners = {  # a target left out of the study takes its partners with it
        str(k): [str(p) for p in v]
        for k, v in (cfg.get("ood_partners") or {}).items()
        if str(k) in targets
    }
    for t, ps in partners.items():
        for name in ps:
            if name not in targets:
                raise ConfigError(
                    f"data.image.ood_partners.{t}: '{name}' is not a target of this study; allowed: "
                    + ", ".join(targets)
                )
    manifest: dict[str, Any] = {
        "route": "image",
        "seed": int(seed),
        "source": "fashion_mnist",
        "datasets": {},
    }
    with progress_bar(progress) as bar:
        task = bar.add_task("data[image]", total=1 + len(targets))
        splits, pool_x, pool_y = build_source(cfg, seed)
        classes = list(src.FASHION_MNIST_CLASSES)
        _save(out_dir / "source.pt", splits, classes)
        manifest["datasets"]["source"] = _describe(splits, classes)
        bar.advance(task)
        built: dict[str, tuple[dict[str, Split], list[str]]] = {}
        kinds = {name: (kind, sev) for name, kind, sev in members}
        for name in targets:
            bar.update(task, description=f"data[image] {name}")
            if name in kinds:
                if base not in built:
                    built[str(base)] = build_target(str(base), cfg, seed, (pool_x, pool_y))
                clean, t_classes = built[str(base)]
                t_splits = corrupted(clean, name, *kinds[name], seed)
            else:
                t_splits, t_classes = build_target(name, cfg, seed, (pool_x, pool_y))
                built[name] = (t_splits, t_classes)
            empty = [k for k, v in t_splits.items() if len(v["y"]) == 0]
            if empty:
                raise ConfigError(
                    f"target '{name}' has an empty {empty[0]} split; lower data.image.pool_per_class"
                )
            _save(out_dir / "targets" / f"{name}.pt", t_splits, t_classes)
            manifest["datasets"][name] = _describe(t_splits, t_classes)
            bar.advance(task)
    manifest["ood_partners"] = partners
    manifest["families"] = families(cfg)
    manifest["hash"] = hashlib.sha256(
        json.dumps(manifest["datasets"], sort_keys=True).encode()
    ).hexdigest()
    return manifest
