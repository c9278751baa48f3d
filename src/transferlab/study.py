"""The study's values: where a fine-tuned model starts (:class:`Init`), what a variant is
(:class:`Variant`), one fine-tuning run (:class:`Fit`) and what it returns (:class:`FitResult`).

A variant is declared, never parsed from its name. The default study of a route
(:func:`variants`) is:

- every pre-trained objective of ``pretrain.<route>.objectives`` that ``finetune.fine_tuned``
  names (null: all), fine-tuned end to end (``Init("pretrained", o)``);
- with ``finetune.dapt_epochs > 0``, ``<o>_dapt``: such an objective continued on the target's
  unlabelled inputs, then fine-tuned (``Init("adapted", o)``), for every objective that reads no
  labels (:meth:`~transferlab.routes.base.Route.can_adapt`);
- every hub model of the route (a backbone that brings its own weights, e.g. MiniLM) that
  ``finetune.fine_tuned`` names, fine-tuned end to end (``Init("hub", key)``);
- with ``finetune.probe_objectives``, ``<o>/linear_probe`` for every objective and hub model (its
  gain is measured against ``floor/random_init`` of its architecture: for a hub model, its own
  architecture at random init, ``floor/random_init_<key>``);
- every entry of ``finetune.variants`` (knob overrides such as a linear probe or LP-FT), applied to
  ``init`` (default: the route's primary objective) and reported as ``<init>/<name>``; an entry
  whose ``init`` is another route's objective runs on that route only;
- the scratch controls, one per architecture an SGD arm uses: ``scratch`` for the primary
  objective's architecture, ``scratch_<arch>`` for any other. Each variant's gain is measured
  against the control of its own architecture (:attr:`Variant.control`);
- the probe floors ``floor/random_init`` (``_<arch>`` for another architecture a probe uses) and
  ``floor/raw_input`` (:mod:`transferlab.models.raw`).

Names stay those of the reports (``mae``, ``mae/lp_ft``, ``mlm_dapt``, ``scratch_decoder``) so that
outputs keep their keys; nothing ever takes a name apart to learn what a variant is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from omegaconf import DictConfig, OmegaConf

from transferlab.errors import ConfigError

InitKind = Literal["pretrained", "adapted", "hub", "scratch", "raw"]
DAPT_SUFFIX = "_dapt"


@dataclass(frozen=True)
class Init:
    """Where a variant's backbone starts: a pre-trained objective's weights, those weights adapted
    to the target (DAPT), a hub model's own weights, or a random initialisation of ``arch``."""

    kind: InitKind
    arch: str  #: the architecture key (``model.<route>.<arch>``; ``cnn`` on the image route)
    objective: str | None = None  #: the pre-trained objective (pretrained, adapted)

    @property
    def pretrained(self) -> bool:
        return self.kind not in ("scratch", "raw")


@dataclass(frozen=True)
class Variant:
    """One arm of the study: a name (the report key), where it starts, its knob overrides."""

    name: str
    init: Init
    overrides: Mapping[str, Any] = field(default_factory=dict)  #: finetune.* knobs it changes
    control: str | None = None  #: the arm its gain is measured against (None: a control or a floor)
    floor: bool = False  #: a probe floor (random-init or raw-input backbone), no gain of its own

    @property
    def is_control(self) -> bool:
        return self.control is None and not self.floor


@dataclass(frozen=True)
class Fit:
    """One fine-tuning run: everything that decides its result, nothing about where it runs."""

    route: str
    target: str
    variant: Variant
    seed: int
    hparams: Mapping[str, Any]  #: the finetune.* knobs after the variant's and the fit's overrides
    shots: int | None = (
        None  #: train on the first ``shots`` per class (None: the whole train split)
    )
    adapted: str | None = None  #: a DAPT backbone saved by the stage (``Init("adapted")``)

    @property
    def name(self) -> str:
        return f"{self.route}:{self.target}:{self.variant.name}"


@dataclass
class FitResult:
    """What a fit returns: its epoch history and, unless it failed, the trained weights."""

    fit: Fit
    history: list[dict[str, float]]
    state: dict[str, Any] | None = None  #: the classifier's state dict
    test_acc: float | None = None  #: filled in when the caller asked for it (curves)
    error: BaseException | None = None
    log: Any = None  #: what the fit logged (replayed into the fit's MLflow run)


class RouteModels(Protocol):
    """What :func:`variants` needs to know of a route."""

    name: str

    def objectives(self) -> list[str]: ...

    def primary(self) -> str: ...

    def arch_key(self, objective: str) -> str: ...

    def hub_keys(self) -> list[str]: ...

    def can_adapt(self, objective: str) -> bool: ...


