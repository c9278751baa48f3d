"""One source of truth for configuration: ``conf/`` composed by Hydra, snapshotted to ``params.yaml``.

DVC stages read the snapshot (``params.yaml``, which ``dvc exp run -S`` recomposes from ``conf/``);
Hydra multiruns compose ``conf/`` directly. Both paths go through :func:`validate` before anything
heavy is imported, so a bad value costs milliseconds and one clear line, not a crashed training run.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from transferlab.errors import ConfigError

ROUTES = ("image", "text")
STAGES = ("data", "pretrain", "finetune", "evaluate", "shift-analysis", "curves", "summary")
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


def primary_key(cfg: DictConfig, route: str) -> str:
    """Where a route's primary objective is set: ``pretrain.<route>.primary`` if given (the text
    route: ``mlm``), else the top-level ``objective`` (the image route: ``mae``)."""
    key = f"pretrain.{route}.primary"
    return key if OmegaConf.select(cfg, key, default=None) is not None else "objective"


def primary_objective(cfg: DictConfig, route: str) -> str:
    """The objective whose model is a route's ``pretrained`` variant in the reports."""
    return str(OmegaConf.select(cfg, primary_key(cfg, route)))


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
        home = OmegaConf.select(cfg, f"objectives.{o}.route", default=None)
        if home is not None and str(home) != route:
            raise ConfigError(
                f"pretrain.{route}.objectives: '{o}' pre-trains the {home} route (objectives.{o}.route)"
            )
    if stage == "pretrain":
        _choice(cfg, "objective", objectives)
    elif stage in (None, "evaluate", "shift-analysis"):
        _choice(cfg, primary_key(cfg, route), objectives)
    if stage in (None, "pretrain"):
        _number(cfg, f"pretrain.{route}.max_epochs", lo=1, integer=True)
        _number(cfg, f"pretrain.{route}.batch_size", lo=1, integer=True)
        ocfg = _need(cfg, f"objectives.{cfg.objective}")
        if "lr" in ocfg:
            _number(cfg, f"objectives.{cfg.objective}.lr", lo=0, lo_open=True)
        if "mask_ratio" in ocfg:
            _number(cfg, f"objectives.{cfg.objective}.mask_ratio", lo=0, lo_open=True, hi=0.99)
        for name in dict.fromkeys([str(cfg.objective), *(objectives if stage is None else [])]):
            _objective_keys(cfg, f"objectives.{name}")
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
    dapt = stage in (None, "finetune", "evaluate") and "dapt_epochs" in cfg.finetune
    if dapt and _number(cfg, "finetune.dapt_epochs", lo=0, integer=True) and route != "text":
        raise ConfigError(
            f"finetune.dapt_epochs > 0 (domain-adaptive pre-training) is implemented for the "
            f"text route only, not route={route}; allowed: 0"
        )
    if route == "text":
        _validate_text(cfg, stage, objectives)
    if stage in (None, "finetune", "evaluate"):
        _validate_finetune(cfg, "finetune")
        # finetune.variants are the image route's; the text route has its own (stages/text.py).
        for name in (cfg.finetune.get("variants") or {}) if route != "text" else ():
            variant = cfg.finetune.variants[name]
            unknown = [k for k in variant if k not in cfg.finetune or k == "variants"]
            if unknown:
                raise ConfigError(
                    f"finetune.variants.{name}.{unknown[0]} is not a finetune knob; allowed: "
                    + ", ".join(k for k in cfg.finetune if k != "variants")
                )
            _validate_finetune(
                OmegaConf.merge(cfg, {"finetune": variant}), f"finetune.variants.{name}"
            )
    if (
        stage in (None, "finetune", "curves")
        and cfg.get("trainer", {}).get("fit_workers") is not None
    ):
        _number(cfg, "trainer.fit_workers", lo=1, integer=True)
    if stage in (None, "curves") and "curves" in cfg:
        _validate_curves(cfg, route)
    if stage is not None and stage not in STAGES:
        raise ConfigError(f"unknown stage '{stage}'; allowed: {', '.join(STAGES)}")
    if stage is not None:
        for key in ("paths.data_dir", "paths.models_dir", "paths.reports_dir"):
            _check_writable(key, str(_need(cfg, key)))
    if cfg.get("logger", {}).get("enabled", True):
        from transferlab.tracking import check_tracking_uri

        check_tracking_uri(str(_need(cfg, "logger.tracking_uri")))


