"""Atomic writes: a crash never leaves a half-written artifact that DVC would cache.

Files are written to a temporary sibling and ``os.replace``-d into place (atomic on POSIX within one
file system); directories are built in a temporary sibling and swapped in with one rename.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``path`` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file's content."""
    return json.loads(Path(path).read_text())


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_or_check(path: str | os.PathLike[str], text: str, check: bool, stale: str) -> int:
    """Write a generated file (atomically), or with ``check`` exit status 1 and the one line
    ``stale`` on stderr when the committed file differs from ``text``."""
    path = Path(path)
    if check:
        if not path.exists() or path.read_text() != text:
            print(stale, file=sys.stderr)
            return 1
        return 0
    write_text(path, text)
    print(f"wrote {path}")
    return 0


def save_torch(path: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` through a buffer: saving to a path embeds the (temporary) file name in the
    archive, so identical tensors would give different bytes and DVC would see a change."""
    # lazy: torch costs ~1.2 s of import; the CLI imports this module for --help/params/validate
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
