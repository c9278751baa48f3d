"""transferlab's Hydra sweeper on Optuna 5: ``-m hydra/sweeper=transferlab_optuna``.

Hydra's own Optuna sweeper plugin pins ``optuna<3`` and has neither pruning nor a resume that
counts finished trials, so transferlab ships this one. It speaks the override grammar of Hydra's
sweepers (``choice``, ``range``, ``interval``, ``tag(log, ...)``), plus ``simplex(a, b, c)`` for
weights that must sum to one, and adds pruning, true resume, several workers on one storage and
MLflow parent/child runs.

Modules whose names start with ``_`` hold the Optuna-heavy code; Hydra's plugin scanner skips them,
so composing a config (``transferlab params``, ``dvc exp run``) never imports Optuna or MLflow.
"""

from hydra_plugins.transferlab_optuna_sweeper._job import TrialContext, trial_context

__all__ = ["TrialContext", "trial_context"]
