"""Stage ``data``: build a route's processed datasets and manifest from the embedded sources."""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig

from transferlab.io import atomic_dir
from transferlab.routes import get_route
from transferlab.stages.context import Runtime


def run(cfg: DictConfig, rt: Runtime) -> dict[str, Any]:
    route = get_route(cfg)
    dirs = route.dirs
    tags = {"route": route.name, "run_name": f"data:{route.name}"}
    with rt.track("data", tags) as tr:
        # Built in a temporary directory and swapped in whole: DVC never sees half a dataset.
        with atomic_dir(dirs["data"]) as tmp:
            manifest = route.build_data(tmp, progress=bool(cfg.trainer.enable_progress_bar))
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        tr.log_artifact(dirs["manifest"])
        tr.log_metrics(
            {
                f"{name}/{split}_size": n
                for name, d in manifest["datasets"].items()
                for split, n in d["splits"].items()
            }
        )
        tr.set_tags({"data.manifest_hash": manifest["hash"]})
        tr.log_dataset(dirs["manifest"])
    return manifest
