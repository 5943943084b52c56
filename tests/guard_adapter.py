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
from dataclasses import dataclass
from typing import Any

from cases import Case
from conftest import RunEnv

CONTENT = b"written through the python guard\n"
UTIME = 1_000_000


@dataclass(frozen=True)
class Props:
    """The other end of a two-path verb, both in the run folder (allowed)."""

    src: str  # a fresh file of the run: what rename_to moves and links point at
    dst: str  # where rename_from and hardlink_from put the new name


def prepare(env: RunEnv, case: Case) -> Props:
    """Make the props of ``case`` (unguarded, before any snapshot is taken)."""
    with open(os.path.join(env.ws.run_storage, "data", f"src-{case.id}.txt"), "wb") as fh:
        fh.write(b"source of " + case.id.encode() + b"\n")
    data = os.path.join(env.ws.run_dir, "data")
    return Props(os.path.join(data, f"src-{case.id}.txt"), os.path.join(data, f"dst-{case.id}"))


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
