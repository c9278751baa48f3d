"""Registers transferlab's config schema (:mod:`transferlab.schema`) in Hydra's ConfigStore.

Hydra imports every module under the ``hydra_plugins`` namespace package while it discovers
plugins, which every composition does first (``@hydra.main``, the compose API, and so DVC's
``dvc exp run -S ...``, which composes ``conf/`` in its own process and never imports transferlab).
So ``conf/config.yaml``'s ``- transferlab_schema`` and the ``/schema/<group>/<option>`` entries of
the group option files resolve in any process that can import transferlab.
"""

from transferlab.schema import register

register()
