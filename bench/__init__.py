"""`make bench`: framework overhead, CPU efficiency, data path, pipeline and scaling figures.

Every figure is a ratio or a time measured side by side in this run, on this machine, with the
project's ``params.yaml`` (default models, default batch sizes, real data built into a temporary
directory by the data stage):

- **overhead** (:mod:`bench.overhead`) — the stage's own Lightning fit (``make_trainer`` with its
  callbacks, MLflow logger and progress bar, run through ``pretrain.run`` / ``run_fit``)
  against a bare PyTorch loop on the same module, loaders, optimiser, schedule, seeds and number of
  steps. The bare loop is swapped in for ``make_trainer`` inside the very same stage code, so both
  arms build identical models from identical data; the final weights are compared bit for bit.
- **efficiency** (:mod:`bench.mfu`, counting in :mod:`bench.flops`) — model FLOP/s in
  pre-training (FLOPs of one fwd+bwd step counted with ``FlopCounterMode``, divided by the stage's
  median step time) ÷ the dense-matmul FLOP/s of this machine at the GEMM shapes that step lowers
  to (convolutions as im2col GEMMs, attention as batched GEMMs), timed here with the same threads.
- **data path** (:mod:`bench.datapath`) — loader samples/s against model samples/s, and the share
  of a step spent waiting for its batch.
- **pipeline** (:mod:`bench.pipeline`, :mod:`bench.sweep`) — the last ``make run`` recorded in
  ``reports/run_timing.json`` by :mod:`transferlab.run_timing` (per-stage times from its MLflow
  runs), a no-op ``dvc repro`` (only when ``dvc status`` says the pipeline is up to date), each
  stage's start-up imports, and a sweep's overhead per trial beyond training.
- **scaling** (:mod:`bench.scaling`) — time per epoch as the pre-training set grows and as the
  model widens, with the growth exponent of a log-log fit.

Writes ``reports/bench.json`` and prints a table (:mod:`bench.report`); run from the project root::

    python -m bench                                  # everything (~5 min on 2 cores)
    python -m bench --sections overhead efficiency
    python -m bench --pruning                        # also the Optuna pruning benchmark

On a CUDA machine (``torch.cuda.is_available()``), section ``gpu`` measures the pre-training MFU of
``trainer=gpu`` (bf16-mixed, torch.compile, pinned memory) at larger model sizes.
"""
