"""From Hydra's override grammar to Optuna distributions, and back to overrides.

==============================================  =============================================
override                                        Optuna distribution
==============================================  =============================================
``k=a,b,c`` / ``k=choice(a,b,c)`` / ``glob(*)``  ``CategoricalDistribution([a, b, c])``
``k=range(0,5)``                                ``IntDistribution(0, 4)`` (stop excluded, as in
                                                Hydra's basic sweeper: 0,1,2,3,4)
``k=range(2,10,2)``                             ``IntDistribution(2, 8, step=2)``
``k=range(0.1,0.5,0.1)``                        ``FloatDistribution(0.1, 0.4, step=0.1)``
``k=tag(log, range(1,65))``                     ``IntDistribution(1, 64, log=True)``
``k=interval(0,1)``                             ``FloatDistribution(0.0, 1.0)``
``k=tag(log, interval(1e-5,1e-1))``             ``FloatDistribution(1e-5, 0.1, log=True)``
``k=tag(int, interval(1,8))``                   ``IntDistribution(1, 8)`` (``log`` combines)
``k=int(interval(1,8))``                        ``IntDistribution(1, 8)`` (Hydra's cast; also
                                                ``tag(log, int(interval(1,64)))``)
``k=float(range(1,5))``                         ``FloatDistribution(1.0, 4.0, step=1.0)``
``k=str(choice(1,2))`` / ``bool(choice(0,1))``  ``CategoricalDistribution(['1', '2'])`` /
                                                ``([False, True])``
``k=shuffle(a,b)`` / ``shuffle(range(1,4))``    ``CategoricalDistribution`` of the values (in
                                                the declared order)
``~k`` / ``~k=v``                               not swept: the key is deleted in every trial
``k=simplex(a,b,c)``                            weights ``k.a, k.b, k.c`` ≥ 0 summing to 1
                                                (see :class:`Simplex`)
``k=v``                                         not swept: passed unchanged to every trial
==============================================  =============================================

Only Hydra's parser reads the strings, so quoting, ``+``/``++`` prefixes, ``group@package`` keys
and config-group choices (``model/image=cnn,vit``) behave exactly as with ``-m`` and the basic
sweeper.
"""

from __future__ import annotations

import decimal
import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    Quote,
    QuotedString,
    RangeSweep,
    Sweep,
)
from hydra.errors import CompactHydraException, HydraException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

KNOWN_TAGS = frozenset({"log", "int"})
PRIMITIVES = (str, int, float, bool, type(None))


class SearchSpaceError(CompactHydraException):
    """A sweep override that cannot become an Optuna distribution."""


# --------------------------------------------------------------------------- simplex


@dataclass
class SimplexSweep(Sweep):
    """Parsed ``simplex(a, b, c)``: non-negative weights for the named items, summing to one."""

    items: list[str] = field(default_factory=list)


def _simplex(*items: str) -> SimplexSweep:
    if len(items) < 2:
        raise ValueError("simplex() needs at least two items")
    if len(set(items)) != len(items):
        raise ValueError(f"simplex() items must be distinct, got {list(items)}")
    return SimplexSweep(items=list(items))


# Hydra type-checks function arguments against the signature's annotations, which
# ``from __future__ import annotations`` turns into strings: give it the real type.
_simplex.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("items", inspect.Parameter.VAR_POSITIONAL, annotation=str)]
)


def stick_breaking(u: Sequence[float]) -> list[float]:
    """Map ``K-1`` numbers in [0, 1] to ``K`` weights on the probability simplex.

    ``v_i = 1 − (1 − u_i)^{1/(K−i)}`` is the inverse CDF of ``Beta(1, K−i)``; breaking a unit stick
    with ``w_i = v_i · (1 − Σ_{j<i} w_j)`` and giving the rest to ``w_K`` turns independent
    uniform ``u_i`` into the flat ``Dirichlet(1, …, 1)`` on the simplex (the stick-breaking
    construction of the Dirichlet). The map is a bijection of the open cube onto the open
    simplex, so every weight vector is reachable by exactly one point and uniform sampling of
    ``u`` covers the simplex evenly.
    """
    k = len(u) + 1
    weights: list[float] = []
    rest = 1.0
    for i, ui in enumerate(u, start=1):
        if not 0.0 <= ui <= 1.0:
            raise ValueError(f"stick-breaking inputs must lie in [0, 1], got {ui}")
        v = 1.0 - (1.0 - ui) ** (1.0 / (k - i))
        w = rest * v
        weights.append(w)
        rest -= w
    weights.append(max(rest, 0.0))
    return weights


