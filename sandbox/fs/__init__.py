"""The fsspec enforcer: :class:`SandboxFileSystem`, the run's policy over any fsspec filesystem
(protocol ``sandbox``; entry point ``sandbox.fs:SandboxFileSystem``).

- ``_filesystem.py`` -- the fsspec API: every public method through the one check (the only module
  of the package that imports fsspec);
- ``_routing.py`` -- the policy side, a mixin: the check (resolve, decide, raise on DENY) and the
  execution of a decision (read-your-writes, copy-up, settling a redirect, removals) by
  :mod:`sandbox._execute` -- the Python guard's executor too -- over the backend's methods
  (``BackendFiles``).
"""

from __future__ import annotations

from sandbox.fs._filesystem import ENV_POLICY, LAYER, PROTOCOL, SandboxFileSystem, load_policy

__all__ = ["ENV_POLICY", "LAYER", "PROTOCOL", "SandboxFileSystem", "load_policy"]
