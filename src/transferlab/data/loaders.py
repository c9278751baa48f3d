"""Fast in-memory loaders: whole batches are sliced from preloaded tensors.

The default ``DataLoader`` + ``TensorDataset`` indexes and collates one sample at a time in Python;
for 28×28 images that costs more than the model step. ``TensorBatches`` implements
``__getitems__`` so the loader fetches a whole batch with one tensor index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from transferlab.errors import DataSourceError


class TensorBatches(Dataset):
    def __init__(self, *tensors: torch.Tensor) -> None:
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError("all tensors need the same first dimension")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i] for t in self.tensors)

    def __getitems__(self, idx: Sequence[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(idx)
        return tuple(t[index] for t in self.tensors)


class EpochRandomSampler(Sampler[int]):
    """A random permutation that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` before every epoch (also after a resume), so a run restarted from
    an epoch checkpoint sees exactly the data order an uninterrupted run would have seen.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def _passthrough(batch: Any) -> Any:
    return batch


def make_loader(
    *tensors: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    ds = TensorBatches(*tensors)
    return DataLoader(
        ds,
        batch_size=min(int(batch_size), len(ds)),
        sampler=EpochRandomSampler(len(ds), seed) if shuffle else None,
        drop_last=drop_last and len(ds) > batch_size,
        collate_fn=_passthrough,
        num_workers=0,
    )


def load_dataset(path: str | Path) -> dict[str, Any]:
    """Load a processed dataset written by the data stage (tensors only: ``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise DataSourceError(
            f"processed dataset {path} is missing: run `dvc repro` (the data stage builds it)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataSourceError(
            f"processed dataset {path} is unreadable ({type(exc).__name__}); delete it and re-run the data stage"
        ) from None


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Model input from stored tensors: uint8 images → float in [0, 1] (converted per batch: storing
    floats would cost 4× the memory); integer token ids pass through unchanged."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x if not torch.is_floating_point(x) else x.float()