def _objective_keys(cfg: DictConfig, key: str) -> None:
    """Objective-specific keys (budget, temperatures, multi weights, held-out classes) of ``key``."""
    ocfg = _need(cfg, key)
    for name in ("max_epochs", "batch_size", "max_batches"):
        if ocfg.get(name) is not None:
            _number(cfg, f"{key}.{name}", lo=1, integer=True)
    for name in ("temperature", "lr", "lr_g"):
        if ocfg.get(name) is not None:
            _number(cfg, f"{key}.{name}", lo=0, lo_open=True)
    if "heldout_classes" in ocfg:
        names = [str(n) for n in _need(cfg, f"{key}.class_names")]
        for n in ocfg.heldout_classes:
            if str(n) not in names:
                raise ConfigError(
                    f"{key}.heldout_classes: '{n}' is not a class; allowed: {', '.join(names)}"
                )
        if len(set(map(str, ocfg.heldout_classes))) >= len(names) - 1:
            raise ConfigError(
                f"{key}.heldout_classes must leave at least 2 classes to pre-train on"
            )
    if "weights" in ocfg:
        weights = ocfg.weights
        parts = [str(k) for k in ocfg.get("components") or {} if str(k) != "multi"]
        if not isinstance(weights, DictConfig) or len(weights) == 0:
            raise ConfigError(
                f"{key}.weights must map objective names to weights; allowed: {', '.join(parts)}"
            )
        for name in weights:
            if str(name) not in parts:
                raise ConfigError(
                    f"{key}.weights.{name}: unknown objective; allowed: {', '.join(parts)}"
                )
            _number(cfg, f"{key}.weights.{name}", lo=0)
        if all(float(w) == 0.0 for w in weights.values()):
            raise ConfigError(f"{key}.weights are all zero; at least one must be > 0")
        for name in weights:
            _objective_keys(cfg, f"{key}.components.{name}")


def _validate_text(cfg: DictConfig, stage: str | None, objectives: Sequence[str]) -> None:
    """The text route: data keys, backbones named by objectives, their sizes, freezing depth."""
    if stage in (None, "data"):
        from transferlab.data.text import resolve_text_cfg

        resolve_text_cfg(OmegaConf.to_container(_need(cfg, "data.text"), resolve=True))
    models = _need(cfg, "model.text")
    used: list[str] = []
    for o in objectives:
        key = str(_need(cfg, f"objectives.{o}").get("model", ""))
        if key not in models:
            raise ConfigError(
                f"objectives.{o}.model='{key}' names no text backbone; allowed: "
                f"{', '.join(map(str, models))} (model.text)"
            )
        used.append(key)
    used += [str(k) for k, v in models.items() if isinstance(v, DictConfig) and v.get("pretrained")]
    seq_len = _number(cfg, "data.text.seq_len", lo=4, integer=True)
    depths = {}
    for key in dict.fromkeys(used):
        node = f"model.text.{key}"
        if "_target_" not in _need(cfg, node):
            raise ConfigError(f"{node} has no _target_ (a class under transferlab.models)")
        if "max_len" in models[key] and _number(cfg, f"{node}.max_len", integer=True) < seq_len:
            raise ConfigError(f"{node}.max_len must be >= data.text.seq_len={seq_len}")
        if "vocab_size" in models[key]:
            v = _need(cfg, "data.text.vocab_size")
            if _number(cfg, f"{node}.vocab_size", integer=True) < v:
                raise ConfigError(f"{node}.vocab_size must be >= data.text.vocab_size={v}")
        if "n_layers" in models[key]:
            layers = _number(cfg, f"{node}.n_layers", lo=1, integer=True)
            d, h = _number(cfg, f"{node}.d_model", lo=1, integer=True), models[key].n_heads
            if not isinstance(h, int) or h < 1 or d % h:
                raise ConfigError(f"{node}.n_heads={h} must divide d_model={d}")
            depths[key] = layers + 1  # blocks = [embeddings, layer 1..n]
        elif str(models[key]._target_).endswith("minilm.MiniLM"):
            depths[key] = 7  # embeddings + 6 layers
    if stage in (None, "finetune", "evaluate") and depths:
        k = _number(cfg, "finetune.freeze_depth", lo=0, integer=True)
        depth = min(depths.values())
        if k > depth:
            raise ConfigError(
                f"finetune.freeze_depth={k} is beyond the text backbones' depth {depth} "
                f"(embeddings + layers); allowed 0..{depth}"
            )


def curve_blocks(cfg: DictConfig, route: str) -> int | None:
    """Blocks of the backbone the curves fine-tune (the route's primary objective's), if known.

    Image: one per CNN stage (``len(model.image.widths)``). Text: ``[embeddings, layer 1..n]``,
    i.e. ``n_layers + 1`` of the primary objective's architecture (``objectives.<o>.model``).
    """
    if route == "text":
        key = OmegaConf.select(cfg, f"objectives.{primary_objective(cfg, route)}.model")
        layers = OmegaConf.select(cfg, f"model.text.{key}.n_layers", default=None)
        return int(layers) + 1 if isinstance(layers, int) else None
    widths = OmegaConf.select(cfg, f"model.{route}.widths", default=None)
    return len(widths) if widths is not None else None


