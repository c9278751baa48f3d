"""Stage ``data``: build a route's processed datasets and manifest from the embedded sources."""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transferlab.io import atomic_dir
from transferlab.stages.common import route_dirs
from transferlab.tracking import StageRun


def run(cfg: DictConfig) -> dict[str, Any]:
    route = str(cfg.route)
    dirs = route_dirs(cfg, route)
    data_cfg = OmegaConf.to_container(cfg.data[route], resolve=True)
    progress = bool(cfg.trainer.get("enable_progress_bar", True))
    with StageRun(cfg, "data", tags={"route": route, "run_name": f"data:{route}"}) as tr:
        # Built in a temporary directory and swapped in whole: DVC never sees half a dataset.
        with atomic_dir(dirs["data"]) as tmp:
            if route == "image":
                from transferlab.data.image import build_image_data

                manifest = build_image_data(data_cfg, tmp, int(cfg.seed), progress=progress)
            else:
                from transferlab.data.text import build_text_data

                manifest = build_text_data(data_cfg, tmp, int(cfg.seed), progress=progress)
                # A timing would make the manifest's bytes differ between identical builds.
                manifest.pop("build_seconds", None)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        tr.log_artifact(dirs["manifest"])
        tr.log_metrics(
            {
                f"{name}/{split}_size": n
                for name, d in manifest["datasets"].items()
                for split, n in d["splits"].items()
            }
        )
        if tr.enabled:
            import mlflow

            mlflow.set_tag("data.manifest_hash", manifest["hash"])
    return manifest
