"""transferlab: a reproducible experiment pipeline for studying pre-training and fine-tuning."""

__version__ = "0.1.0"
