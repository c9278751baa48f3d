"""Model architectures, one readable file per model.

Every image backbone follows one interface so that every objective produces a backbone that the
finetune stage loads the same way:

- ``backbone.blocks``: ``nn.ModuleList`` ordered from input to output; freezing depth ``k`` freezes
  ``blocks[:k]``.
- ``backbone.feature_dim``: size of the pooled feature vector.
- ``backbone.forward_map(x)``: the last block's spatial map ``(B, C, H', W')``.
- ``backbone(x)``: the pooled features ``(B, feature_dim)``.
"""
