"""The part of :mod:`ctypes` the kernel layer uses, built straight on its C module ``_ctypes``.

Why: ``import ctypes`` costs ~3 ms (it defines some thirty C types, function-pointer classes and
loads ``pythonapi``), and the launcher pays it before it forks the step's keeper -- on the
critical path of every ``tv-sandbox run``. The kernel layer needs a handful of integer and
pointer types, structures, ``byref``/``sizeof``, ``errno`` and functions of the C library;
those come from ``_ctypes`` itself (what ``ctypes/__init__.py`` re-exports), defined here the
way ``ctypes`` defines them, for ~0.5 ms. ``tests/test_ffi.py`` checks each against ``ctypes``.
Only this process's own C library is reachable (``CDLL(None)``): no library loading by name.
"""

from __future__ import annotations

__all__ = [
    "Structure",
    "addressof",
    "byref",
    "c_char",
    "c_char_p",
    "c_int",
    "c_int32",
    "c_long",
    "c_uint",
    "c_uint32",
    "c_uint64",
    "c_ulong",
    "c_void_p",
    "create_string_buffer",
    "get_errno",
    "libc",
    "memmove",
    "sizeof",
]

TYPE_CHECKING = False
if TYPE_CHECKING:  # to a type checker these are ctypes' own: the same interface
    from ctypes import CDLL as _Library
    from ctypes import (
        Structure,
        addressof,
        byref,
        c_char,
        c_char_p,
        c_int,
        c_int32,
        c_long,
        c_uint,
        c_uint32,
        c_uint64,
        c_ulong,
        c_void_p,
        create_string_buffer,
        get_errno,
        memmove,
        sizeof,
    )

    def libc() -> _Library: ...

else:
    from _ctypes import (
        FUNCFLAG_CDECL,
        FUNCFLAG_USE_ERRNO,
        RTLD_LOCAL,
        Structure,
        _memmove_addr,
        _SimpleCData,
        addressof,
        byref,
        dlopen,
        get_errno,
        sizeof,
    )
    from _ctypes import CFuncPtr as _CFuncPtr

    def _simple(name: str, code: str) -> type:
        # what ctypes/__init__.py writes as ``class c_int(_SimpleCData): _type_ = "i"``
        return type(name, (_SimpleCData,), {"_type_": code, "__module__": __name__})

    # The type codes are those of ctypes/__init__.py (and of the struct module) on Linux (LP64 and
    # ILP32 alike: 'i' is 32 bits, 'l' the word, 'Q' 64 bits).
    c_int, c_uint, c_long, c_ulong = (
        _simple("c_int", "i"),
        _simple("c_uint", "I"),
        _simple("c_long", "l"),
        _simple("c_ulong", "L"),
    )
    c_uint64, c_char = _simple("c_uint64", "Q"), _simple("c_char", "c")
    c_char_p, c_void_p = _simple("c_char_p", "z"), _simple("c_void_p", "P")
    c_int32 = c_int
    c_uint32 = c_uint

    class _LibcFunction(_CFuncPtr):
        """A C function with ``errno`` saved after every call (``CDLL(..., use_errno=True)``)."""

        _flags_ = FUNCFLAG_CDECL | FUNCFLAG_USE_ERRNO
        _restype_ = c_int

    class _Library:
        """``ctypes.CDLL(None, use_errno=True)``: attributes are the library's functions, each made
        once (so ``argtypes``/``restype`` set on it stay)."""

        def __init__(self) -> None:
            self._handle = dlopen(None, RTLD_LOCAL)

        def __getattr__(self, name: str) -> _LibcFunction:
            if name.startswith("__"):
                raise AttributeError(name)
            fn = _LibcFunction((name, self))
            setattr(self, name, fn)
            return fn

    def libc() -> _Library:
        """The C library this interpreter is linked against, as ``ctypes.CDLL(None, use_errno=True)``."""
        return _Library()

    def create_string_buffer(init: bytes, size: int) -> object:
        """A zeroed ``char[size]`` holding ``init`` (``ctypes.create_string_buffer``)."""
        if len(init) > size:
            raise ValueError(f"{len(init)} bytes do not fit a buffer of {size}")
        buf = (c_char * size)()
        buf.value = init
        return buf

    def memmove(dst: int, src: bytes, count: int) -> None:
        """``memmove(dst, src, count)`` into memory at address ``dst`` (``ctypes.memmove``)."""
        _memmove(dst, src, count)

    class _MemmoveFunction(_CFuncPtr):
        _flags_ = FUNCFLAG_CDECL
        _restype_ = c_void_p
        _argtypes_ = (c_void_p, c_char_p, c_ulong)

    _memmove = _MemmoveFunction(_memmove_addr)
