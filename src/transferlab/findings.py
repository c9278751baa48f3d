"""The "Findings" that open ``reports/summary.md``: the study's questions answered from its numbers.

Each finding is built from the reports alone (``evaluate.json``, ``shift.json``, ``curves.json``
per route) and carries the numbers it rests on. One rule decides every comparison: two arms are
compared by the *paired* difference of their per-seed accuracies (same seeds, same few-shot draws;
:func:`transferlab.stats.paired_gain`), and a difference whose interval contains 0 is reported as
"not resolved at this budget", whichever arm has the higher mean. A correlation is resolved when
its bootstrap interval (``shift.json``) excludes 0. Nothing here is prose written by hand about
the results: every sentence is a template filled from the numbers, so a different run says
different things.

Questions (in order): the best objective per target (linear probes, against the floors), the best
freezing depth per target, which remedy helps where (against full fine-tuning of the primary),
in-distribution vs OOD accuracy of FT / LP / LP-FT / WiSE-FT, the gain along each graded shift
family and with shift across targets, and whether pre-training helps at all (the primary against
scratch, every probe against its random-init floor: on the text route the hub model's probe
against its random-init twin).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import asdict, dataclass, field
from typing import Any

from transferlab.stats import paired_gain, resolved

NOT_RESOLVED = "not resolved at this budget"


@dataclass
class Finding:
    question: str
    route: str
    text: str  #: one markdown sentence, generated from ``numbers``
    resolved: bool
    numbers: dict[str, Any] = field(default_factory=dict)


def _n(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _iv(lo: float | None, hi: float | None, signed: bool = False) -> str:
    if lo is None or hi is None:
        return "[no interval]"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"[{f.format(lo)}, {f.format(hi)}]"


def _acc(row: Mapping[str, Any]) -> str:
    lo, hi = (row.get("ci") or {}).get("test/acc") or (None, None)
    return f"{_n(row.get('test/acc'))} {_iv(lo, hi)}"


def _seeds(row: Mapping[str, Any], metric: str = "test/acc") -> list[float]:
    return [float(v) for v in (row.get("per_seed") or {}).get(metric) or []]


def _diff(a: Sequence[float], b: Sequence[float], confidence: float) -> dict[str, Any]:
    g = paired_gain(list(a), list(b), confidence)
    return {"mean": g["mean"], "lo": g["lo"], "hi": g["hi"], "resolved": bool(g["resolved"])}


def _gain_text(d: Mapping[str, Any]) -> str:
    return f"{d['mean']:+.3f} {_iv(d['lo'], d['hi'], signed=True)}"


def best_of(
    rows: Mapping[str, Mapping[str, Any]], confidence: float, metric: str = "test/acc"
) -> dict[str, Any] | None:
    """The arm of ``rows`` (name → report row with ``per_seed``) with the highest mean, and its
    paired difference from the runner-up; None with fewer than two arms."""
    ranked = sorted(rows, key=lambda n: -float(rows[n].get(metric) or 0.0))
    if len(ranked) < 2:
        return None
    best, second = ranked[0], ranked[1]
    d = _diff(_seeds(rows[best], metric), _seeds(rows[second], metric), confidence)
    return {"best": best, "second": second, "diff": d}


def _leader_sentence(
    what: str, rows: Mapping[str, Mapping[str, Any]], cmp: Mapping[str, Any], label: Any = None
) -> tuple[str, bool]:
    label = label or (lambda n: f"`{n}`")
    b, s, d = cmp["best"], cmp["second"], cmp["diff"]
    if d["resolved"]:
        return (
            f"{what}: {label(b)} ({_acc(rows[b])}), ahead of the runner-up {label(s)} "
            f"({_acc(rows[s])}) by {_gain_text(d)}.",
            True,
        )
    return (
        f"{what}: {NOT_RESOLVED}; {label(b)} ({_acc(rows[b])}) leads {label(s)} "
        f"({_acc(rows[s])}) by {_gain_text(d)}, an interval that contains 0.",
        False,
    )


def _named(entry: Mapping[str, Any], primary: str) -> dict[str, Mapping[str, Any]]:
    """Every arm's row of a target entry, the primary under its own name."""
    rows = {
        k: v
        for k, v in entry.items()
        if isinstance(v, Mapping) and "test/acc" in v and k != "pretrained"
    }
    if "pretrained" in entry:
        rows[primary] = entry["pretrained"]
    return rows


