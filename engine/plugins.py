"""Plugins: modules named in PARETOSCOPE_PLUGINS, imported once, that register runtimes, optimizations or tasks.

A team adds its own runtime (or the test suite its misbehaving doubles) without editing this package: the module
registers itself with the same decorators the built-in ones use. Every process of a study imports them (the
environment passes to the worker and its children), so a registered runtime exists wherever a cell runs.
"""

from __future__ import annotations

import importlib
import os

from engine.errors import UserError

ENV = "PARETOSCOPE_PLUGINS"
_LOADED: set[str] = set()


def load_plugins() -> list[str]:
    """Import each module named in PARETOSCOPE_PLUGINS (comma-separated) that is not imported yet; their names."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    for name in names:
        if name in _LOADED:
            continue
        _LOADED.add(name)  # before the import: a plugin importing engine.runtimes must not load itself twice
        try:
            importlib.import_module(name)
        except ImportError as exc:
            _LOADED.discard(name)
            raise UserError(f"the plugin module '{name}' in {ENV} cannot be imported ({exc}); install it or "
                            f"remove it from {ENV}") from exc
    return names
