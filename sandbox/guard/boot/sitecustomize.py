"""tv-sandbox: installs the Python guard in every interpreter of a sandboxed step.

This folder is put first on ``PYTHONPATH`` by ``sandbox.guard.child_env``; it holds only this file.
The ``sandbox`` package is loaded from its location (two folders up), without adding the sandbox's
own site-packages to ``sys.path``: the child may be another interpreter or venv. Then the user's
own ``sitecustomize``, the next one on ``sys.path``, runs as it would have.

Fails closed: any failure prints one line to stderr and exits with status 1 -- never a silent,
unguarded step.
"""


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
        image = _image(os.environ.get("TV_SANDBOX_GUARD_IMAGE"), pkg)
        if image is not None:
            sys.meta_path.insert(0, image)
        if "sandbox" not in sys.modules:
            # Only the package's __init__ (which imports nothing) runs while its parent folder is
            # on sys.path; later imports go through sandbox.__path__. (importlib.util would do it
            # without touching sys.path, at a few milliseconds of this interpreter's start-up.)
            parent = os.path.dirname(pkg)
            sys.path.insert(0, parent)
            try:
                import sandbox
            finally:
                sys.path.remove(parent)
            if os.path.realpath(os.path.dirname(sandbox.__file__ or "")) != os.path.realpath(pkg):
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


class _Image:
    """A meta path finder and loader serving the guard's modules from the launcher's image
    (sandbox/guard/_image.py): one read instead of a search of sys.path per module."""

    def __init__(self, table: dict) -> None:  # type: ignore[type-arg]
        self.table = table

    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        entry = self.table.get(name)
        if entry is None:
            return None
        from _frozen_importlib import ModuleSpec

        spec = ModuleSpec(name, self, origin=entry[0], is_package=entry[1])  # type: ignore[arg-type]
        spec.has_location = True  # __file__ is the source's, as with the path finder
        if entry[1]:
            spec.submodule_search_locations = [entry[0].rpartition("/")[0]]
        return spec

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return None

    def exec_module(self, module) -> None:  # type: ignore[no-untyped-def]
        import marshal

        exec(marshal.loads(self.table[module.__name__][2]), module.__dict__)


def _image(path: str | None, pkg: str) -> _Image | None:
    """The finder of the image at ``path`` when it answers for the package at ``pkg`` as its
    sources are now (each one's time and size, as a .pyc is checked), else None: then the
    modules load from the package as always."""
    if not path:
        return None
    import marshal
    import os
    import sys

    try:
        with open(path, "rb") as fh:
            fmt, version, keys = marshal.load(fh)
            if fmt != 2 or version != sys.version:  # sandbox.guard._image.FORMAT
                return None
            codes = marshal.load(fh)
        table = {}
        for (name, origin, is_pkg, mtime_ns, size), code in zip(keys, codes, strict=True):
            if not origin.startswith(pkg + "/"):
                return None
            st = os.stat(origin)
            if st.st_mtime_ns != mtime_ns or st.st_size != size:
                return None
            table[name] = (origin, is_pkg, code)
    except Exception:  # unreadable, truncated, another format: the package as always
        return None
    return _Image(table)


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
