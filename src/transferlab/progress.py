"""Progress bars for long work: a rich bar, or one line per finished unit around Lightning fits."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class _LineProgress:
    """Progress over fits that draw their own Lightning bar: one line per finished unit.

    Lightning's ``RichProgressBar`` calls ``Console.clear_live()`` on the shared rich console when a
    fit starts, which tears down any enclosing ``Live`` (and crashes its ``stop``), so a stage that
    wraps fits reports its outer progress as plain lines instead of a second live bar.
    """

    def __init__(self, enabled: bool) -> None:
        self._console = Console(stderr=True)
        self._enabled = enabled
        self._clock = time.monotonic
        self._tasks: dict[int, dict[str, Any]] = {}

    def add_task(self, description: str, total: int) -> int:
        tid = len(self._tasks)
        self._tasks[tid] = {"description": description, "total": total, "done": 0}
        self._tasks[tid]["start"] = self._clock()
        return tid

    def update(self, task: int, *, description: str | None = None) -> None:
        if description is not None:
            self._tasks[task]["description"] = description

    def advance(self, task: int, advance: int = 1) -> None:
        t = self._tasks[task]
        t["done"] += advance
        if self._enabled:
            secs = int(self._clock() - t["start"])
            self._console.print(
                f"{t['description']} done: {t['done']}/{t['total']}"
                f" ({secs // 60}:{secs % 60:02d} elapsed)",
                markup=False,
                highlight=False,
            )


@contextlib.contextmanager
def progress_bar(enabled: bool = True, *, hosts_fits: bool = False) -> Iterator[Any]:
    """A rich progress bar (a no-op one when disabled, e.g. in tests).

    ``hosts_fits``: the work inside runs Lightning fits with their own live bar; the outer
    progress is then printed line by line (see :class:`_LineProgress`).
    """
    if hosts_fits:
        yield _LineProgress(enabled)
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    ) as bar:
        yield bar
