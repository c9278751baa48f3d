"""Routes: one module per kind of input behind one interface (:class:`~.base.Route`).

:func:`get_route` builds the route a stage works on from ``routes.<name>._target_`` in the config
(``transferlab.schema.RoutesConf``), so a new route is a module and a config entry, not edits across the
stages.
"""

from __future__ import annotations

from hydra.utils import get_class
from omegaconf import DictConfig

from transferlab.errors import ConfigError
from transferlab.routes.base import Route

__all__ = ["Route", "get_route"]


def get_route(cfg: DictConfig, name: str | None = None) -> Route:
    """The :class:`Route` named ``name`` (default: ``cfg.route``), built from its ``_target_``."""
    name = str(cfg.route if name is None else name)
    routes = cfg.get("routes") or {}
    if name not in routes:
        raise ConfigError(f"route={name!r} is not allowed; choose one of: {', '.join(routes)}")
    cls = get_class(str(routes[name]._target_))
    if not (isinstance(cls, type) and issubclass(cls, Route)):
        raise ConfigError(f"routes.{name}._target_ must name a transferlab Route subclass")
    return cls(cfg)