def labelled_targets(
    ev: Mapping[str, Any], members: Set[str] = frozenset()
) -> dict[str, Mapping[str, Any]]:
    """The entries of ``evaluate.json`` with classes (a gain), the members of a shift family left
    out (they fit two arms; the family's own table and findings read them)."""
    return {
        t: e
        for t, e in ev.get("targets", {}).items()
        if e.get("gain") is not None and t not in members
    }


def family_members(sh: Mapping[str, Any]) -> set[str]:
    """The corrupted members of every family in ``shift.json`` (not their clean base)."""
    return {t for f in (sh.get("families") or {}).values() for t in f["targets"][1:]}


def ood_partners(row: Mapping[str, Any]) -> list[str]:
    """The OOD partners an evaluate row was scored on (its ``ood/<partner>/acc`` keys)."""
    return [k.split("/")[1] for k in row if k.startswith("ood/") and k != "ood/acc"]


def ood_arms(
    ev: Mapping[str, Any], entry: Mapping[str, Any], endpoints: bool = False
) -> list[tuple[str, str]]:
    """``(strategy, row key)`` of the strategies Kumar et al. and Wortsman et al. compare in and
    out of distribution: full fine-tuning (FT), the linear probe (LP), LP-FT and the WiSE-FT
    mixes (``endpoints``: also α = 0 and 1, which equal LP and LP-FT)."""
    primary = str(ev.get("primary_objective"))
    prefix = f"{primary}/wise_"
    mixes = remedies(ev, entry) if not endpoints else list(entry)
    return [
        ("FT", "pretrained"),
        ("LP", f"{primary}/linear_probe"),
        ("LP-FT", f"{primary}/lp_ft"),
        *((f"WiSE-FT α={v.removeprefix(prefix)}", v) for v in mixes if v.startswith(prefix)),
    ]


def objective_findings(
    route: str, ev: Mapping[str, Any], families: set[str], conf: float
) -> list[Finding]:
    """Best pre-training objective per target by its linear probe, and how the best probe
    compares with the random-init and raw-input floors."""
    out = []
    primary = str(ev.get("primary_objective"))
    for t, e in labelled_targets(ev, families).items():
        rows = _named(e, primary)
        probes = {n: r for n, r in rows.items() if n.endswith("/linear_probe")}
        cmp = best_of(probes, conf)
        if cmp is None:
            continue
        text, ok = _leader_sentence(f"Best objective on **{t}** (linear probe)", probes, cmp)
        best = probes[cmp["best"]]
        floors = []
        nums: dict[str, Any] = {"comparison": cmp}
        own = (e.get("controls") or {}).get(cmp["best"], "floor/random_init")
        for f in (own, "floor/raw_input"):
            if f in rows:
                d = _diff(_seeds(best), _seeds(rows[f]), conf)
                nums[f] = d
                verdict = ("above" if d["mean"] > 0 else "below") if d["resolved"] else NOT_RESOLVED
                floors.append(f"vs `{f}` ({_acc(rows[f])}) {_gain_text(d)}: {verdict}")
        if floors:
            text += " Its probe " + "; ".join(floors) + "."
        out.append(Finding("best objective", route, text, ok, nums))
    return out


def depth_findings(route: str, curves: Mapping[str, Any], conf: float) -> list[Finding]:
    out = []
    for t, c in (curves.get("targets") or {}).items():
        rows = {
            f"k={k}": {
                "test/acc": p["mean"],
                "ci": {"test/acc": [p["lo"], p["hi"]]},
                "per_seed": {"test/acc": p["per_seed"]},
            }
            for k, p in (c.get("freeze_depth") or {}).items()
        }
        cmp = best_of(rows, conf)
        if cmp is None:
            continue
        text, ok = _leader_sentence(
            f"Best freezing depth on **{t}** (`{curves.get('objective')}`, frozen blocks)",
            rows,
            cmp,
            label=lambda n: n,
        )
        out.append(Finding("best freezing depth", route, text, ok, {"comparison": cmp}))
    return out


