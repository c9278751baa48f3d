"""The wall time of each ``make run``, appended to ``reports/run_timing.json`` (not tracked by DVC).

``make run`` calls it after ``dvc repro``, whatever its exit status::

    python -m transferlab.run_timing --pipeline-id ID --start EPOCH_SECONDS --exit-code RC

The file keeps the last 20 runs: ``{"runs": [{"pipeline_id", "command", "started_at", "wall_s",
"exit_code", "git_commit", "machine": {"cpu", "nproc"}}, ...]}``. ``make bench`` reads it (with the
stage runs MLflow recorded under the same pipeline id) for its pipeline figures. Standard library
only: it runs after every ``make run`` and must not pay for torch or MLflow imports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TIMING_FILE = Path("reports") / "run_timing.json"
KEEP = 20


def write_json_atomic(path: Path, data: Any) -> None:
    """Write-then-rename: a killed writer never leaves half a file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the report from other users
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def record_run(project: Path, pipeline_id: str, start: float, exit_code: int) -> Path:
    """Append a ``make run`` to ``reports/run_timing.json`` (kept out of DVC; last 20 runs)."""
    path = Path(project) / TIMING_FILE
    runs: list[dict[str, Any]] = []
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        runs = list(json.loads(path.read_text())["runs"])
    end = time.time()
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=False
    ).stdout.strip()
    runs.append(
        {
            "pipeline_id": pipeline_id,
            "command": "dvc repro",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start)),
            "wall_s": round(end - start, 2),
            "exit_code": int(exit_code),
            "git_commit": commit or "unknown",
            "machine": {"cpu": cpu_model(), "nproc": len(os.sched_getaffinity(0))},
        }
    )
    write_json_atomic(path, {"runs": runs[-KEEP:]})
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m transferlab.run_timing",
        description="Append one `make run` to reports/run_timing.json.",
    )
    p.add_argument("--pipeline-id", required=True)
    p.add_argument("--start", type=float, required=True, help="epoch seconds at dvc repro start")
    p.add_argument("--exit-code", type=int, default=0)
    p.add_argument("--project", default=".", help="project root (reports/ is under it)")
    a = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    record_run(Path(a.project), a.pipeline_id, a.start, a.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
