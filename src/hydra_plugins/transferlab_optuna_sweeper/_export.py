"""Write the best trial as a Hydra experiment: ``<conf>/experiment/best_<study>.yaml``.

A trial's ``finetune.lr`` is also written as ``study.lr_grid: [lr]``: the pipeline's arms select
their rate from that grid (docs/protocol.md), so the trial's rate must be the grid's only value.

The file is a ``# @package _global_`` config holding every value override the best trial ran
with (the sampled ones and the fixed ones of the search), so ``+experiment=best_<study>`` (e.g.
``dvc exp run -S +experiment=best_<study>``) composes the same configuration. Config-group choices
that were swept become ``override /group: option`` entries of its defaults list; config groups
added on the sweep's command line (``+debug=tiny``) cannot live in an experiment: the header lists
them in the ``dvc exp run`` command that reproduces the trial.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hydra_plugins.transferlab_optuna_sweeper._space import parse_value


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"{dotted}: a parent key already holds a value")
    node[leaf] = value


def _quote_arg(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def experiment_yaml(
    study_name: str,
    trial: Any,
    metric_names: Sequence[str],
    storage: str,
    overrides: Sequence[str],
    exclude: Sequence[str],
    is_group: Callable[[str], bool],
) -> str:
    """The experiment config text for ``trial`` (a FrozenTrial) run with ``overrides``."""
    body: dict[str, Any] = {}
    defaults: list[dict[str, Any]] = []
    compositions: list[str] = []
    for text in overrides:
        ov, value = parse_value(text)
        key = ov.key_or_group
        if ov.is_hydra_override() or any(key == p or key.startswith(f"{p}.") for p in exclude):
            continue
        if is_group(key) or ov.is_delete():
            if ov.is_add() or ov.is_force_add() or ov.is_delete():
                compositions.append(text)  # '+debug=tiny': adds a group, no value to store
            else:
                pkg = f"@{ov.package}" if ov.package else ""
                defaults.append({f"override /{key}{pkg}": value})
            continue
        _set(body, key, value)
    # A trial fits one rate (finetune.lr); the pipeline's arms select theirs from study.lr_grid,
    # so the trial's rate is pinned there too, or `dvc exp run` would not reproduce the trial.
    lr = (body.get("finetune") or {}).get("lr")
    pinned = lr is not None and "lr_grid" not in (body.get("study") or {})
    if pinned:
        _set(body, "study.lr_grid", [lr])
    values = ", ".join(f"{n} = {v:.6g}" for n, v in zip(metric_names, trial.values, strict=True))
    dvc = "".join(f"-S {_quote_arg(c)} " for c in compositions)
    header = [
        "# @package _global_",
        f"# Best trial of the Optuna study '{study_name}' ({storage}): trial {trial.number}, {values}.",
        "# Written by the transferlab Optuna sweeper at the end of each sweep (a new best rewrites",
        "# it). Reproduce the trial through the DVC pipeline with:",
        f"#   dvc exp run {dvc}-S '+experiment=best_{study_name}'",
    ]
    if pinned:
        header.append(
            "# study.lr_grid holds only the trial's finetune.lr: every arm fits at that rate."
        )
    doc: dict[str, Any] = {}
    if defaults:
        doc["defaults"] = defaults
    doc.update(body)
    text = OmegaConf.to_yaml(OmegaConf.create(doc)) if doc else "{}\n"
    return "\n".join(header) + "\n" + text


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def primary_config_dir(config: Any) -> Path | None:
    """The directory of the app's primary config (``--config-dir``/``config_path``)."""
    for source in config.hydra.runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            return Path(source.path)
    return None
