"""``transferlab``: the command line that DVC stages (and people) call.

    transferlab <stage> [key=value ...] [--params params.yaml]
    transferlab params [override ...] [--check]     compose conf/ into params.yaml
    transferlab validate [key=value ...]

User errors print one line (``transferlab: error: ...``) and exit 2; set ``TRANSFERLAB_DEBUG=1`` (or
``HYDRA_FULL_ERROR=1``) for the full traceback.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
import threading
import time
from pathlib import Path

from rich.console import Console

from transferlab import config, warm
from transferlab.config import STAGES
from transferlab.errors import TransferlabError
from transferlab.io import write_or_check
from transferlab.tracking import interrupted

DEBUG_VARS = ("TRANSFERLAB_DEBUG", "HYDRA_FULL_ERROR")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transferlab", description="Pre-training and fine-tuning study pipeline."
    )
    sub = p.add_subparsers(
        dest="command", required=True, metavar="{" + ",".join(STAGES) + ",params,validate}"
    )
    for stage in (*STAGES, "validate"):
        sp = sub.add_parser(
            stage, help=f"run the {stage} stage" if stage != "validate" else "validate the config"
        )
        sp.add_argument(
            "overrides",
            nargs="*",
            help="key=value overrides (route=image, objective=mae, finetune.lr=0.01)",
        )
        sp.add_argument(
            "--params", default="params.yaml", help="composed config to read (default: params.yaml)"
        )
    pp = sub.add_parser("params", help="compose conf/ into params.yaml (what DVC tracks)")
    pp.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides, e.g. model/image=cnn finetune.lr=0.01 +debug=tiny",
    )
    pp.add_argument("--out", default="params.yaml")
    pp.add_argument(
        "--check", action="store_true", help="exit 1 if the file differs from the composition"
    )
    return p


def _params(args: argparse.Namespace) -> int:
    text = config.params_yaml(args.overrides)
    stale = f"transferlab: {args.out} differs from the composition of conf/; run `make params`"
    return write_or_check(args.out, text, args.check, stale)


def _run_stage(args: argparse.Namespace) -> int:
    cfg = config.load(args.params, args.overrides)
    stage = args.command
    config.validate(cfg, None if stage == "validate" else stage)
    if stage == "validate":
        print("config OK")
        return 0
    os.environ.setdefault("TRANSFERLAB_DVC_STAGE", os.environ.get("DVC_STAGE", stage))
    label = f"{stage} route={cfg.route}" + (
        f" objective={cfg.objective}" if stage == "pretrain" else ""
    )
    Console(stderr=True).print(
        f"[bold cyan]transferlab[/] ▶ {label} (seed {cfg.seed})", highlight=False
    )
    t0 = time.perf_counter()
    module = {"shift-analysis": "shift"}.get(stage, stage)
    # lazy: the stages cost ~5-8 s of torch/Lightning/MLflow imports (design.md §1); --help,
    # params and validate must not pay them
    from transferlab.runtime import StageRuntime

    importlib.import_module(f"transferlab.stages.{module}").run(cfg, StageRuntime(cfg))
    Console(stderr=True).print(
        f"[bold green]✓[/] {label} done in {time.perf_counter() - t0:.1f}s", highlight=False
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [warm.SERVE_FLAG] and len(argv) == 2:  # the warm-start server (warm.py)
        warm.serve(Path(argv[1]), run=main, finish=before_exit)
        return 0
    if warm.enabled(argv) and (code := warm.run_warm(argv)) is not None:
        return code
    args = _parser().parse_args(argv)
    debug = any(os.environ.get(v, "") not in ("", "0") for v in DEBUG_VARS)
    try:
        return _params(args) if args.command == "params" else _run_stage(args)
    except TransferlabError as exc:
        if debug:
            raise
        print(f"transferlab: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SystemExit, Exception) as exc:
        if interrupted(exc):  # also Lightning's sys.exit(1) after it caught Ctrl-C during fit
            print("transferlab: interrupted", file=sys.stderr)
            return 130
        if debug or isinstance(exc, SystemExit):
            raise
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"transferlab: {args.command} failed: {type(exc).__name__}: {line} (set TRANSFERLAB_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


def before_exit() -> None:
    """What a normal interpreter exit does before tearing down: join the threads still working,
    run the atexit hooks (MLflow, logging), flush."""
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()


def entry() -> None:
    """The ``transferlab`` command: :func:`main`, then exit without the interpreter's teardown.

    Why: freeing torch's, MLflow's and Lightning's ~5000 modules one by one takes ~2 s per stage
    (measured: exit at 11.4 s vs 10.1 s for a 8.8 s stage); every output is closed by then.
    """
    code = main()
    before_exit()
    os._exit(code)


if __name__ == "__main__":
    from transferlab.cli import entry as _entry  # the package's module, as the console script

    _entry()
