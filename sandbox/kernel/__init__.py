"""The kernel layer: Landlock and a private mount namespace, applied to a step process before exec.

Re-exports only. Names load on first use (``ctypes`` is not imported until something needs it),
so ``import sandbox.kernel`` stays cheap for the CLI. The modules are ``probing`` and ``spawning``,
not ``probe`` and ``spawn``: importing a submodule sets the package attribute of its name, which
would make ``sandbox.kernel.probe`` the module or the function depending on import order.
"""

from __future__ import annotations

from sandbox._lazy import attributes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sandbox.kernel.landlock import abi_version, restrict_writes
    from sandbox.kernel.plan import AppliedLayers, Bind, KernelPlan, Overlay, apply, missing_layers
    from sandbox.kernel.probing import KernelSupport, describe, probe
    from sandbox.kernel.spawning import Child, ChildResult, spawn

_WHERE = {
    "abi_version": "landlock",
    "restrict_writes": "landlock",
    "AppliedLayers": "plan",
    "Bind": "plan",
    "KernelPlan": "plan",
    "Overlay": "plan",
    "apply": "plan",
    "missing_layers": "plan",
    "KernelSupport": "probing",
    "describe": "probing",
    "probe": "probing",
    "Child": "spawning",
    "ChildResult": "spawning",
    "spawn": "spawning",
}

__all__ = [
    "AppliedLayers",
    "Bind",
    "Child",
    "ChildResult",
    "KernelPlan",
    "KernelSupport",
    "Overlay",
    "abi_version",
    "apply",
    "describe",
    "missing_layers",
    "probe",
    "restrict_writes",
    "spawn",
]


__getattr__ = attributes(__name__, _WHERE)
