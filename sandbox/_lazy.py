"""Lazy package attributes (PEP 562): a package re-exports names whose modules load on first use.

``sandbox.kernel`` (ctypes) and ``sandbox.guard`` (the patching machinery) are imported by the
launcher for one or two names each; loading the rest would cost start-up time.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


def attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` is ``package.<where[name]>.name``, imported
    on first use and then kept in the package's namespace."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        full = f"{package}.{module}"
        __import__(full)  # importlib.import_module, without importing importlib (start-up time)
        value = getattr(sys.modules[full], name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
