"""sandbox.kernel._ffi -- the part of ctypes the kernel layer uses -- against ctypes itself."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys

import pytest

from sandbox.kernel import _ffi


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (_ffi.c_int, ctypes.c_int),
        (_ffi.c_uint, ctypes.c_uint),
        (_ffi.c_long, ctypes.c_long),
        (_ffi.c_ulong, ctypes.c_ulong),
        (_ffi.c_uint64, ctypes.c_uint64),
        (_ffi.c_int32, ctypes.c_int32),
        (_ffi.c_uint32, ctypes.c_uint32),
        (_ffi.c_char, ctypes.c_char),
        (_ffi.c_char_p, ctypes.c_char_p),
        (_ffi.c_void_p, ctypes.c_void_p),
    ],
)
def test_each_type_is_the_ctypes_one(ours: type, theirs: type) -> None:
    assert _ffi.sizeof(ours) == ctypes.sizeof(theirs)
    if theirs in (ctypes.c_char, ctypes.c_char_p, ctypes.c_void_p):
        assert ours._type_ == theirs._type_  # type: ignore[attr-defined]
    else:  # ctypes names the 64-bit types by what they alias here ("L" or "Q"): same width, same sign
        assert ours(-1).value == theirs(-1).value


def test_libc_functions_keep_their_declarations_and_errno() -> None:
    lib = _ffi.libc()
    lib.syscall.restype = _ffi.c_long
    assert lib.syscall is lib.syscall  # made once: restype/argtypes stay
    assert lib.syscall(_ffi.c_long(39 if os.uname().machine == "x86_64" else 172)) == os.getpid()
    lib.close.argtypes = [_ffi.c_int]
    assert lib.close(-1) == -1
    assert _ffi.get_errno() == errno.EBADF
    with pytest.raises(AttributeError):
        lib.no_such_function_in_libc_xyz  # noqa: B018


def test_64_bit_arguments_pass_whole() -> None:
    """A variadic ``syscall`` with a ``c_long`` argument keeps its upper half (what _libc.syscall
    relies on): ``prctl(PR_GET_..)`` would not tell, so ``lseek`` to an offset beyond 2**32."""
    lib = _ffi.libc()
    lib.syscall.restype = _ffi.c_long
    r, w = os.pipe()
    try:
        nr = 8 if os.uname().machine == "x86_64" else 62  # lseek
        assert lib.syscall(_ffi.c_long(nr), _ffi.c_long(r), _ffi.c_long(2**33), _ffi.c_long(0)) == -1
        assert _ffi.get_errno() == errno.ESPIPE
    finally:
        os.close(r)
        os.close(w)


def test_structures_buffers_and_memmove() -> None:
    class Ours(_ffi.Structure):
        _fields_ = [("a", _ffi.c_uint64), ("b", _ffi.c_int32)]

    class Theirs(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint64), ("b", ctypes.c_int32)]

    assert _ffi.sizeof(Ours) == ctypes.sizeof(Theirs)
    assert bytes(Ours(7, -2)) == bytes(Theirs(7, -2))
    buf = _ffi.create_string_buffer(b"lo", 40)
    _ffi.memmove(_ffi.addressof(buf) + 16, (0x41).to_bytes(2, sys.byteorder), 2)
    want = ctypes.create_string_buffer(b"lo", 40)
    ctypes.memmove(ctypes.addressof(want) + 16, (0x41).to_bytes(2, sys.byteorder), 2)
    assert bytes(buf) == bytes(want)
    with pytest.raises(ValueError, match="do not fit"):
        _ffi.create_string_buffer(b"x" * 5, 4)


def test_the_kernel_layer_never_imports_ctypes() -> None:
    """What the launcher loads before it forks the keeper stays off ctypes' import cost."""
    code = (
        "import sys; import sandbox.kernel.spawning, sandbox.kernel.landlock, sandbox.kernel.mounts; "
        "from sandbox.kernel import _libc; _libc.libc(); print('ctypes' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
