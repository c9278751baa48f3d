"""One source of truth for configuration: ``conf/`` composed by Hydra, snapshotted to ``params.yaml``.

The knobs themselves (types, defaults, allowed values, bounds, docs) are the schema,
:mod:`transferlab.schema`; ``conf/`` holds what differs from it. DVC stages read the snapshot
(``params.yaml``, which ``dvc exp run -S`` recomposes from ``conf/``); Hydra multiruns compose
``conf/`` directly. Both paths go through :func:`validate` before anything heavy is imported, so a
bad value costs milliseconds and one clear line, not a crashed training run: first every key is
checked against the schema, then the rules that tie keys together (a freezing depth within the
backbone's depth, curve shots within the few-shot set, objectives naming backbones, ...).
"""

from __future__ import annotations

import os
import tempfile
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from transferlab import schema
from transferlab.errors import ConfigError
from transferlab.schema import (  # noqa: F401  (re-exported: the allowed values live in the schema)
    AUX_TASKS,
    OPTIMIZERS,
    ROUTES,
    SCHEDULES,
    STAGES,
    STRATEGIES,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def conf_dir() -> Path:
    """``./conf`` when run from a checkout (or a copy of one), else the package's own checkout."""
    here = Path.cwd() / "conf"
    return here if (here / "config.yaml").exists() else PROJECT_ROOT / "conf"


def _first_line(exc: BaseException) -> str:
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        reason = str(cause).strip().splitlines()[0]
        if reason not in line:
            line = f"{line} ({reason})"
    return line


def compose(overrides: Sequence[str] = (), config_dir: Path | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` exactly as DVC's Hydra integration does (resolved).

    Returns a plain config (no schema types attached), as a stage reads it from ``params.yaml``."""
    # lazy: hydra costs ~0.3 s of import; stages and `transferlab validate` read params.yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    schema.register()  # also done by hydra_plugins/transferlab_schema.py during plugin discovery
    try:
        with initialize_config_dir(str((config_dir or conf_dir()).resolve()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except HydraException as exc:
        raise ConfigError(_first_line(exc)) from None
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def params_yaml(overrides: Sequence[str] = ()) -> str:
    return OmegaConf.to_yaml(compose(overrides))


def _suggest(key: str, cfg: DictConfig) -> str:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, DictConfig):
        return schema.suggest(parent, leaf, [str(k) for k in node])
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


def _choice(cfg: DictConfig, key: str, allowed: Sequence[str]) -> str:
    value = _need(cfg, key)
    if value is None:
        raise ConfigError(f"{key} is not set; choose one of: {', '.join(allowed)}")
    if str(value) not in allowed:
        raise ConfigError(
            f"{key}={str(value)!r} is not allowed; choose one of: {', '.join(allowed)}"
        )
    return str(value)


def primary_key(cfg: DictConfig, route: str) -> str:
    """Where a route's primary objective is set: ``pretrain.<route>.primary``."""
    return f"pretrain.{route}.primary"


def primary_objective(cfg: DictConfig, route: str) -> str:
    """The objective whose model is a route's ``pretrained`` variant in the reports."""
    return str(OmegaConf.select(cfg, primary_key(cfg, route)))


def _plain_copy(cfg: DictConfig) -> DictConfig:
    """A resolved copy without schema types (a Hydra app's config is typed by the schema)."""
    try:
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config does not resolve: {str(exc).splitlines()[0]}") from None


def validate(cfg: DictConfig, stage: str | None = None) -> None:
    """Check the config against the schema, then the cross-key rules of ``stage`` (None: all).

    Raises :class:`ConfigError` naming the first bad key in one line."""
    if stage is not None and stage not in STAGES:
        raise ConfigError(f"unknown stage '{stage}'; allowed: {', '.join(STAGES)}")
    cfg = _plain_copy(cfg)
    # Types, allowed values and bounds of every key, no unknown or missing keys (schema.py).
    schema.check(cfg, schema.TransferlabConf)
    route = str(cfg.route)
    objectives = [str(o) for o in cfg.pretrain[route].objectives]
    known = [str(k) for k in cfg.objectives]
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
        if cfg.objective is None:
            raise ConfigError(
                f"objective is not set: a pretrain run trains one objective "
                f"(transferlab pretrain route={route} objective=<o>); choose one of: "
                + ", ".join(objectives)
            )
        _choice(cfg, "objective", objectives)
    elif stage != "data":
        _choice(cfg, primary_key(cfg, route), objectives)
    if stage in (None, "pretrain"):
        names = [str(cfg.objective)] if cfg.objective is not None else []
        for name in dict.fromkeys([*names, *(objectives if stage is None else [])]):
            _objective_rules(cfg, f"objectives.{name}")
    if stage in (None, "finetune", "evaluate") and route == "image":
        depth = len(cfg.model.image.widths)
        k = cfg.finetune.freeze_depth
        if k > depth:
            raise ConfigError(
                f"finetune.freeze_depth={k} is beyond the model's depth {depth}; allowed 0..{depth}"
            )
    if route == "text":
        _validate_text(cfg, stage, objectives)
    shots = int(cfg.data[route].shots_per_class)
    pool = int(cfg.data[route].pool_per_class)
    if shots > pool:
        raise ConfigError(
            f"data.{route}.shots_per_class={shots} is too large: each seed draws its shots from "
            f"a pool of data.{route}.pool_per_class={pool} per class; allowed 1..{pool}"
        )
    if stage in (None, "finetune", "evaluate", "curves"):
        n_seeds, select = len(cfg.study.seeds), int(cfg.study.select_seeds)
        if select > n_seeds:
            raise ConfigError(
                f"study.select_seeds={select} exceeds the {n_seeds} seeds of study.seeds; "
                f"allowed 1..{n_seeds}"
            )
        if len(set(cfg.study.seeds)) != n_seeds:
            raise ConfigError(
                f"study.seeds={list(cfg.study.seeds)} repeats a seed; give distinct seeds"
            )
    if stage in (None, "finetune", "evaluate", "curves"):
        tuned = cfg.finetune.get("fine_tuned")
        hubs = [  # backbones with their own weights (model.<route>.<key>.pretrained: true)
            str(k)
            for k, v in (cfg.model[route] or {}).items()
            if isinstance(v, DictConfig) and v.get("pretrained") is True
        ]
        for name in tuned or []:
            if str(name) not in known + hubs:
                raise ConfigError(
                    f"finetune.fine_tuned: unknown objective '{name}'; allowed: "
                    + ", ".join(known + hubs)
                )
        primary = str(OmegaConf.select(cfg, primary_key(cfg, route)))
        if tuned is not None and primary not in [str(t) for t in tuned]:
            raise ConfigError(
                f"finetune.fine_tuned={list(tuned)} leaves out the {route} route's primary "
                f"objective '{primary}' (its fine-tuned model is the report's `pretrained`); "
                "add it, or null: all"
            )
    if stage in (None, "finetune", "evaluate"):
        _finetune_rules(cfg, "finetune")
        _validate_variants(cfg, route, objectives)
    if stage in (None, "curves"):
        _validate_curves(cfg, route)
    if stage is not None:
        for key in ("paths.data_dir", "paths.models_dir", "paths.reports_dir"):
            _check_writable(key, str(_need(cfg, key)))
    if cfg.logger.enabled:
        check_tracking_uri(str(cfg.logger.tracking_uri))


def _objective_rules(cfg: DictConfig, key: str) -> None:
    """Cross-key rules of objective ``key``: held-out classes, multi-objective parts and weights."""
    ocfg = _need(cfg, key)
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
        if all(float(w) == 0.0 for w in weights.values()):
            raise ConfigError(f"{key}.weights are all zero; at least one must be > 0")
        for name in weights:
            part = f"{key}.components.{name}"
            if str(name) in schema.OBJECTIVE_SCHEMAS:
                schema.check(_need(cfg, part), schema.OBJECTIVE_SCHEMAS[str(name)], part)
            _objective_rules(cfg, part)


def _validate_text(cfg: DictConfig, stage: str | None, objectives: Sequence[str]) -> None:
    """The text route: data keys, backbones named by objectives, their sizes, freezing depth."""
    if stage in (None, "data"):
        # lazy: data.text pulls in torch (~2 s of import); only the text data stage's check needs it
        from transferlab.data.text import resolve_text_cfg

        resolve_text_cfg(OmegaConf.to_container(cfg.data.text, resolve=True))
    models = cfg.model.text
    used: list[str] = []
    for o in objectives:
        key = str(cfg.objectives[o].get("model", ""))
        if key not in models:
            raise ConfigError(
                f"objectives.{o}.model='{key}' names no text backbone; allowed: "
                f"{', '.join(map(str, models))} (model.text)"
            )
        used.append(key)
    used += [str(k) for k, v in models.items() if isinstance(v, DictConfig) and v.get("pretrained")]
    seq_len = cfg.data.text.seq_len
    depths = {}
    for key in dict.fromkeys(used):
        node, m = f"model.text.{key}", models[key]
        if "max_len" in m and m.max_len < seq_len:
            raise ConfigError(f"{node}.max_len must be >= data.text.seq_len={seq_len}")
        if "vocab_size" in m and m.vocab_size < cfg.data.text.vocab_size:
            raise ConfigError(
                f"{node}.vocab_size must be >= data.text.vocab_size={cfg.data.text.vocab_size}"
            )
        if "n_layers" in m:
            if m.d_model % m.n_heads:
                raise ConfigError(f"{node}.n_heads={m.n_heads} must divide d_model={m.d_model}")
            depths[key] = m.n_layers + 1  # blocks = [embeddings, layer 1..n]
        elif str(m._target_).endswith("minilm.MiniLM"):
            depths[key] = 7  # embeddings + 6 layers
    if stage in (None, "finetune", "evaluate") and depths:
        k = cfg.finetune.freeze_depth
        depth = min(depths.values())
        if k > depth:
            raise ConfigError(
                f"finetune.freeze_depth={k} is beyond the text backbones' depth {depth} "
                f"(embeddings + layers); allowed 0..{depth}"
            )


def _finetune_rules(cfg: DictConfig, label: str) -> None:
    """Cross-key rules of ``cfg.finetune``: auxiliary tasks of the route, one weight per task.

    A variant entry is shared by the routes: ``aux`` names each route's own task."""

    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{label}.{key}{msg}")

    mt = cfg.finetune.multitask
    tasks = [str(t) for t in mt.tasks]
    route = str(cfg.route)
    allowed = AUX_TASKS.get(route, ())
    for t in tasks:
        if t not in allowed:
            raise bad(
                "multitask.tasks",
                f": unknown task '{t}' for route {route}; allowed: {', '.join(allowed)}",
            )
    weights = dict(mt.weights)
    if tasks and str(mt.weighting) == "fixed":
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


def _validate_variants(cfg: DictConfig, route: str, objectives: Sequence[str]) -> None:
    """``finetune.variants.<name>``: finetune knob overrides (checked against the schema) plus
    ``init``, a pre-trained objective of some route (the variant then runs on that route only)."""
    knobs = [k for k in schema.field_names(schema.FinetuneConf) if k != "variants"]
    allowed = [*knobs, *schema.VARIANT_KEYS]
    for name, variant in cfg.finetune.variants.items():
        label = f"finetune.variants.{name}"
        if not isinstance(variant, DictConfig):
            raise ConfigError(
                f"{label} must be a mapping of finetune knobs; allowed: {', '.join(allowed)}"
            )
        unknown = [str(k) for k in variant if str(k) not in allowed]
        if unknown:
            raise ConfigError(
                f"{label}.{unknown[0]} is not a finetune knob; allowed: {', '.join(allowed)}"
            )
        if variant.get("init") is not None:
            every = [str(o) for r in cfg.pretrain.values() for o in r.objectives]
            _choice(cfg, f"{label}.init", list(dict.fromkeys(every)))
        overrides = {k: v for k, v in variant.items() if k != "init"}
        schema.check(OmegaConf.create(overrides), schema.FinetuneConf, label, partial=True)
        merged = OmegaConf.merge(cfg, {"finetune": overrides})
        _finetune_rules(merged, label)


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
    """``curves.<route>``: depths within the backbone, shots within the few-shot set, targets
    among the route's (types, bounds and non-empty lists: the schema)."""
    key = f"curves.{route}"
    ccfg = cfg.curves[route]
    n_blocks = curve_blocks(cfg, route)
    for k in ccfg.freeze_depths:
        if n_blocks is not None and k > n_blocks:
            raise ConfigError(f"{key}.freeze_depths contains {k!r}; allowed 0..{n_blocks}")
    shots = int(cfg.data[route].shots_per_class)
    for n in ccfg.shots:
        if n > shots:
            raise ConfigError(
                f"{key}.shots contains {n!r}; allowed 1..{shots} (data.{route}.shots_per_class)"
            )
    known = [str(t) for t in cfg.data[route].targets]
    for t in ccfg.targets or []:
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


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


def check_tracking_uri(uri: str) -> None:
    """Fail fast, before any training, when the tracking store cannot be reached or written."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        parent = db.parent if str(db.parent) else Path(".")
        if not parent.exists() or not os.access(parent, os.W_OK):
            raise ConfigError(
                f"logger.tracking_uri={uri}: directory '{parent}' is missing or not writable"
            )
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
        except Exception as exc:
            raise ConfigError(
                f"logger.tracking_uri={uri} is unreachable ({_one_line(exc)}); start the server or use sqlite:///mlflow.db"
            ) from None
