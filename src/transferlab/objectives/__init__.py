"""Pre-training objectives: pure loss functions (``losses``) and the LightningModules that
orchestrate them, one module per objective. Every module exposes ``.backbone``, the trunk that the
finetune stage loads through :func:`transferlab.models.checkpoint.load_backbone`."""
