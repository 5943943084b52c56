"""The verbs of ``tests/cases.py`` as plain Python calls, for the Python guard.

Every callable looks ``open``/``os.*`` up when it runs (never ``from os import remove``): the
patched names are what a legacy script calls.

===============  ===================================================
write            ``open(path, "wb").write(...)``
append           ``open(path, "ab").write(...)``
truncate         ``os.truncate(path, 0)``
delete           ``os.remove(path)``
mkdir / rmdir    ``os.mkdir(path)`` / ``os.rmdir(path)``
rename_from/_to  ``os.rename(path, elsewhere)`` / ``os.rename(elsewhere, path)``
symlink          ``os.symlink(src, path)``
hardlink         ``os.link(src, path)``
hardlink_from    ``os.link(path, elsewhere)``
chmod            ``os.chmod(path, 0o600)``
utime            ``os.utime(path, (UTIME, UTIME))``
read             ``open(path, "rb").read()``
===============  ===================================================
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from cases import Case, Props
from conftest import RunEnv

CONTENT = b"written through the python guard\n"
UTIME = 1_000_000


def _write(p: str, props: Props) -> None:
    with open(p, "wb") as fh:
        fh.write(CONTENT)


def _append(p: str, props: Props) -> None:
    with open(p, "ab") as fh:
        fh.write(CONTENT)


def _read(p: str, props: Props) -> bytes:
    with open(p, "rb") as fh:
        return fh.read()


VERBS: dict[str, Callable[[str, Props], Any]] = {
    "write": _write,
    "append": _append,
    "truncate": lambda p, props: os.truncate(p, 0),
    "delete": lambda p, props: os.remove(p),
    "mkdir": lambda p, props: os.mkdir(p),
    "rmdir": lambda p, props: os.rmdir(p),
    "rename_from": lambda p, props: os.rename(p, props.dst),
    "rename_to": lambda p, props: os.rename(props.src, p),
    "symlink": lambda p, props: os.symlink(props.src, p),
    "hardlink": lambda p, props: os.link(props.src, p),
    "hardlink_from": lambda p, props: os.link(p, props.dst),
    "chmod": lambda p, props: os.chmod(p, 0o600),
    "utime": lambda p, props: os.utime(p, (UTIME, UTIME)),
    "read": _read,
}


def perform(env: RunEnv, case: Case, props: Props) -> Any:
    """Do ``case.verb`` on ``case.path`` as written (relative paths: relative to the workspace)."""
    return VERBS[case.verb](env.path(case.path), props)
