"""One source of truth for configuration: ``conf/`` composed by Hydra, snapshotted to ``params.yaml``.

DVC stages read the snapshot (``params.yaml``, which ``dvc exp run -S`` recomposes from ``conf/``);
Hydra multiruns compose ``conf/`` directly. Both paths go through :func:`validate` before anything
heavy is imported, so a bad value costs milliseconds and one clear line, not a crashed training run.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from transferlab.errors import ConfigError

ROUTES = ("image", "text")
STAGES = ("data", "pretrain", "finetune", "evaluate", "shift-analysis")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "inverse_time", "step_decay", "exponential", "cosine_with_warmup")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def conf_dir() -> Path:
    """``./conf`` when run from a checkout (or a copy of one), else the package's own checkout."""
    here = Path.cwd() / "conf"
    return here if (here / "config.yaml").exists() else PROJECT_ROOT / "conf"


def compose(overrides: Sequence[str] = (), config_dir: Path | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` exactly as DVC's Hydra integration does (resolved)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(str((config_dir or conf_dir()).resolve()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except HydraException as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
    OmegaConf.resolve(cfg)
    return cfg


def params_yaml(overrides: Sequence[str] = ()) -> str:
    return OmegaConf.to_yaml(compose(overrides))


def _suggest(key: str, cfg: DictConfig) -> str:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, DictConfig):
        close = difflib.get_close_matches(leaf, [str(k) for k in node], n=1)
        if close:
            return f"; did you mean '{(parent + '.') if parent else ''}{close[0]}'?"
        return f"; allowed keys under '{parent or '<root>'}': {', '.join(map(str, node.keys()))}"
    return ""


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Apply ``key=value`` overrides; a key must already exist unless written ``+key=value``."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        if "/" in key.split(".")[0] or key.startswith("~"):
            raise ConfigError(
                f"override '{item}' changes the composition of conf/: use `dvc exp run -S {item}` or "
                f"`transferlab params {item}` and re-run"
            )
        add = key.startswith("+")
        key = key.lstrip("+")
        if (
            not add
            and key not in ("route", "objective")
            and OmegaConf.select(cfg, key, default="__missing__") == "__missing__"
        ):
            raise ConfigError(f"unknown config key '{key}'{_suggest(key, cfg)}")
        try:
            parsed = OmegaConf.from_dotlist([f"{key}={value}"])
            cfg = OmegaConf.merge(cfg, parsed)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override '{item}': {str(exc).splitlines()[0]}") from None
    return cfg


def load(
    params: str | os.PathLike[str] = "params.yaml", overrides: Iterable[str] = ()
) -> DictConfig:
    path = Path(params)
    if not path.exists():
        raise ConfigError(
            f"params file {path} is missing: run `transferlab params` (or `make params`) to compose it from conf/"
        )
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:
        raise ConfigError(
            f"params file {path} is not valid YAML ({str(exc).splitlines()[0]})"
        ) from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"params file {path} must hold a mapping at the top level")
    return apply_overrides(cfg, overrides)


def _need(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default="__missing__")
    if value == "__missing__":
        raise ConfigError(f"config key '{key}' is missing{_suggest(key, cfg)}")
    return value


def _number(
    cfg: DictConfig,
    key: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    integer: bool = False,
) -> float:
    value = _need(cfg, key)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key}={value!r} must be {kind}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{key}={value} must be finite")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{key}={value} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}={value} must be <= {hi}")
    return value


def _choice(cfg: DictConfig, key: str, allowed: Sequence[str]) -> str:
    value = str(_need(cfg, key))
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")
    return value


def validate(cfg: DictConfig, stage: str | None = None) -> None:
    """Check every key a stage reads; raise :class:`ConfigError` naming the first bad one."""
    _number(cfg, "seed", lo=0, integer=True)
    route = _choice(cfg, "route", [r for r in ROUTES if r in cfg.get("data", {})])
    if stage in (None, "data"):
        data = _need(cfg, f"data.{route}")
        targets = data.get("targets")
        if not isinstance(targets, ListConfig) or len(targets) == 0:
            raise ConfigError(f"data.{route}.targets must be a non-empty list")
        _number(cfg, f"data.{route}.shots_per_class", lo=1, integer=True)
        _number(cfg, f"data.{route}.val_per_class", lo=1, integer=True)
        _number(cfg, f"data.{route}.test_per_class", lo=1, integer=True)
    objectives = [str(o) for o in _need(cfg, f"pretrain.{route}.objectives")]
    known = [str(k) for k in _need(cfg, "objectives")]
    for o in objectives:
        if o not in known:
            raise ConfigError(
                f"pretrain.{route}.objectives: unknown objective '{o}'; allowed: {', '.join(known)}"
            )
    if stage in (None, "pretrain", "evaluate", "shift-analysis"):
        _choice(cfg, "objective", objectives)
    if stage in (None, "pretrain"):
        _number(cfg, f"pretrain.{route}.max_epochs", lo=1, integer=True)
        _number(cfg, f"pretrain.{route}.batch_size", lo=1, integer=True)
        ocfg = _need(cfg, f"objectives.{cfg.objective}")
        if "lr" in ocfg:
            _number(cfg, f"objectives.{cfg.objective}.lr", lo=0, lo_open=True)
        if "mask_ratio" in ocfg:
            _number(cfg, f"objectives.{cfg.objective}.mask_ratio", lo=0, lo_open=True, hi=0.99)
    if stage in (None, "finetune", "evaluate"):
        _number(cfg, "finetune.lr", lo=0, lo_open=True)
        _number(cfg, "finetune.weight_decay", lo=0)
        _number(cfg, "finetune.max_epochs", lo=1, integer=True)
        _number(cfg, "finetune.batch_size", lo=1, integer=True)
        _number(cfg, "finetune.label_smoothing", lo=0, hi=0.99)
        _choice(cfg, "finetune.optimizer", OPTIMIZERS)
        _choice(cfg, "finetune.schedule", SCHEDULES)
        depth = len(_need(cfg, f"model.{route}.widths")) if "widths" in cfg.model[route] else None
        k = _number(cfg, "finetune.freeze_depth", lo=0, integer=True)
        if depth is not None and k > depth:
            raise ConfigError(
                f"finetune.freeze_depth={k} is beyond the model's depth {depth}; allowed 0..{depth}"
            )
    if stage is not None and stage not in STAGES:
        raise ConfigError(f"unknown stage '{stage}'; allowed: {', '.join(STAGES)}")
    if cfg.get("logger", {}).get("enabled", True):
        from transferlab.tracking import check_tracking_uri

        check_tracking_uri(str(_need(cfg, "logger.tracking_uri")))
