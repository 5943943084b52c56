"""The Python guard: ``open``, ``io``, ``os`` and (through them) ``pathlib``, ``shutil``,
``tempfile``, ``logging``... patched to execute the run policy's decisions, plus an audit-hook
backstop for what goes around them. Stdlib only; it never decides (``Policy.decide`` does).

- :func:`install` (``with install(policy): ...``) -- in this process (undoable, nestable; ``Guard.paused()``).
- :func:`child_env` -- the environment that makes every Python child install it at start-up
  (``sandbox/guard/boot/sitecustomize.py``, :func:`boot`).

How decisions are executed: :mod:`sandbox.guard._engine`; the wrappers: ``_os`` (mutators),
``_listing`` (reads that see the run's writes), ``_audit`` (the backstop), ``_install``.
"""

from __future__ import annotations

from sandbox._lazy import attributes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sandbox.guard._install import Guard, active, install
    from sandbox.guard.bootstrap import (
        BOOT_DIR,
        ENV_EVENTS,
        ENV_OVERLAY,
        ENV_POLICY,
        BootError,
        boot,
        child_env,
    )

# Names load on first use: a launcher needs ``child_env`` without the patching machinery.
_WHERE = {
    **dict.fromkeys(("Guard", "active", "install"), "_install"),
    **dict.fromkeys(
        ("BOOT_DIR", "ENV_EVENTS", "ENV_OVERLAY", "ENV_POLICY", "BootError", "boot", "child_env"),
        "bootstrap",
    ),
}

__all__ = [
    "BOOT_DIR",
    "ENV_EVENTS",
    "ENV_OVERLAY",
    "ENV_POLICY",
    "BootError",
    "Guard",
    "active",
    "boot",
    "child_env",
    "install",
]


__getattr__ = attributes(__name__, _WHERE)