def inverse_stick_breaking(weights: Sequence[float]) -> list[float]:
    """The ``u`` that :func:`stick_breaking` maps to ``weights`` (normalised first)."""
    total = float(sum(weights))
    if len(weights) < 2 or total <= 0 or any(w < 0 for w in weights):
        raise ValueError("need at least two non-negative weights with a positive sum")
    k = len(weights)
    u: list[float] = []
    rest = 1.0
    for i, w in enumerate(weights[:-1], start=1):
        w = w / total
        v = min(w / rest, 1.0) if rest > 0 else 0.0
        u.append(1.0 - (1.0 - v) ** (k - i))
        rest -= w
    return u


# --------------------------------------------------------------------------- values → overrides


def format_value(value: Any) -> str:
    """One value as Hydra override text; strings are always quoted so '1.5' stays a string."""
    if isinstance(value, str):
        return QuotedString(text=value, quote=Quote.single).with_quotes()
    if isinstance(value, float) and not math.isfinite(value):
        raise SearchSpaceError(f"cannot pass the non-finite value {value} as an override")
    return Override._get_value_element_as_str(value)


def _convert(value: Any) -> Any:
    return Override._convert_value(value)


@dataclass
class Param:
    """One swept key and its distribution; ``texts`` maps categorical choices to override text."""

    key: str  # as written on the command line, with +/++ prefix and @package
    name: str  # the Optuna parameter name
    distribution: BaseDistribution
    texts: dict[Any, str] | None = None

    def suggest(self, trial: Any) -> Any:
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(self.name, list(d.choices))
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.name, d.low, d.high, step=d.step, log=d.log)
        assert isinstance(d, FloatDistribution)
        return trial.suggest_float(self.name, d.low, d.high, step=d.step, log=d.log)

    def override(self, value: Any) -> str:
        if self.texts is not None and value in self.texts:
            return f"{self.key}={self.texts[value]}"
        return f"{self.key}={format_value(value)}"


@dataclass
class Simplex:
    """``key=simplex(a, b, …)``: ``K-1`` Optuna parameters ``key:stick<i>`` in [0, 1]."""

    key: str
    name: str
    items: list[str]

    @property
    def param_names(self) -> list[str]:
        return [f"{self.name}:stick{i}" for i in range(len(self.items) - 1)]

    def suggest(self, trial: Any) -> list[float]:
        u = [trial.suggest_float(n, 0.0, 1.0) for n in self.param_names]
        return stick_breaking(u)

    def overrides(self, weights: Sequence[float]) -> list[str]:
        return [
            f"{self.key}.{item}={format_value(float(w))}"
            for item, w in zip(self.items, weights, strict=True)
        ]


@dataclass
class SearchSpace:
    fixed: list[str]  # non-sweep overrides, passed unchanged to every trial
    params: list[Param]
    simplexes: list[Simplex]

    def suggest(self, trial: Any) -> list[str]:
        """Sample every parameter of ``trial``; return the trial's overrides."""
        out = [p.override(p.suggest(trial)) for p in self.params]
        for s in self.simplexes:
            out.extend(s.overrides(s.suggest(trial)))
        return out

    def overrides_for(self, params: Mapping[str, Any]) -> list[str]:
        """The overrides of a finished trial, from its Optuna ``params``."""
        out = [p.override(params[p.name]) for p in self.params if p.name in params]
        for s in self.simplexes:
            if all(n in params for n in s.param_names):
                out.extend(s.overrides(stick_breaking([params[n] for n in s.param_names])))
        return out

    def distributions(self) -> dict[str, BaseDistribution]:
        out = {p.name: p.distribution for p in self.params}
        for s in self.simplexes:
            out.update({n: FloatDistribution(0.0, 1.0) for n in s.param_names})
        return out

    def grid(self) -> dict[str, list[Any]]:
        """The search space of a grid sampler: every parameter must be enumerable."""
        if self.simplexes:
            raise SearchSpaceError(
                f"the grid sampler cannot enumerate simplex '{self.simplexes[0].key}'; "
                "use tpe, random, qmc or gp"
            )
        out: dict[str, list[Any]] = {}
        for p in self.params:
            d = p.distribution
            if isinstance(d, CategoricalDistribution):
                out[p.name] = list(d.choices)
            elif isinstance(d, IntDistribution) and not d.log:
                out[p.name] = list(range(d.low, d.high + 1, d.step))
            elif isinstance(d, FloatDistribution) and d.step is not None:
                n = round((d.high - d.low) / d.step)
                out[p.name] = [
                    float(decimal.Decimal(str(d.low)) + i * decimal.Decimal(str(d.step)))
                    for i in range(n + 1)
                ]
            else:
                raise SearchSpaceError(
                    f"the grid sampler needs choice() or range() for '{p.key}', got {d}"
                )
        return out


