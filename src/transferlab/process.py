"""Facts about this process that tracking and the warm start share: the pipeline it belongs to,
and whether the warm-start server forked it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Set in a stage forked by the warm-start server: it runs right there, never warm again.
_IN_CHILD = False


def in_child() -> bool:
    """Whether this process is a stage forked by the warm-start server."""
    return _IN_CHILD


def mark_child() -> None:
    global _IN_CHILD
    _IN_CHILD = True


def _proc_start(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        # Field 22 (starttime) follows the parenthesised command, which may itself contain spaces.
        return f.read().rsplit(")", 1)[1].split()[19]


def pipeline_id() -> str:
    """An id shared by the stages of one ``dvc repro``.

    ``TRANSFERLAB_PIPELINE_ID`` wins (``make run`` sets it); otherwise the nearest ancestor ``dvc``
    process (pid + start time, so ids never repeat) identifies the run; outside DVC, this process.
    """
    if env := os.environ.get("TRANSFERLAB_PIPELINE_ID"):
        return env
    pid = os.getpid()
    try:
        cur = os.getppid()
        for _ in range(16):
            if cur <= 1:
                break
            cmd = Path(f"/proc/{cur}/cmdline").read_bytes().split(b"\0")
            if any(Path(c.decode(errors="ignore")).name == "dvc" for c in cmd[:2]):
                pid = cur
                break
            with open(f"/proc/{cur}/stat") as f:
                cur = int(f.read().rsplit(")", 1)[1].split()[1])
        key = f"{os.uname().nodename}-{pid}-{_proc_start(pid)}"
    except OSError:
        key = f"{os.uname().nodename}-{pid}"
    return hashlib.sha1(key.encode()).hexdigest()[:12]
