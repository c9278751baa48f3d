"""FLOPs and GEMMs of a step, and this machine's dense-matmul FLOP/s at those GEMM shapes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.common import rnd


@dataclass(frozen=True)
class Gemm:
    """One dense matmul ``(batch × m × k) @ (batch × k × n)``."""

    batch: int
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n


def _sdpa_flops() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for CPU flash attention, which ``FlopCounterMode`` does not know (torch 2.13)."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def fwd(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
        return fc.sdpa_flop_count(q, k, v)

    def bwd(go: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
        return fc.sdpa_backward_flop_count(go, q, k, v)

    return {
        aten._scaled_dot_product_flash_attention_for_cpu: fwd,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd,
    }


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` (e.g. one forward + backward) as torch's FlopCounterMode counts them:
    matmuls, convolutions and attention; elementwise work is not counted (the usual MFU rule)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_sdpa_flops()) as counter:
        fn()
    return int(counter.get_total_flops())


def record_gemms(fn: Callable[[], Any]) -> list[Gemm]:
    """The dense GEMMs ``fn()`` lowers to, one entry per call: matmuls as they are, convolutions as
    their im2col GEMMs (forward, grad-input, grad-weight), attention as its batched GEMMs."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    found: list[Gemm] = []

    def conv(x: Any, w: Any, out: Any, transposed: bool, groups: int, mask: Sequence[bool]) -> None:
        kk = math.prod(w.shape[2:])
        if not transposed:  # weight (Cout, Cin/g, k...): out = cols (M×K) @ Wᵀ (K×N)
            m, k, n = out.shape[0] * math.prod(out.shape[2:]), w.shape[1] * kk, w.shape[0] // groups
        else:  # weight (Cin, Cout/g, k...): the col2im GEMM on the input
            m, k, n = x.shape[0] * math.prod(x.shape[2:]), w.shape[0] // groups, w.shape[1] * kk
        if mask[0]:
            found.append(Gemm(groups, m, k, n))
        if mask[1]:  # grad-input: dOut (M×N) @ W (N×K)
            found.append(Gemm(groups, m, n, k))
        if mask[2]:  # grad-weight: dOutᵀ (N×M) @ cols (M×K)
            found.append(Gemm(groups, n, m, k))

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
            out = func(*args, **(kwargs or {}))
            op = func.overloadpacket
            if op is aten.mm:
                a, b = args[0], args[1]
                found.append(Gemm(1, a.shape[0], a.shape[1], b.shape[1]))
            elif op is aten.addmm:
                a, b = args[1], args[2]
                found.append(Gemm(1, a.shape[0], a.shape[1], b.shape[1]))
            elif op in (aten.bmm, aten.baddbmm):
                a, b = (args[0], args[1]) if op is aten.bmm else (args[1], args[2])
                found.append(Gemm(a.shape[0], a.shape[1], a.shape[2], b.shape[2]))
            elif op is aten.convolution:
                conv(args[0], args[1], out, bool(args[6]), int(args[8]), (True, False, False))
            elif op is aten.convolution_backward:
                go, x, w = args[0], args[1], args[2]
                m = list(args[10])
                conv(x, w, go, bool(args[7]), int(args[9]), (False, m[0], m[1]))
            elif op is aten._scaled_dot_product_flash_attention_for_cpu:
                q, k, v = args[0], args[1], args[2]
                bh, t, s = q.shape[0] * q.shape[1], q.shape[2], k.shape[2]
                found.extend([Gemm(bh, t, q.shape[3], s), Gemm(bh, t, s, v.shape[3])])
            elif op is aten._scaled_dot_product_flash_attention_for_cpu_backward:
                q, k, v = args[1], args[2], args[3]
                bh, t, s, d, dv = (
                    q.shape[0] * q.shape[1],
                    q.shape[2],
                    k.shape[2],
                    q.shape[3],
                    v.shape[3],
                )
                found.extend(  # scores recomputed, then dScores, dV, dQ, dK (as torch counts)
                    [
                        Gemm(bh, t, d, s),
                        Gemm(bh, t, dv, s),
                        Gemm(bh, s, t, dv),
                        Gemm(bh, t, s, d),
                        Gemm(bh, d, t, s),
                    ]
                )
            return out

    with Recorder():
        fn()
    return found


def time_gemm(
    g: Gemm, min_s: float = 0.1, device: str = "cpu", dtype: Any = None, reps: int = 5
) -> float:
    """Best seconds of one ``torch.mm``/``bmm`` at this shape over at least ``reps`` runs and
    ``min_s`` seconds: the machine's capability, as little disturbed by other load as we can."""
    import torch

    dtype = dtype or torch.float32
    shape_a = (g.batch, g.m, g.k) if g.batch > 1 else (g.m, g.k)
    shape_b = (g.batch, g.k, g.n) if g.batch > 1 else (g.k, g.n)
    a = torch.randn(shape_a, device=device, dtype=dtype)
    b = torch.randn(shape_b, device=device, dtype=dtype)
    mm = torch.bmm if g.batch > 1 else torch.mm
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    mm(a, b)
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps or time.perf_counter() - start < min_s:
        t = time.perf_counter()
        mm(a, b)
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak(
    gemms: Sequence[Gemm], min_s: float = 0.1, device: str = "cpu", dtype: Any = None
) -> dict[str, Any]:
    """Dense-matmul FLOP/s at the model's own shapes: Σ flops / Σ time over the step's GEMMs."""
    counts: dict[Gemm, int] = {}
    for g in gemms:
        counts[g] = counts.get(g, 0) + 1
    per_shape = []
    flops = secs = 0.0
    for g, c in counts.items():
        t = time_gemm(g, min_s, device, dtype)
        flops += c * g.flops
        secs += c * t
        per_shape.append(
            {"bmkn": [g.batch, g.m, g.k, g.n], "calls": c, "gflop_s": rnd(g.flops / t / 1e9, 1)}
        )
    return {
        "flops_per_s": flops / secs if secs else 0.0,
        "gemm_s_per_step": secs,
        "shapes": per_shape,
    }
