"""Statistics of a study over seeds: intervals, paired gains, learning-rate selection, failed fits.

Every accuracy a study reports is a mean over seeds with a Student-t confidence interval
(``scipy.stats.t``), the shape DomainBed and most transfer papers report (mean ± an interval over
trials); a gain is the *paired* difference of two arms on the same seeds (same few-shot draw, head
initialisation and data order), so its interval is the t interval of the per-seed differences.
A difference whose interval contains 0 is *unresolved*.

A fit *failed* when its final train accuracy stays within ``study.fail_margin`` of chance (or it
diverged): a baseline that never leaves chance is broken, not beaten. A fit that learned but ends
below ``study.fit_threshold`` train accuracy is *underfit*: flagged, not excluded.

The learning rate of an arm is the grid value with the highest seed-mean validation accuracy
(DomainBed's training-domain validation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as st


def mean_ci(
    values: Sequence[float],
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """``{"mean", "lo", "hi", "n", "sd"}`` of ``values``: the Student-t interval of the mean,
    ``mean ± t_{(1+c)/2, n-1} · sd / √n``; ``lo``/``hi`` are None with fewer than two values (no
    interval exists) and equal the mean when every value is the same. ``bounds``: the range the
    quantity cannot leave (an accuracy's [0, 1]); the interval is clipped to it."""
    x = np.asarray([float(v) for v in values], dtype=float)
    n = int(x.size)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0, "sd": None}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1, "sd": None}
    sd = float(x.std(ddof=1))
    if sd == 0.0 or not math.isfinite(sd):
        lo = hi = mean
    else:
        lo, hi = (
            float(v) for v in st.t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n))
        )
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return {"mean": mean, "lo": lo, "hi": hi, "n": n, "sd": sd}


def paired_gain(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = (-1.0, 1.0),
) -> dict[str, Any]:
    """The paired difference ``a − b`` (per seed) with its t interval and ``resolved``: whether the
    interval excludes 0 (False with fewer than two pairs). ``bounds``: as :func:`mean_ci` (a
    difference of accuracies lies in [−1, 1])."""
    if len(a) != len(b):
        raise ValueError(f"paired_gain needs the same seeds on both arms ({len(a)} vs {len(b)})")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    ci = mean_ci(diffs, confidence, bounds)
    ci["resolved"] = resolved(ci)
    return ci


def resolved(ci: Mapping[str, Any]) -> bool:
    """Whether an interval excludes 0 (a difference we may call a win or a loss)."""
    lo, hi = ci.get("lo"), ci.get("hi")
    if lo is None or hi is None:
        return False
    return bool(lo > 0 or hi < 0)


def select_lr(val_acc: Mapping[float, Sequence[float]]) -> float:
    """The learning rate whose seed-mean validation accuracy is highest; ties go to the smaller
    rate (the more conservative step). A rate whose fits diverged (NaN) never wins unless every
    rate did."""

    def score(lr: float) -> float:
        m = float(np.mean(val_acc[lr])) if len(val_acc[lr]) else float("nan")
        return m if math.isfinite(m) else -math.inf

    return max(sorted(val_acc), key=lambda lr: (score(lr), -lr))


def underfit(train_acc: float | None, threshold: float) -> bool:
    """A fit that learned, but left more than ``1 − threshold`` of its own training set
    misclassified (a weaker flag than :func:`failed`: its comparison stands, read it knowing)."""
    return train_acc is not None and math.isfinite(float(train_acc)) and train_acc < threshold


def failed(train_acc: float | None, num_classes: int, margin: float) -> bool:
    """A fit that did not learn its own training set: final train accuracy within ``margin`` of
    chance (``1 / num_classes``), or not a number (diverged)."""
    if train_acc is None or not math.isfinite(float(train_acc)):
        return True
    return float(train_acc) < 1.0 / num_classes + margin