def remedies(ev: Mapping[str, Any], entry: Mapping[str, Any]) -> list[str]:
    """The primary's remedies in an entry: its variants that still fine-tune (not its probe,
    not the WiSE-FT end points that equal the probe and LP-FT), and its DAPT twin."""
    primary = str(ev.get("primary_objective"))
    out = []
    for v in entry:
        if v == f"{primary}_dapt":
            out.append(v)
        elif v.startswith(f"{primary}/") and not v.endswith("/linear_probe"):
            alpha = v.removeprefix(f"{primary}/wise_")
            if alpha != v and float(alpha) in (0.0, 1.0):
                continue
            out.append(v)
    return out


def remedy_findings(
    route: str, ev: Mapping[str, Any], families: set[str], conf: float
) -> list[Finding]:
    """Each remedy against full fine-tuning of the primary, target by target."""
    primary = str(ev.get("primary_objective"))
    labelled = labelled_targets(ev, families)
    names = list(dict.fromkeys(v for e in labelled.values() for v in remedies(ev, e)))
    out = []
    for v in names:
        helps, hurts, unres, nums = [], [], [], {}
        for t, e in labelled.items():
            if v not in e:
                continue
            d = _diff(_seeds(e[v]), _seeds(e["pretrained"]), conf)
            nums[t] = d
            item = f"{t} ({_gain_text(d)})"
            (
                helps if d["resolved"] and d["mean"] > 0 else hurts if d["resolved"] else unres
            ).append(item)
        parts = []
        if helps:
            parts.append("helps on " + ", ".join(helps))
        if hurts:
            parts.append("hurts on " + ", ".join(hurts))
        if unres:
            parts.append(f"{NOT_RESOLVED} on " + ", ".join(unres))
        text = f"`{v}` vs full fine-tuning of `{primary}`: " + "; ".join(parts) + "."
        out.append(Finding("remedy", route, text, bool(helps or hurts), nums))
    return out


def ood_findings(route: str, ev: Mapping[str, Any], conf: float) -> list[Finding]:
    """In-distribution vs OOD accuracy of FT, LP, LP-FT and WiSE-FT on each target with an OOD
    partner, and which strategy is best out of distribution."""
    out = []
    for t, e in ev.get("targets", {}).items():
        pre = e.get("pretrained") or {}
        if "ood/acc" not in pre:
            continue
        partner = next(iter(ood_partners(pre)), "?")
        rows = {s: e[n] for s, n in ood_arms(ev, e) if n in e}
        ood_rows = {
            s: {
                "test/acc": r.get("ood/acc"),
                "ci": {"test/acc": (r.get("ci") or {}).get("ood/acc")},
                "per_seed": {"test/acc": (r.get("per_seed") or {}).get("ood/acc")},
            }
            for s, r in rows.items()
        }
        cells = "; ".join(f"{s} {_acc(r)} → {_acc(ood_rows[s])}" for s, r in rows.items())
        cmp = best_of(ood_rows, conf)
        text = f"In-distribution → OOD (**{t}** → **{partner}**): {cells}."
        ok = False
        if cmp is not None:
            sentence, ok = _leader_sentence("Best out of distribution", ood_rows, cmp, lambda n: n)
            text += " " + sentence
        out.append(Finding("in-distribution vs OOD", route, text, ok, {"rows": list(rows)}))
    return out


def _corr(c: Mapping[str, Any], key: str = "spearman") -> tuple[str, bool]:
    rho, (lo, hi) = c.get(key), c.get(f"{key}_ci") or (None, None)
    if rho is None:
        return "undefined", False
    return f"ρ = {rho:+.3f} {_iv(lo, hi, signed=True)}", resolved({"lo": lo, "hi": hi})


