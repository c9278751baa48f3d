"""Errors a user can cause and fix. Each carries one line that names the problem and what is allowed.

The CLI prints ``transferlab: error: <message>`` and exits with status 2 for these; anything else is
a bug and exits 1 (full traceback with ``TRANSFERLAB_DEBUG=1`` or ``HYDRA_FULL_ERROR=1``).
"""


class TransferlabError(Exception):
    """Base class for errors with a one-line, user-facing message."""


class ConfigError(TransferlabError):
    """A config key has a value that is not allowed."""


class DataSourceError(TransferlabError):
    """A data source is missing or corrupt; the message names the package that provides it."""


class CheckpointError(TransferlabError):
    """A checkpoint is missing, truncated, untrusted or of another architecture."""


class TrainingError(TransferlabError):
    """Training diverged (NaN/inf loss) or could not proceed."""