# --------------------------------------------------------------------------- parsing


def make_parser(config_loader: Any = None) -> OverridesParser:
    parser = OverridesParser.create(config_loader=config_loader)
    parser.functions.register("simplex", _simplex)
    return parser


def _float_range_last(start: float, stop: float, step: float) -> tuple[float, float, float]:
    """First value, last value and step of a float range (its values: :func:`_range_values`)."""
    values = _range_values(start, stop, step)
    if not values:
        raise SearchSpaceError(f"range({start}, {stop}, {step}) is empty")
    return values[0], values[-1], float(decimal.Decimal(str(step)))


def _range_values(start: float, stop: float, step: float) -> list[Any]:
    """The values of ``range(start, stop, step)`` in order. Floats by Decimal steps, as Hydra's
    FloatRange, so range(0.1, 0.5, 0.1) ends at 0.4, not 0.5."""
    if all(isinstance(x, int) for x in (start, stop, step)):
        return list(range(int(start), int(stop), int(step)))
    d0, ds = decimal.Decimal(str(start)), decimal.Decimal(str(step))
    n = math.ceil((decimal.Decimal(str(stop)) - d0) / ds)
    return [float(d0 + i * ds) for i in range(max(n, 0))]


def distribution_for(override: Override) -> BaseDistribution | tuple[CategoricalDistribution, dict]:
    """The Optuna distribution of one sweep override (see the module docstring for the table)."""
    value = override.value()
    key = override.get_key_element()
    tags = set(getattr(value, "tags", set()) or set())
    unknown = tags - KNOWN_TAGS
    if unknown:
        raise SearchSpaceError(
            f"{key}: unknown tag(s) {sorted(unknown)}; this sweeper knows: {', '.join(sorted(KNOWN_TAGS))}"
        )
    log = "log" in tags
    if override.is_choice_sweep():
        if tags:
            raise SearchSpaceError(f"{key}: tags {sorted(tags)} do not apply to a choice")
        choices: list[Any] = []
        texts: dict[Any, str] = {}
        assert isinstance(value, ChoiceSweep)
        # the declared order, shuffle() or not: the sampler, not the order, decides (and a
        # shuffled order would change the study's distributions from one run to the next)
        for element in value.list:
            element = _convert(element)
            if isinstance(element, PRIMITIVES):
                choices.append(element)
            else:
                # lists and dicts are not valid Optuna categories: keep their override text
                text = Override._get_value_element_as_str(element)
                choices.append(text)
                texts[text] = text
        if len(set(map(repr, choices))) != len(choices):
            raise SearchSpaceError(f"{key}: choices must be distinct, got {choices}")
        return CategoricalDistribution(choices), texts
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        start, stop, step = value.start, value.stop, value.step
        if step is None or step == 0:
            raise SearchSpaceError(f"{key}: range() needs a non-zero step")
        if value.shuffle:  # shuffle(range()): the range's values as categories (as the plugin)
            if tags:
                raise SearchSpaceError(f"{key}: tags {sorted(tags)} do not apply to shuffle()")
            return CategoricalDistribution(_range_values(start, stop, step)), {}
        if all(isinstance(x, int) for x in (start, stop, step)):
            values = range(start, stop, step)
            if len(values) == 0:
                raise SearchSpaceError(f"{key}: range({start}, {stop}, {step}) is empty")
            low, high = min(values[0], values[-1]), max(values[0], values[-1])
            if log and abs(step) != 1:
                raise SearchSpaceError(f"{key}: tag(log, range()) needs step 1 (Optuna rule)")
            return IntDistribution(low, high, step=abs(step), log=log)
        if log:
            raise SearchSpaceError(f"{key}: a float range with a step cannot be log-scaled")
        if step < 0:
            first, last, ds = _float_range_last(-start, -stop, -step)
            return FloatDistribution(-last, -first, step=ds)
        first, last, ds = _float_range_last(start, stop, step)
        return FloatDistribution(first, last, step=ds)
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        lo, hi = float(value.start), float(value.end)
        if not lo < hi:
            raise SearchSpaceError(f"{key}: interval({lo}, {hi}) needs start < end")
        if log and lo <= 0:
            raise SearchSpaceError(f"{key}: tag(log, interval()) needs a positive start, got {lo}")
        # int(interval(a, b)) (Hydra's cast, also under tag(log, ...)) leaves integer bounds
        cast_int = isinstance(value.start, int) and isinstance(value.end, int)
        if "int" in tags or cast_int:
            if lo != int(lo) or hi != int(hi):
                raise SearchSpaceError(f"{key}: tag(int, interval()) needs integer bounds")
            return IntDistribution(int(lo), int(hi), log=log)
        return FloatDistribution(lo, hi, log=log)
    raise SearchSpaceError(f"{key}: unsupported sweep {override.value_type}")


