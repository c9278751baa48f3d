"""Determinism: the same config and seed give bit-identical outputs from every stage on CPU.

A second project runs the whole tiny pipeline (both routes, every stage) from scratch and is
compared with the shared ``tiny_pipeline`` run, file by file: data splits and few-shot subsets
(tensors and manifests), pre-trained and fine-tuned checkpoints, every JSON report, the summary
page and the plots; then the metrics each stage logged to MLflow, run by run. A second full
pipeline costs minutes, hence slow.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, make_project, run

OUTPUT_DIRS = ("data", "models", "reports")
# Wall-clock measurements, not results: they differ between any two runs.
TIMING_METRICS = ("seconds", "time", "duration")


def _is_timing(key: str) -> bool:
    return any(t in key.lower() for t in TIMING_METRICS)


def _without_timings(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_timings(v) for k, v in node.items() if not _is_timing(k)}
    if isinstance(node, list):
        return [_without_timings(v) for v in node]
    return node


def _outputs(root: Path) -> dict[str, Any]:
    """Every output file's bytes; JSON files (metrics) parsed, with wall-clock fields dropped."""
    out: dict[str, Any] = {}
    for d in OUTPUT_DIRS:
        for p in sorted((root / d).rglob("*")):
            if p.is_file():
                name = str(p.relative_to(root))
                raw = p.read_bytes()
                out[name] = _without_timings(json.loads(raw)) if p.suffix == ".json" else raw
    return out


def _metrics(root: Path) -> dict[tuple[str, str, int], float]:
    """``(run name, metric key, step) → value`` for every run of the project's MLflow store."""
    with sqlite3.connect(root / "mlflow.db") as con:
        rows = con.execute(
            "SELECT r.name, m.key, m.step, m.value FROM metrics m JOIN runs r "
            "ON m.run_uuid = r.run_uuid"
        ).fetchall()
    return {(name, key, step): value for name, key, step, value in rows if not _is_timing(key)}


@pytest.mark.slow
def test_second_run_of_every_stage_is_bitwise_identical(
    tiny_pipeline: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = make_project(tmp_path_factory.mktemp("tiny_again"), ["+debug=tiny"])
    run([str(BIN / "dvc"), "repro"], other, timeout=900)
    first, second = _outputs(tiny_pipeline), _outputs(other)
    assert sorted(first) == sorted(second)
    # Every stage is covered: data, both routes' checkpoints and reports.
    for prefix in ("data/image/", "data/text/", "models/image/pretrain/", "models/text/finetune/"):
        assert any(name.startswith(prefix) for name in first), prefix
    differing = [name for name in first if first[name] != second[name]]
    assert differing == []
    m1, m2 = _metrics(tiny_pipeline), _metrics(other)
    assert len(m1) > 100 and m1.keys() == m2.keys()
    assert [k for k in m1 if m1[k] != m2[k]] == []
