"""The goals of the bench and the plain-text table ``make bench`` prints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.common import GOALS


def goals(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue #9 with its measured value and whether it is met (None: not measured)."""
    rows: list[dict[str, Any]] = []

    def add(figure: str, value: Any, goal: str, met: bool | None) -> None:
        rows.append({"figure": figure, "value": value, "goal": goal, "met": met})

    for key, o in result.get("overhead", {}).items():
        add(
            f"overhead {key}",
            o["ratio"],
            f"<= {GOALS['overhead_ratio']}",
            o["ratio"] <= GOALS["overhead_ratio"],
        )
    for key, e in result.get("efficiency", {}).items():
        add(f"MFU {key}", e["mfu"], f">= {GOALS['mfu']}", e["mfu"] >= GOALS["mfu"])
    for key, d in result.get("data", {}).items():
        add(
            f"loader/model {key}",
            d["loader_vs_model"],
            "> 1",
            d["loader_vs_model"] > GOALS["loader_vs_model"],
        )
    noop = result.get("pipeline", {}).get("noop_repro")
    if noop is not None:
        best = min(noop["repro_s"]) if noop.get("measured") else None
        add(
            "no-op dvc repro s",
            best,
            f"< {GOALS['noop_repro_s']}",
            None if best is None else best < GOALS["noop_repro_s"],
        )
    return rows


def table(result: Mapping[str, Any]) -> str:
    """The figures as a plain-text table (what `make bench` prints)."""
    lines: list[str] = []
    m = result["machine"]
    lines.append(
        f"transferlab bench — {m['cpu']}, {m['nproc']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), 1-min load {m.get('loadavg_1min_start')}→"
        f"{m.get('loadavg_1min_end')}, bench wall {result.get('wall_s', 0):.0f} s"
    )
    rows: list[tuple[str, str, str]] = []

    def row(section: str, figure: str, value: str) -> None:
        rows.append((section, figure, value))

    f = result.get("fits")
    if f:
        row(
            "fits",
            f"fits per minute, {f['target']}, {f['fits']} fits of {f['steps']} steps",
            f"SGD in process {f['sgd_in_process']} vs fit pool {f['sgd_pool']} "
            f"({f['sgd_ratio']}×); probe: SGD head {f['probe_sgd_head']} vs L-BFGS on cached "
            f"features {f['probe_lbfgs']} ({f['probe_ratio']}×)",
        )
    for key, o in result.get("overhead", {}).items():
        row(
            "overhead",
            f"{key}: {o['label']}, {o['steps']} steps",
            f"{o['ratio']:.3f}× ({o['lightning_s']:.2f} s vs {o['bare_s']:.2f} s; CPU time "
            f"{o['cpu_ratio']:.3f}×); per step {o['step_ratio']:.3f}× ({o['lightning_step_ms']:.1f}"
            f" vs {o['bare_step_ms']:.1f} ms); same weights: {'yes' if o['same_weights'] else 'NO'}",
        )
    for key, e in result.get("efficiency", {}).items():
        row(
            "efficiency",
            f"{key}: {e['objective']}, batch {e['batch_size']}",
            f"MFU {e['mfu']:.2f} ({e['achieved_gflop_s']:.1f} GFLOP/s of "
            f"{e['matmul_gflop_s_at_model_shapes']:.1f} at its GEMM shapes; "
            f"{e['gflop_per_step']:.3f} GFLOP/step in {e['step_ms']:.1f} ms; bare loop "
            f"{e['mfu_bare_loop']}; 1024³ matmul {e['matmul_gflop_s_1024_square']:.1f})",
        )
    for key, d in result.get("data", {}).items():
        row(
            "data path",
            f"{key}: batch {d['batch_size']}",
            f"loader {d['loader_samples_s']:,}/s vs model {d['model_samples_s']:,}/s "
            f"({d['loader_vs_model']}×); waiting {100 * d['data_wait_share']:.2f} % of a step; "
            f"per-sample DataLoader {d['per_sample_loader_samples_s']:,}/s",
        )
    p = result.get("pipeline", {})
    if "last_run" in p:
        lr = p["last_run"]
        if lr.get("recorded"):
            slow = sorted(lr["stages"], key=lambda s: -s["seconds"])[:3]
            row(
                "pipeline",
                f"last recorded `make run` ({lr['started_at']}, {'complete' if lr['complete'] else 'partial'})",
                f"{lr['wall_s']:.0f} s wall; {lr['in_stage_runs_s']:.0f} s in {len(lr['stages'])} "
                f"stage runs, {lr['outside_stage_runs_s']:.0f} s outside (start-up, DVC); slowest "
                + ", ".join(f"{s['stage']} {s['seconds']:.0f} s" for s in slow),
            )
        else:
            row("pipeline", "last recorded `make run`", lr["note"])
    if "noop_repro" in p:
        n = p["noop_repro"]
        row(
            "pipeline",
            "no-op dvc repro",
            f"{min(n['repro_s']):.2f} s (runs {n['repro_s']}; dvc status {n['status_s']} s)"
            if n.get("measured")
            else n["note"],
        )
    if "startup" in p:
        s = p["startup"]
        row(
            "pipeline",
            "stage start-up (imports)",
            ", ".join(f"{k} {v:.1f} s" for k, v in s["stages"].items()),
        )
        row("pipeline", "imports", ", ".join(f"{k} {v:.1f} s" for k, v in s["imports"].items()))
    sw = result.get("sweep")
    if sw:
        row(
            "pipeline",
            "sweep overhead per trial",
            f"{sw['per_trial_overhead_s']:.2f} s beyond a {sw['fit_s']:.2f} s fit "
            f"({100 * sw['per_trial_overhead_share']:.1f} % of the sweep; {sw['trials']} trials in "
            f"{sw['sweep_wall_s']:.1f} s, {sw['outside_trials_s']:.1f} s outside trials; after the "
            f"first trial {sw['steady_trial_overhead_s']} s)"
            if sw.get("measured")
            else sw["note"],
        )
    sc = result.get("scaling")
    if sc:
        d, w = sc["dataset"], sc["width"]
        row(
            "scaling",
            "epoch time vs dataset size",
            ", ".join(f"n={r['n']}: {r['epoch_s']:.2f} s" for r in d["rows"])
            + f"; exponent {d['exponent']}",
        )
        row(
            "scaling",
            f"epoch time vs width (n={w['n']})",
            ", ".join(f"×{r['width_factor']:g}: {r['epoch_s']:.2f} s" for r in w["rows"])
            + f"; exponent {w['exponent']} (FLOPs {w['flops_exponent']})",
        )
    g = result.get("gpu")
    if g and "error" in g:
        row("gpu", "trainer=gpu pretrain", g["error"])
    elif g:
        row(
            "gpu",
            f"trainer=gpu pretrain, widths {g['widths']}, batch {g['batch_size']}",
            f"MFU {g['mfu']} ({g['achieved_tflop_s']} of {g['bf16_matmul_tflop_s_at_model_shapes']} TFLOP/s) on {g['device']}",
        )
    w1 = max(len(r[0]) for r in rows) if rows else 0
    w2 = max(len(r[1]) for r in rows) if rows else 0
    lines += [f"{a:<{w1}}  {b:<{w2}}  {c}" for a, b, c in rows]
    lines.append("goals:")
    for gl in result.get("goals", []):
        status = {True: "met", False: "MISSED", None: "not measured"}[gl["met"]]
        lines.append(f"  {gl['figure']:<40} {gl['value']!s:<10} goal {gl['goal']:<8} {status}")
    return "\n".join(lines)


def public(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("_")}
