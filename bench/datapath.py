"""The data path: loader throughput against model throughput, and the wait for each batch."""

from __future__ import annotations

import time
from typing import Any

from bench.common import rnd
from bench.overhead import FitRecord


def loader_rate(loader: Any, max_batches: int | None = None) -> float:
    """Samples/s of iterating ``loader`` and converting its inputs as a step does."""
    from transferlab.data.loaders import to_float

    n = 0
    t = time.perf_counter()
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x = batch[0] if isinstance(batch, list | tuple) else batch
        to_float(x)
        n += len(x)
    return n / (time.perf_counter() - t)


def data_path(
    cfg: Any, route: str, split: dict[str, Any], batch_size: int, fit: FitRecord, bare: FitRecord
) -> dict[str, Any]:
    """Loader throughput against model throughput; the per-sample baseline for comparison."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from transferlab.data.loaders import make_loader

    tensors = [split[k] for k in ("x", "y") if k in split]
    loader = make_loader(*tensors, batch_size=batch_size, shuffle=True, seed=int(cfg.seed))
    rate = loader_rate(loader)
    naive = DataLoader(
        TensorDataset(*tensors),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    naive_rate = loader_rate(naive, max_batches=max(2, 2048 // batch_size))
    model_rate = batch_size / fit.step_s
    train_s = sum(e[-1] - e[0] for e in bare.epochs if len(e) > 1) or bare.fit_s
    return {
        "route": route,
        "batch_size": batch_size,
        "loader_samples_s": round(rate),
        "per_sample_loader_samples_s": round(naive_rate),
        "model_samples_s": round(model_rate),
        "loader_vs_model": rnd(rate / model_rate, 1),
        "data_wait_share": rnd((bare.data_wait_s or 0.0) / train_s, 4),
    }
