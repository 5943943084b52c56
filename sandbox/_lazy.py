"""How the package's modules load, for start-up time: lazy package attributes (PEP 562), and
module images.

Lazy attributes: a package re-exports names whose modules load on first use. ``sandbox.kernel``
(ctypes) and ``sandbox.guard`` (the patching machinery) are imported by the launcher for one or
two names each; loading the rest would cost start-up time.

Images (:func:`load_image`): the compiled modules an interpreter of ours is known to load, in
one file that :mod:`sandbox._image` builds -- one read instead of a search of ``sys.path`` per
module (a ``stat`` per entry and folder, the ``__pycache__`` lookup, an open and a read). A
sandboxed interpreter loads its guard from one (``guard/boot/sitecustomize.py``), the launcher
the rest of ``tv-sandbox run`` (:func:`sandbox._image.install`). Stdlib only, nothing imported
at the top beyond ``sys``: this module is imported before any image is in place -- and without
``from __future__ import annotations``, whose statement imports the stdlib's ``__future__`` at
load time (~0.25 ms of a start-up), so the annotations naming what is imported only for type
checkers are quoted. The modules in images are compiled without that statement.
"""

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


def attributes(package: str, where: "Mapping[str, str]") -> "Callable[[str], Any]":
    """A module ``__getattr__`` for ``package``: ``name`` is ``package.<where[name]>.name``, imported
    on first use and then kept in the package's namespace."""

    def __getattr__(name: str) -> "Any":
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        full = f"{package}.{module}"
        __import__(full)  # importlib.import_module, without importing importlib (start-up time)
        value = getattr(sys.modules[full], name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


class Image:
    """A meta path finder and loader serving modules from an image (:func:`load_image`)."""

    def __init__(self, table: "dict[str, tuple[str, bool, memoryview, str]]") -> None:
        # name -> (source path, is a package, its marshalled code in the image, its __cached__)
        self.table = table

    def find_spec(self, name: str, path: "Any" = None, target: "Any" = None) -> "Any":
        entry = self.table.get(name)
        if entry is None:
            return None
        from _frozen_importlib import ModuleSpec  # importlib's own, loaded in every interpreter

        spec = ModuleSpec(name, self, origin=entry[0], is_package=entry[1])  # type: ignore[arg-type]
        spec.has_location = True  # __file__ is the source's, as with the path finder
        spec.cached = entry[3]  # as the path finder's, known beforehand: not derived a module
        if entry[1]:
            spec.submodule_search_locations = [entry[0].rpartition("/")[0]]
        return spec

    def create_module(self, spec: "Any") -> None:
        return None

    def exec_module(self, module: "Any") -> None:
        import marshal

        exec(marshal.loads(self.table[module.__name__][2]), module.__dict__)


#: The image file's format (:mod:`sandbox._image` writes it); 2: code names its source by its
#: absolute path; 3: code compiled without the ``from __future__ import annotations`` statement,
#: the header's length first and the modules' code in one block after it, the path of each
#: module's ``.pyc`` in the header (:func:`parse_image`); 4: without docstrings.
IMAGE_FORMAT = 4


def parse_image(data: bytes) -> "tuple[int, str, tuple[tuple[Any, ...], ...], memoryview]":
    """An image file's content as (format, the ``sys.version`` it was built by, its header, its
    code block). The header has one entry a module: its name, source path, whether it is a
    package, the source's ``mtime_ns`` and size, the offset and length of its marshalled code in
    the block, and its ``__cached__`` (the ``.pyc`` path the path finder would name). Layout:
    the header's length (8 bytes, little-endian), the header (``marshal``), the block. One read
    and no copy: each module is unmarshalled from its slice of the block when it is imported
    (``marshal.load`` from a file reads an object in many small reads).
    Raises ``ValueError``, ``EOFError`` or ``TypeError`` on another layout."""
    import marshal

    view = memoryview(data)
    n = int.from_bytes(view[:8], "little")
    if not 0 < n <= len(view) - 8:
        raise ValueError("not a module image")
    fmt, version, keys = marshal.loads(view[8 : 8 + n])
    return fmt, version, keys, view[8 + n :]


def load_image(path: str | None, package_dir: str) -> Image | None:
    """The finder of the image at ``path`` when it answers for the package at ``package_dir`` as
    its sources are now -- every module a file of that folder with the source's recorded
    ``mtime_ns`` and size, as a ``.pyc`` is checked -- else None: then the modules load from the
    package as always. Never raises."""
    if not path:
        return None
    import os

    try:
        with open(path, "rb") as fh:
            fmt, version, keys, block = parse_image(fh.read())
        if fmt != IMAGE_FORMAT or version != sys.version:
            return None
        table = {}
        for name, origin, is_pkg, mtime_ns, size, start, length, cached in keys:
            inside = origin.startswith(package_dir + "/") and os.path.normpath(origin) == origin  # no ".."
            if not inside or not 0 <= start <= start + length <= len(block):
                return None
            st = os.stat(origin)
            if st.st_mtime_ns != mtime_ns or st.st_size != size:
                return None
            table[name] = (origin, is_pkg, block[start : start + length], cached)
    except Exception:  # unreadable, truncated, another format: the package as always
        return None
    return Image(table)
