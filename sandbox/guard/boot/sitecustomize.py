"""tv-sandbox: installs the Python guard in every interpreter of a sandboxed step.

This folder is put first on ``PYTHONPATH`` by ``sandbox.guard.child_env``; it holds only this file.
The ``sandbox`` package is loaded from its location (two folders up), without adding the sandbox's
own site-packages to ``sys.path``: the child may be another interpreter or venv. Then the user's
own ``sitecustomize``, the next one on ``sys.path``, runs as it would have.

Fails closed: any failure prints one line to stderr and exits with status 1 -- never a silent,
unguarded step.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _boot() -> None:
    import gc

    # No collection while the guard's modules load (a few thousand objects, no garbage): CPU
    # on every sandboxed interpreter's start-up. The user's code -- its own sitecustomize
    # first -- gets the collector back, without those objects (below).
    collecting = gc.isenabled()
    gc.disable()
    try:
        here = _guard()
    finally:
        # What exists now -- the interpreter's start-up, site's and the guard's objects, all of
        # them as long-lived as the process -- goes to the collector's permanent generation: no
        # collection of the step's ever traverses it again, the one at exit included (~3 ms of
        # every sandboxed interpreter's run, half the guard's cost). As gc.freeze() is meant:
        # also fewer copy-on-write pages in the step's forked children. gc.get_objects() no
        # longer lists these (gc.unfreeze() brings them back).
        gc.freeze()
        if collecting:
            gc.enable()
    _chain(here)


def _guard() -> str:
    """Install the guard; return this file's folder."""
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    image = None
    try:
        pkg = os.path.dirname(os.path.dirname(here))
        if "sandbox" not in sys.modules:
            # The guard from its image (sandbox/_image.py, built by the launcher) when that
            # matches the package's sources: one read instead of a search of sys.path a module,
            # the package itself included. Its reader is sandbox._lazy, run from the package's
            # own .pyc (importlib's loader, no search) before any module of the package exists.
            from _frozen_importlib_external import SourceFileLoader

            reader: dict[str, Any] = {"__name__": "sandbox._lazy"}  # a scratch copy: the module
            code = SourceFileLoader("sandbox._lazy", pkg + "/_lazy.py").get_code("sandbox._lazy")
            exec(code or "", reader)  # loads from the image, if any, like the rest
            image = reader["load_image"](os.environ.get("TV_SANDBOX_GUARD_IMAGE"), pkg)
            if image is not None:
                sys.meta_path.insert(0, image)
                import sandbox
            else:
                # Only the package's __init__ (which imports nothing but sandbox._lazy) runs
                # while its parent folder is on sys.path; later imports go through
                # sandbox.__path__. (importlib.util would do it without touching sys.path, at a
                # few milliseconds of this interpreter's start-up.)
                parent = os.path.dirname(pkg)
                sys.path.insert(0, parent)
                try:
                    import sandbox
                finally:
                    sys.path.remove(parent)
            if sandbox.__spec__.loader is image:  # load_image took only files of pkg
                ours = sandbox.__file__ == pkg + "/__init__.py"
            else:
                found = os.path.dirname(sandbox.__file__ or "")
                ours = os.path.realpath(found) == os.path.realpath(pkg)
            if not ours:
                raise ImportError(f"'sandbox' resolved to {sandbox.__file__}, not the package at {pkg}")
        from sandbox.guard.bootstrap import boot

        boot()
    except BaseException as e:  # fail closed on anything, SystemExit included
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        line = f"tv-sandbox: the Python guard could not start ({msg}); refusing to run unguarded\n"
        os.write(2, line.encode())
        os._exit(1)
    finally:
        if image is not None:  # the user's imports never see it
            sys.meta_path.remove(image)
    return here


def _chain(here: str) -> None:
    """Run the user's own sitecustomize (the next on sys.path) as module ``sitecustomize``."""
    import os
    import sys

    # importlib's own modules, already loaded by every interpreter (``import importlib`` would
    # cost this start-up ~1.5 ms)
    from _frozen_importlib import module_from_spec
    from _frozen_importlib_external import PathFinder

    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    if not any(_may_hold(p) for p in path):
        return  # the usual case, known from a few stats instead of listing every folder
    mine = os.path.realpath(__file__)
    while True:
        spec = PathFinder.find_spec("sitecustomize", path)
        if spec is None or spec.loader is None:
            return
        found = os.path.dirname(spec.origin or "")
        if os.path.realpath(spec.origin or "") != mine:
            break
        # this file again, through another spelling of its folder: look past that entry
        rest = [p for p in path if os.path.realpath(p or os.curdir) != os.path.realpath(found)]
        if rest == path:
            return
        path = rest
    mod = module_from_spec(spec)
    sys.modules["sitecustomize"] = mod
    spec.loader.exec_module(mod)



def _may_hold(entry: str) -> bool:
    """Whether the ``sys.path`` entry may hold a module ``sitecustomize``: a folder with one of
    the names the path finder would load it from; anything else that exists (a zip file) may;
    what does not exist (a missing folder, a path hook's token) cannot."""
    import os
    from _frozen_importlib_external import BYTECODE_SUFFIXES, EXTENSION_SUFFIXES, SOURCE_SUFFIXES

    folder = entry or os.curdir
    try:
        if not os.path.isdir(folder):
            os.stat(folder)
            return True
    except OSError:
        return False
    for suffix in ("", *SOURCE_SUFFIXES, *BYTECODE_SUFFIXES, *EXTENSION_SUFFIXES):
        try:
            os.stat(os.path.join(folder, "sitecustomize" + suffix))
            return True
        except OSError:
            pass
    return False


_boot()
