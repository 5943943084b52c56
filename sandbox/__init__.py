"""tv-sandbox: run legacy data-pipeline scripts unchanged, with every output in the run folder and
the shared lakehouse out of reach. See README.md and docs/architecture.md.

The public face, for library use::

    import sandbox

    spec = sandbox.load_policy(profile="production")          # a PolicySpec, validated whole
    policy = spec.bind(host="/srv/host", run_id="R1")          # a Policy: decide(path, op)
    with sandbox.install(policy):                              # the Python guard, in this process
        ...
    fs = sandbox.SandboxFileSystem(policy=policy)              # the fsspec enforcer

Each name loads its module on first use (PEP 562): every sandboxed interpreter imports this
package at start-up, and every import of a submodule runs this file first, so it imports nothing
-- not even ``__future__`` (see :mod:`sandbox._lazy`).
"""

from sandbox._lazy import attributes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sandbox.errors import AccessDenied
    from sandbox.export import export_run, verify
    from sandbox.fs import SandboxFileSystem
    from sandbox.guard import install
    from sandbox.loader import load_policy
    from sandbox.policy import Policy, PolicySpec
    from sandbox.rules import Action, Op
    from sandbox.run import Run, StepSpec

#: name -> the module (below ``sandbox``) that defines it.
_WHERE = {
    "load_policy": "loader",
    "Policy": "policy",
    "PolicySpec": "policy",
    "Op": "rules",
    "Action": "rules",
    "AccessDenied": "errors",
    "install": "guard",
    "SandboxFileSystem": "fs",
    "export_run": "export",
    "verify": "export",
    "Run": "run",
    "StepSpec": "run",
}

__all__ = [
    "AccessDenied",
    "Action",
    "Op",
    "Policy",
    "PolicySpec",
    "Run",
    "SandboxFileSystem",
    "StepSpec",
    "export_run",
    "install",
    "load_policy",
    "verify",
]

__getattr__ = attributes(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
