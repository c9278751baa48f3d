"""Runs the bench's sections and writes ``reports/bench.json``: ``python -m bench [--sections ...]``."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench
from bench.common import (
    ROOT,
    SECTIONS,
    build_data,
    machine_info,
    primary,
    rnd,
    stage_config,
    write_json_atomic,
)
from bench.datapath import data_path
from bench.fits import fits_per_minute
from bench.mfu import efficiency, gpu_section
from bench.overhead import compare_arms, finetune_arm, pretrain_arm
from bench.pipeline import last_pipeline_run, noop_repro, startup_times
from bench.report import goals, public, table
from bench.scaling import scaling
from bench.sweep import sweep_overhead


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from omegaconf import OmegaConf

    sections = set(args.sections)
    project = Path(args.project).resolve()
    params = project / "params.yaml"
    t_start = time.perf_counter()
    result: dict[str, Any] = {"machine": machine_info(), "started_at": time.strftime("%FT%T%z")}
    work = Path(tempfile.mkdtemp(prefix="transferlab-bench-"))
    try:
        cfg = stage_config(params, work, args.overrides)
        image_obj = primary(cfg, "image")
        text_obj = primary(cfg, "text")
        arms = sections & {"overhead", "efficiency", "data", "sweep"}
        if arms or sections & {"scaling", "gpu", "fits"}:
            result["data_build_s"] = {"image": rnd(build_data(cfg, "image"), 2)}
        if sections & {"overhead", "efficiency", "data"} and not args.no_text:
            result["data_build_s"]["text"] = rnd(build_data(cfg, "text"), 2)
        comparisons: dict[str, dict[str, Any]] = {}
        if "fits" in sections:
            result["fits"] = fits_per_minute(cfg)
        if arms:
            pairs = []
            for i in range(args.repeats):
                light = pretrain_arm("lightning", cfg, work / "light", "image", image_obj)
                bare = pretrain_arm("bare", cfg, work / f"bare{i}", "image", image_obj)
                pairs.append((light, bare))
            comparisons["image_pretrain"] = compare_arms(
                pairs, f"pretrain {image_obj} (stage fit vs bare loop)"
            )
            target = str(cfg.data.image.targets[0])
            pairs = []
            ft_cfg = OmegaConf.merge(cfg, {"paths": {"models_dir": str(work / "light")}})
            for _ in range(args.repeats):
                light = finetune_arm("lightning", ft_cfg, work / "light", target, image_obj)
                bare = finetune_arm("bare", ft_cfg, work / "light", target, image_obj)
                pairs.append((light, bare))
            comparisons["image_finetune"] = compare_arms(
                pairs, f"finetune {target} from {image_obj}"
            )
            if not args.no_text:
                # The text objective's own budget is the longest fit here: --text-epochs of it
                # (its own max_epochs where it has one, else the route's).
                epochs = {"max_epochs": args.text_epochs}
                if "max_epochs" in cfg.objectives[text_obj]:
                    tcfg = OmegaConf.merge(cfg, {"objectives": {text_obj: epochs}})
                else:
                    tcfg = OmegaConf.merge(cfg, {"pretrain": {"text": epochs}})
                light = pretrain_arm("lightning", tcfg, work / "light", "text", text_obj)
                bare = pretrain_arm("bare", tcfg, work / "bare_text", "text", text_obj)
                comparisons["text_pretrain"] = compare_arms(
                    [(light, bare)],
                    f"pretrain {text_obj}, {args.text_epochs} epoch(s) (stage fit vs bare loop)",
                )
        if "overhead" in sections:
            result["overhead"] = {k: public(v) for k, v in comparisons.items()}
        if "efficiency" in sections:
            result["efficiency"] = {}
            for key, route, obj in (
                ("image_pretrain", "image", image_obj),
                ("text_pretrain", "text", text_obj),
            ):
                if key in comparisons:
                    c = comparisons[key]
                    result["efficiency"][key] = efficiency(
                        cfg, route, obj, c["batch_size"], c["_light"].step_s, c["_bare"].step_s
                    )
        if "data" in sections:
            from transferlab.data.loaders import load_dataset
            from transferlab.paths import route_dirs

            result["data"] = {}
            for key, route, split in (
                ("image_pretrain", "image", "source.pt"),
                ("image_finetune", "image", f"targets/{cfg.data.image.targets[0]}.pt"),
                ("text_pretrain", "text", "source.pt"),
            ):
                if key in comparisons:
                    c = comparisons[key]
                    tensors = load_dataset(route_dirs(cfg, route)["data"] / split)["train"]
                    result["data"][key] = data_path(
                        cfg, route, tensors, c["batch_size"], c["_light"], c["_bare"]
                    )
        if "sweep" in sections and "image_finetune" in comparisons:
            result["sweep"] = sweep_overhead(
                cfg,
                work,
                work / "light",
                args.sweep_trials,
                comparisons["image_finetune"]["_light"].total_s,
                str(cfg.data.image.targets[0]),
            )
        if "scaling" in sections:
            n = int(cfg.data.image.source_train)
            result["scaling"] = scaling(
                cfg,
                work,
                sizes=[n // 8, n // 4, n // 2],
                width_factors=[0.5, 1.0, 2.0],
                width_n=n // 8,
            )
        if "pipeline" in sections:
            result["pipeline"] = {
                "last_run": last_pipeline_run(project),
                "noop_repro": noop_repro(project),
                "startup": startup_times(project),
            }
        if "gpu" in sections:
            import torch

            if torch.cuda.is_available():
                try:
                    result["gpu"] = gpu_section(params, work)
                except Exception as exc:  # report, do not lose the CPU figures
                    result["gpu"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["goals"] = goals(result)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["record-run"]:  # the former `scripts/bench.py record-run`: make run's record
        from transferlab import run_timing

        return run_timing.main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench", description=bench.__doc__.splitlines()[0])
    p.add_argument("--project", default=".", help="project root (params.yaml, dvc.lock, mlflow.db)")
    p.add_argument("--out", default="reports/bench.json")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--repeats", type=int, default=2, help="runs of each image arm (best is kept)")
    p.add_argument("--sweep-trials", type=int, default=3)
    p.add_argument("--no-text", action="store_true", help="skip the text route's arms")
    p.add_argument("--text-epochs", type=int, default=1, help="epochs of the text arms")
    p.add_argument("--pruning", action="store_true", help="also run scripts/bench_pruning.py")
    p.add_argument("overrides", nargs="*", help="key=value overrides of params.yaml, after `--`")
    args = p.parse_args(argv)
    result = run_bench(args)
    out = Path(args.project) / args.out
    write_json_atomic(out, result)
    print(table(result))
    print(f"wrote {out}")
    if args.pruning:
        return subprocess.call([sys.executable, str(ROOT / "scripts" / "bench_pruning.py")])
    return 0