def plain(node: Any) -> Any:
    """A config node as plain Python containers (resolved)."""
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def merge_knobs(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in (nested mappings merged key by key, like OmegaConf)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_knobs(out[key], value)
        else:
            out[key] = value
    return out


def variants(cfg: DictConfig, route: RouteModels) -> list[Variant]:
    """The route's variants, in report order (see the module docstring)."""
    objectives = route.objectives()
    primary = route.primary()
    primary_arch = route.arch_key(primary)

    def control(arch: str) -> str:
        return "scratch" if arch == primary_arch else f"scratch_{arch}"

    arms: list[Variant] = []
    tuned = fine_tuned(cfg, objectives)
    for o in tuned:
        arch = route.arch_key(o)
        arms.append(Variant(o, Init("pretrained", arch, o), control=control(arch)))
    for o in adapted(cfg, route):
        arch = route.arch_key(o)
        arms.append(Variant(o + DAPT_SUFFIX, Init("adapted", arch, o), control=control(arch)))
    hubs = route.hub_keys()
    for key in fine_tuned(cfg, hubs):  # hub models fine-tuned end to end
        arms.append(Variant(key, Init("hub", key), control=control(key)))
    declared = dict(plain(cfg.finetune.get("variants")) or {})
    if cfg.finetune.get("probe_objectives"):  # <o>/linear_probe for every objective
        probe_name = next((n for n, node in declared.items() if _probes_node(node)), "linear_probe")
        probes = [(f"{o}/{probe_name}", {**PROBE, "init": o}) for o in [*objectives, *hubs]]
        named = {f"{(node or {}).get('init') or primary}/{n}" for n, node in declared.items()}
        extra = [(key, node) for key, node in probes if key not in named]
    else:
        extra = []
    for name, node in [*declared.items(), *extra]:
        overrides = dict(node or {})
        init = str(overrides.pop("init", None) or primary)
        full = name if "/" in name else f"{init}/{name}"
        if init in hubs:  # a hub model's own weights
            arms.append(Variant(full, Init("hub", init), overrides, control=control(init)))
            continue
        if init not in objectives:  # an objective of another route: the variant runs there
            continue
        arch = route.arch_key(init)
        arms.append(Variant(full, Init("pretrained", arch, init), overrides, control=control(arch)))
    controls = dict.fromkeys(
        [control(primary_arch), *(str(v.control) for v in arms if not _probes(v))]
    )
    arms += [Variant(c, Init("scratch", _arch_of(c, primary_arch))) for c in controls]
    # The probe floors: the same architecture at random init, and the raw input, probed alike.
    floors = dict.fromkeys(
        [
            FLOOR,
            *(f"{FLOOR}_{v.init.arch}" for v in arms if _probes(v) and v.init.arch != primary_arch),
        ]
    )
    arms += [
        Variant(
            f,
            Init("scratch", primary_arch if f == FLOOR else f.removeprefix(f"{FLOOR}_")),
            PROBE,
            floor=True,
        )
        for f in floors
    ]
    arms.append(Variant(RAW_FLOOR, Init("raw", "raw"), PROBE, floor=True))
    # A probe's gain is measured against the random-init probe of its architecture.
    return [
        replace(v, control=FLOOR if v.init.arch == primary_arch else f"{FLOOR}_{v.init.arch}")
        if _probes(v) and not v.floor
        else v
        for v in arms
    ]


#: The probe floors' report names, and the knob overrides of a probe.
FLOOR = "floor/random_init"
RAW_FLOOR = "floor/raw_input"
PROBE: Mapping[str, Any] = {"strategy": "linear_probe"}


def _probes(v: Variant) -> bool:
    return _probes_node(v.overrides)


def _probes_node(node: Mapping[str, Any] | None) -> bool:
    return (node or {}).get("strategy") == "linear_probe"


def fine_tuned(cfg: DictConfig, objectives: Sequence[str]) -> list[str]:
    """The objectives (or hub models) of ``objectives`` that ``finetune.fine_tuned`` fine-tunes
    (null: all)."""
    names = cfg.finetune.get("fine_tuned")
    return list(objectives) if names is None else [o for o in objectives if o in map(str, names)]


def adapted(cfg: DictConfig, route: RouteModels) -> list[str]:
    """The objectives whose DAPT twin ``<o>_dapt`` the study runs (``finetune.dapt_epochs > 0``:
    the fine-tuned ones that read no labels)."""
    if int(cfg.finetune.get("dapt_epochs") or 0) <= 0:
        return []
    return [o for o in fine_tuned(cfg, route.objectives()) if route.can_adapt(o)]


def _arch_of(control: str, primary_arch: str) -> str:
    return primary_arch if control == "scratch" else control.removeprefix("scratch_")


def target_arms(cfg: DictConfig, arms: Sequence[Variant], member: bool) -> list[Variant]:
    """The arms fitted on one target: all of ``arms``, or on a member of a graded shift family
    (``member``) those of ``finetune.family_arms`` (null: the primary objective and its scratch
    control, what the shift-vs-gain analysis reads)."""
    if not member:
        return list(arms)
    names = cfg.finetune.get("family_arms")
    named = by_name(arms)
    primary = named[str(OmegaConf.select(cfg, f"pretrain.{cfg.route}.primary"))]
    needed = [primary.name, str(primary.control)]
    if names is None:
        names = needed
    key = "finetune.family_arms"
    for n in [str(n) for n in names]:
        if n not in named:
            raise ConfigError(f"{key}: unknown arm '{n}'; allowed: {', '.join(named)}")
    missing = [n for n in needed if n not in [str(x) for x in names]]
    if missing:
        raise ConfigError(
            f"{key}={[str(n) for n in names]} leaves out '{missing[0]}' (the gain along the "
            "shift axis is the primary's over its scratch control); add it, or null"
        )
    return [v for v in arms if v.name in {str(n) for n in names}]


def by_name(arms: Sequence[Variant]) -> dict[str, Variant]:
    return {v.name: v for v in arms}


def fit_for(
    cfg: DictConfig,
    target: str,
    variant: Variant,
    *,
    overrides: Mapping[str, Any] | None = None,
    shots: int | None = None,
    adapted: str | None = None,
    seed: int | None = None,
) -> Fit:
    """The fit of ``variant`` on ``target`` with the config's knobs, the variant's overrides and
    then ``overrides`` (e.g. a curve point's freezing depth or budget)."""
    route = str(cfg.route)
    knobs = {k: v for k, v in plain(cfg.finetune).items() if k != "variants"}
    knobs = merge_knobs(merge_knobs(knobs, variant.overrides), overrides or {})
    if isinstance(knobs["max_steps"], Mapping):  # the route's budget (a fit may set a number)
        knobs["max_steps"] = int(knobs["max_steps"][route])
    return Fit(
        route=route,
        target=target,
        variant=variant,
        seed=int(Protocol.from_cfg(cfg).seeds[0] if seed is None else seed),
        hparams=knobs,
        shots=int(cfg.data[route].shots_per_class) if shots is None else shots,
        adapted=adapted,
    )


@dataclass(frozen=True)
class Protocol:
    """How a study compares arms (``study.*``): every arm fits each ``lr_grid`` rate on the first
    ``select_seeds`` seeds, keeps the rate with the best seed-mean val accuracy, then fits the
    remaining seeds at that rate; a probe (no learning rate) fits every seed once."""

    seeds: tuple[int, ...]
    lr_grid: tuple[float, ...]
    select_seeds: int
    confidence: float
    fail_margin: float
    fit_threshold: float

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Protocol:
        st = cfg.study
        return cls(
            seeds=tuple(int(s) for s in st.seeds),
            lr_grid=tuple(float(x) for x in st.lr_grid),
            select_seeds=min(int(st.select_seeds), len(st.seeds)),
            confidence=float(st.confidence),
            fail_margin=float(st.fail_margin),
            fit_threshold=float(st.fit_threshold),
        )

    @property
    def selecting(self) -> tuple[int, ...]:
        return self.seeds[: self.select_seeds]

    @property
    def held(self) -> tuple[int, ...]:
        return self.seeds[self.select_seeds :]


def grid_fits(fit: Fit, protocol: Protocol) -> list[Fit]:
    """The selection fits of ``fit``'s arm: each rate × each selecting seed (a probe: each seed)."""
    if fit.hparams.get("strategy") == "linear_probe":
        return [replace(fit, seed=s) for s in protocol.seeds]
    return [
        replace(fit, seed=s, hparams={**fit.hparams, "lr": lr})
        for lr in protocol.lr_grid
        for s in protocol.selecting
    ]


def final_fits(fit: Fit, protocol: Protocol, lr: float | None) -> list[Fit]:
    """The remaining seeds of ``fit``'s arm at its selected rate (none for a probe)."""
    if lr is None:
        return []
    return [replace(fit, seed=s, hparams={**fit.hparams, "lr": lr}) for s in protocol.held]
