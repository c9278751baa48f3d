"""The study's values: where a fine-tuned model starts (:class:`Init`), what a variant is
(:class:`Variant`), one fine-tuning run (:class:`Fit`) and what it returns (:class:`FitResult`).

A variant is declared, never parsed from its name. The default study of a route
(:func:`variants`) is:

- every pre-trained objective of ``pretrain.<route>.objectives`` (``Init("pretrained", o)``);
- with ``finetune.dapt_epochs > 0``, ``<o>_dapt``: the objective continued on the target's
  unlabelled inputs, then fine-tuned (``Init("adapted", o)``), for every objective that reads no
  labels (:meth:`~transferlab.routes.base.Route.can_adapt`);
- every hub model of the route (a backbone that brings its own weights, e.g. MiniLM);
- every entry of ``finetune.variants`` (knob overrides such as a linear probe or LP-FT), applied to
  ``init`` (default: the route's primary objective) and reported as ``<init>/<name>``; an entry
  whose ``init`` is another route's objective runs on that route only;
- the scratch controls, one per architecture in use: ``scratch`` for the primary objective's
  architecture, ``scratch_<arch>`` for any other. Each variant's gain is measured against the
  control of its own architecture (:attr:`Variant.control`).

Names stay those of the reports (``mae``, ``mae/lp_ft``, ``mlm_dapt``, ``scratch_decoder``) so that
outputs keep their keys; nothing ever takes a name apart to learn what a variant is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from omegaconf import DictConfig, OmegaConf

InitKind = Literal["pretrained", "adapted", "hub", "scratch"]
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
        return self.kind != "scratch"


@dataclass(frozen=True)
class Variant:
    """One arm of the study: a name (the report key), where it starts, its knob overrides."""

    name: str
    init: Init
    overrides: Mapping[str, Any] = field(default_factory=dict)  #: finetune.* knobs it changes
    control: str | None = (
        None  #: the scratch control its gain is measured against (None: a control)
    )

    @property
    def is_control(self) -> bool:
        return self.control is None


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
    for o in objectives:
        arch = route.arch_key(o)
        arms.append(Variant(o, Init("pretrained", arch, o), control=control(arch)))
    if int(cfg.finetune.get("dapt_epochs") or 0) > 0:
        for o in filter(route.can_adapt, objectives):
            arch = route.arch_key(o)
            arms.append(Variant(o + DAPT_SUFFIX, Init("adapted", arch, o), control=control(arch)))
    for key in route.hub_keys():
        arms.append(Variant(key, Init("hub", key), control=control(key)))
    for name, node in (plain(cfg.finetune.get("variants")) or {}).items():
        overrides = dict(node or {})
        init = str(overrides.pop("init", None) or primary)
        if init not in objectives:  # an objective of another route: the variant runs there
            continue
        arch = route.arch_key(init)
        arms.append(
            Variant(
                f"{init}/{name}", Init("pretrained", arch, init), overrides, control=control(arch)
            )
        )
    controls = dict.fromkeys([control(primary_arch), *(str(v.control) for v in arms)])
    arms += [Variant(c, Init("scratch", _arch_of(c, primary_arch))) for c in controls]
    return arms


def _arch_of(control: str, primary_arch: str) -> str:
    return primary_arch if control == "scratch" else control.removeprefix("scratch_")


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
    knobs = {k: v for k, v in plain(cfg.finetune).items() if k != "variants"}
    knobs = merge_knobs(merge_knobs(knobs, variant.overrides), overrides or {})
    return Fit(
        route=str(cfg.route),
        target=target,
        variant=variant,
        seed=int(cfg.seed if seed is None else seed),
        hparams=knobs,
        shots=shots,
        adapted=adapted,
    )