def shift_findings(route: str, sh: Mapping[str, Any]) -> list[Finding]:
    out = []
    for name, fam in (sh.get("families") or {}).items():
        text_c, ok = _corr(fam.get("severity_gain") or {})
        g = fam.get("gains") or {}
        iv = fam.get("gain_intervals") or {}
        ends = [t for t in fam.get("targets", []) if t in g]
        steps = ", ".join(
            f"s{s}: {g[t]:+.3f} {_iv(*(iv.get(t) or (None, None)), signed=True)}"
            for t, s in zip(fam["targets"], fam["severities"], strict=True)
            if t in g
        )
        trend = (
            ("rises" if (fam["severity_gain"]["spearman"] or 0) > 0 else "falls")
            if ok
            else NOT_RESOLVED
        )
        text = (
            f"Along **{name}** ({len(ends)} targets, severity 0 = clean) the gain of the "
            f"pre-trained model over scratch with severity: {trend} (Spearman {text_c}). "
            f"Gains: {steps}."
        )
        out.append(Finding("gain along the shift axis", route, text, ok, {"family": name}))
    corr = sh.get("correlations") or {}
    if corr:
        among = sh.get("correlated_targets") or []
        parts, any_ok = [], False
        for m, c in corr.items():
            t, ok = _corr(c)
            any_ok |= ok
            parts.append(f"{m} {t}" + ("" if ok else " (not resolved)"))
        text = f"Shift vs gain across the {len(among)} labelled targets: " + "; ".join(parts) + "."
        if not any_ok:
            text += f" No measure's correlation with the gain is resolved: {NOT_RESOLVED}."
        out.append(Finding("gain vs shift across targets", route, text, any_ok, {}))
    return out


def pretraining_findings(route: str, ev: Mapping[str, Any], families: set[str]) -> list[Finding]:
    """Does pre-training help: the primary's gain over scratch per labelled target, and every
    probe against its random-init floor (e.g. MiniLM against its random-init twin)."""
    primary = str(ev.get("primary_objective"))
    out = []
    for t, e in labelled_targets(ev, families).items():
        g = {"mean": e["gain"], "lo": e["gain_ci"][0], "hi": e["gain_ci"][1]}
        verdict = (
            ("helps" if g["mean"] > 0 else "hurts") if e.get("gain_resolved") else NOT_RESOLVED
        )
        probes = []
        for v, x in e.get("gains", {}).items():
            if not v.endswith("/linear_probe") or x is None:
                continue
            iv = e["gain_intervals"][v]
            floor = (e.get("controls") or {}).get(v, "its random-init floor")
            side = ("above" if x > 0 else "below") if iv["resolved"] else NOT_RESOLVED
            probes.append(f"`{v}` vs `{floor}` {_gain_text(iv | {'mean': x})}: {side}")
        text = (
            f"Pre-training on **{t}**: fine-tuned `{primary}` vs scratch "
            f"{_gain_text(g)}: {verdict}."
        )
        if probes:
            text += " Probes: " + "; ".join(probes) + "."
        out.append(Finding("does pre-training help", route, text, bool(e.get("gain_resolved")), {}))
    return out


def build(reports: Mapping[str, Mapping[str, Any]], confidence: float = 0.95) -> list[Finding]:
    """Every finding of the routes in ``reports`` (route → ``{"evaluate", "shift", "curves"}``,
    each a loaded report or missing)."""
    out: list[Finding] = []
    for route, r in reports.items():
        ev, sh, cu = r.get("evaluate") or {}, r.get("shift") or {}, r.get("curves") or {}
        members = family_members(sh)
        if not ev:
            continue
        out += objective_findings(route, ev, members, confidence)
        out += depth_findings(route, cu, confidence)
        out += remedy_findings(route, ev, members, confidence)
        out += ood_findings(route, ev, confidence)
        out += pretraining_findings(route, ev, members)
        out += shift_findings(route, sh)
    return out


def markdown(findings: Sequence[Finding]) -> list[str]:
    """The summary's Findings section."""
    if not findings:
        return []
    lines = [
        "## Findings",
        "",
        "Generated from the numbers below (paired differences over seeds; a difference or "
        f"correlation whose interval contains 0 is reported as {NOT_RESOLVED}).",
        "",
    ]
    question = None
    for f in findings:
        if (f.route, f.question) != question:
            question = (f.route, f.question)
            lines += ["", f"**{f.route}: {f.question}**", ""]
        lines.append(f"- {f.text}")
    return [*lines, ""]


def as_json(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    return [asdict(f) for f in findings]
