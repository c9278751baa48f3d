"""Linear probe as the self-supervised literature runs it (SimCLR, MAE, solo-learn's linear eval).

Features are extracted once from the frozen backbone, standardised with the train split's mean and
standard deviation, and a multinomial logistic regression

    p(y | f) = softmax(W z + b),   z = (f − μ) / σ,   min  Σ_i −log p(y_i | f_i) + ‖W‖² / (2C)

is fitted by L-BFGS (scikit-learn's ``LogisticRegression``) for every ``C`` of a grid; the ``C``
with the best validation accuracy is kept (ties: the smaller ``C``, the stronger penalty). The
standardisation is folded into the weights, ``W' = W / σ``, ``b' = b − W' μ``, so the probe is an
ordinary linear head on the raw features: it sits on the backbone as a
:class:`~transferlab.models.cnn.Classifier` head, and WiSE-FT interpolates from it.

Before the features are extracted, the backbone's BatchNorm statistics are re-estimated on the
fit's own (unlabelled) training inputs (:func:`recalibrate_batchnorm`), for every backbone alike: a
random-init backbone has no statistics of its own (its buffers are 0 / 1), and a pre-trained one's
describe the source, so without this the floor and the arms would compare statistics, not weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn


@dataclass
class Probe:
    weight: torch.Tensor  #: ``(classes, features)``: the head on the raw (unstandardised) features
    bias: torch.Tensor  #: ``(classes,)``
    C: float  #: the selected inverse L2 strength
    val_acc: float
    train_acc: float
    val_by_c: dict[float, float]  #: validation accuracy of every C tried


def fit_probe(
    f_train: np.ndarray,
    y_train: np.ndarray,
    f_val: np.ndarray,
    y_val: np.ndarray,
    cs: Sequence[float],
    num_classes: int,
    max_iter: int = 1000,
) -> Probe:
    """The probe of the module docstring; ``num_classes`` rows even when the fit is binary."""
    scaler = StandardScaler().fit(f_train)
    xs, vs = scaler.transform(f_train), scaler.transform(f_val)
    best: tuple[float, float, LogisticRegression] | None = None
    val_by_c: dict[float, float] = {}
    for c in sorted(float(c) for c in cs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = LogisticRegression(C=c, max_iter=max_iter).fit(xs, y_train)
        acc = float(clf.score(vs, y_val))
        val_by_c[c] = acc
        if best is None or acc > best[1]:
            best = (c, acc, clf)
    assert best is not None, "fit_probe needs at least one C"
    c, acc, clf = best
    coef, icpt = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: sigmoid(w·z + b) = softmax([−w/2, w/2]·z + [−b/2, b/2])
        coef, icpt = np.vstack([-coef / 2, coef / 2]), np.concatenate([-icpt / 2, icpt / 2])
    weight = np.zeros((num_classes, coef.shape[1]))
    bias = np.full(num_classes, -1e4)  # a class the train split lacks is never predicted
    weight[clf.classes_] = coef / scaler.scale_
    bias[clf.classes_] = icpt - (coef / scaler.scale_) @ scaler.mean_
    return Probe(
        weight=torch.as_tensor(weight, dtype=torch.float32),
        bias=torch.as_tensor(bias, dtype=torch.float32),
        C=c,
        val_acc=acc,
        train_acc=float(clf.score(xs, y_train)),
        val_by_c=val_by_c,
    )


class _BatchStats(nn.Module):
    """``module`` with the BatchNorm layers ``bns`` kept in training mode whatever ``eval()`` says,
    so that a route's own batched forward (which calls ``eval()``) updates their statistics."""

    def __init__(self, module: nn.Module, bns: list[nn.Module]) -> None:
        super().__init__()
        self.module = module
        self.bns = bns

    def train(self, mode: bool = True) -> _BatchStats:
        super().train(mode)
        for m in self.bns:
            m.train(True)
        return self

    def forward(self, *args: Any) -> Any:
        return self.module(*args)


@torch.no_grad()
def recalibrate_batchnorm(
    backbone: nn.Module, forward: Callable[[nn.Module], Any], trainable_only: bool = False
) -> int:
    """Replace the running statistics of every BatchNorm layer of ``backbone`` (``trainable_only``:
    of those whose affine weights train, i.e. not in a frozen block) by the cumulative average over
    the batches ``forward(module)`` runs through it (e.g. the route's batched predict on the fit's
    training inputs). Returns the number of layers recalibrated (0: nothing to do).

    Hand-written because ``torch.optim.swa_utils.update_bn`` wants a loader of model-ready
    tensors, while each route prepares its inputs in its own predict (uint8 images to floats,
    padding trimmed); it computes the same cumulative average."""
    bns = [
        m
        for m in backbone.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and not (trainable_only and m.weight is not None and not m.weight.requires_grad)
    ]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    forward(_BatchStats(backbone, bns))
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    backbone.eval()
    return len(bns)