def _validate_curves(cfg: DictConfig, route: str) -> None:
    """``curves.<route>``: depths within the backbone, shots within the few-shot set, targets."""
    key = f"curves.{route}"
    ccfg = _need(cfg, key)
    if not isinstance(ccfg, DictConfig):
        raise ConfigError(f"{key} must be a mapping with freeze_depths, shots, max_epochs, targets")
    n_blocks = curve_blocks(cfg, route)
    for name in ("freeze_depths", "shots"):
        values = _need(cfg, f"{key}.{name}")
        if not isinstance(values, ListConfig) or len(values) == 0:
            raise ConfigError(f"{key}.{name} must be a non-empty list")
    for k in ccfg.freeze_depths:
        if (
            not isinstance(k, int)
            or isinstance(k, bool)
            or k < 0
            or (n_blocks is not None and k > n_blocks)
        ):
            raise ConfigError(f"{key}.freeze_depths contains {k!r}; allowed 0..{n_blocks}")
    shots = int(cfg.data[route].get("shots_per_class", 0))
    for n in ccfg.shots:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n > shots:
            raise ConfigError(
                f"{key}.shots contains {n!r}; allowed 1..{shots} (data.{route}.shots_per_class)"
            )
    _number(cfg, f"{key}.max_epochs", lo=1, integer=True)
    known = [str(t) for t in cfg.data[route].get("targets") or []]
    for t in ccfg.get("targets") or []:
        if str(t) not in known:
            raise ConfigError(
                f"{key}.targets: unknown target '{t}'; allowed: {', '.join(known)} (or null: all)"
            )


def _check_writable(key: str, path: str) -> None:
    """The nearest existing ancestor of an output directory must be a writable directory."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        # A real probe: os.access says yes to root even where the kernel refuses (e.g. /proc).
        fd, probe = tempfile.mkstemp(prefix=".transferlab-probe-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError:
        raise ConfigError(
            f"{key}={path} is not writable (nearest existing parent '{p}'); choose a writable directory"
        ) from None


STRATEGIES = ("full", "linear_probe", "lp_ft", "gradual")
AUX_TASKS = {"image": ("rotation",), "text": ("shuffle",)}


def _validate_finetune(cfg: DictConfig, label: str) -> None:
    """The fine-tuning remedies: strategy, regulariser, task weights, alignment."""

    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{label}.{key}{msg}")

    f = cfg.finetune
    if str(f.get("strategy", "full")) not in STRATEGIES:
        raise bad(
            "strategy", f"={f.strategy!r} is not allowed; choose one of: {', '.join(STRATEGIES)}"
        )
    for key in ("lp_epochs", "unfreeze_every"):
        if key in f and (not isinstance(f[key], int) or f[key] < 1):
            raise bad(key, f"={f[key]!r} must be an integer >= 1")
    ld = f.get("layerwise_decay")
    if ld is not None and (
        isinstance(ld, bool) or not isinstance(ld, int | float) or not 0 < ld <= 1
    ):
        raise bad("layerwise_decay", f"={ld!r} must be in (0, 1] or null")
    reg = f.get("regularizer") or {}
    if str(reg.get("name", "none")) not in ("none", "l2", "l2_sp"):
        raise bad(
            "regularizer.name", f"={reg.name!r} is not allowed; choose one of: none, l2, l2_sp"
        )
    for key in ("coef", "alpha", "beta"):
        v = reg.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise bad(f"regularizer.{key}", f"={v!r} must be a number >= 0")
    mt = f.get("multitask") or {}
    tasks = [str(t) for t in mt.get("tasks", [])]
    allowed = AUX_TASKS.get(str(cfg.route), ())
    for t in tasks:
        if t not in allowed:
            raise bad(
                "multitask.tasks",
                f": unknown task '{t}' for route {cfg.route}; allowed: {', '.join(allowed)}",
            )
    if str(mt.get("weighting", "fixed")) not in ("fixed", "uncertainty", "gradnorm"):
        raise bad(
            "multitask.weighting",
            f"={mt.weighting!r} is not allowed; choose one of: fixed, uncertainty, gradnorm",
        )
    weights = dict(mt.get("weights") or {})
    if tasks and str(mt.get("weighting", "fixed")) == "fixed":
        expected = ["main", *tasks]
        if sorted(weights) != sorted(expected) and set(weights) != {"main"}:
            raise bad(
                "multitask.weights",
                f" has keys {sorted(weights)}; expected one weight per task: {expected}",
            )
        values = [weights.get(k, 1.0) for k in expected]
        if any(isinstance(v, bool) or not isinstance(v, int | float) or v < 0 for v in values):
            raise bad("multitask.weights", f"={weights} must all be numbers >= 0")
        if sum(values) == 0:
            raise bad("multitask.weights", f"={weights} are all zero; at least one must be > 0")
    al = f.get("alignment") or {}
    if str(al.get("kind", "none")) not in ("none", "mmd", "gaussian_kl"):
        raise bad(
            "alignment.kind", f"={al.kind!r} is not allowed; choose one of: none, mmd, gaussian_kl"
        )
    w = al.get("weight", 0.0)
    if isinstance(w, bool) or not isinstance(w, int | float) or w < 0:
        raise bad("alignment.weight", f"={w!r} must be a number >= 0")
    for a in f.get("wise_alphas") or []:
        if isinstance(a, bool) or not isinstance(a, int | float) or not 0 <= a <= 1:
            raise bad("wise_alphas", f" contains {a!r}; every alpha must be in [0, 1]")
