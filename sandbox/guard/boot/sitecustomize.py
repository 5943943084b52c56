"""tv-sandbox: installs the Python guard in every interpreter of a sandboxed step.

This folder is put first on ``PYTHONPATH`` by ``sandbox.guard.child_env``; it holds only this file.
The ``sandbox`` package is loaded from its location (two folders up), without adding the sandbox's
own site-packages to ``sys.path``: the child may be another interpreter or venv. Then the user's
own ``sitecustomize``, the next one on ``sys.path``, runs as it would have.

Fails closed: any failure prints one line to stderr and exits with status 1 -- never a silent,
unguarded step.
"""


def _boot() -> None:
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        from importlib.util import module_from_spec, spec_from_file_location

        pkg = os.path.dirname(os.path.dirname(here))
        if "sandbox" not in sys.modules:
            spec = spec_from_file_location(
                "sandbox", os.path.join(pkg, "__init__.py"), submodule_search_locations=[pkg]
            )
            if spec is None or spec.loader is None:
                raise ImportError(f"no sandbox package at {pkg}")
            mod = module_from_spec(spec)
            sys.modules["sandbox"] = mod
            spec.loader.exec_module(mod)
        from sandbox.guard.bootstrap import boot

        boot()
    except BaseException as e:  # fail closed on anything, SystemExit included
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        line = f"tv-sandbox: the Python guard could not start ({msg}); refusing to run unguarded\n"
        os.write(2, line.encode())
        os._exit(1)
    _chain(here)


def _chain(here: str) -> None:
    """Run the user's own sitecustomize (the next on sys.path) as module ``sitecustomize``."""
    import os
    import sys
    from importlib.machinery import PathFinder
    from importlib.util import module_from_spec

    mine = os.path.realpath(here)
    path = [p for p in sys.path if os.path.realpath(p or os.curdir) != mine]
    spec = PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    mod = module_from_spec(spec)
    sys.modules["sitecustomize"] = mod
    spec.loader.exec_module(mod)


_boot()