def _param_value_text(value: Any) -> str:
    # values of hydra.sweeper.params may be YAML scalars/lists rather than grammar strings
    return value if isinstance(value, str) else Override._get_value_element_as_str(value)


def parse_search_space(
    params: Mapping[str, Any] | None,
    arguments: Iterable[str] = (),
    config_loader: Any = None,
) -> SearchSpace:
    """Merge ``hydra.sweeper.params`` with the command line (which wins for the same key)."""
    parser = make_parser(config_loader)
    lines = [f"{k}={_param_value_text(v)}" for k, v in (params or {}).items()]
    lines.extend(arguments)
    try:
        overrides = parser.parse_overrides(lines)
    except HydraException as exc:
        lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()]
        raise SearchSpaceError(": ".join(lines[:2])) from None
    by_key: dict[str, Override] = {}
    for ov in overrides:
        # '+k' and 'k' address the same key: the later one (command line) replaces the earlier
        ident = ov.key_or_group + (f"@{ov.package}" if ov.package is not None else "")
        by_key.pop(ident, None)
        by_key[ident] = ov
    fixed: list[str] = []
    space: list[Param] = []
    simplexes: list[Simplex] = []
    for ident, ov in by_key.items():
        key = ov.get_key_element()
        if ov.is_hydra_override():
            raise SearchSpaceError(f"{key}: hydra.* keys cannot be swept or set per trial here")
        if isinstance(ov.value(), SimplexSweep):
            if ov.package is not None or "/" in ov.key_or_group:
                raise SearchSpaceError(f"{key}: simplex() applies to config values, not groups")
            simplexes.append(Simplex(key=key, name=ident, items=list(ov.value().items)))
        elif ov.is_sweep_override():
            dist = distribution_for(ov)
            if isinstance(dist, tuple):
                space.append(Param(key=key, name=ident, distribution=dist[0], texts=dist[1]))
            else:
                space.append(Param(key=key, name=ident, distribution=dist))
        elif ov.is_delete():  # ~key, ~key=value (the key element keeps its ~): every trial
            value = ov.value()
            fixed.append(key + ("" if value is None else f"={ov.get_value_element_as_str()}"))
        else:
            fixed.append(f"{key}={ov.get_value_element_as_str()}")
    return SearchSpace(fixed=fixed, params=space, simplexes=simplexes)


def parse_value(override_text: str) -> tuple[Override, Any]:
    """Parse one ``key=value`` override into (override, python value) — used by the exporter."""
    ov = make_parser().parse_override(override_text)
    return ov, ov.value()
