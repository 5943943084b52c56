"""The verbs of ``tests/cases.py`` as calls on a :class:`sandbox.fs.SandboxFileSystem`.

Every verb is expressible through the sandbox filesystem over a local backend:

===============  ==============================================================================
write            ``pipe_file(path, data)``
append           ``open(path, "ab")``
truncate         ``open(path, "wb")`` on the existing file (fsspec has no truncate; ``wb`` is it)
delete           ``rm_file(path)``
mkdir / rmdir    ``mkdir(path, create_parents=False)`` / ``rmdir(path)``
rename_from/_to  ``mv(path, elsewhere)`` / ``mv(elsewhere, path)``
symlink          ``symlink(src, path)``   -- fsspec's LocalFileSystem extension, routed by us
hardlink         ``link(src, path)``      -- idem
hardlink_from    ``link(path, elsewhere)``
chmod            ``chmod(path, 0o600)``   -- idem
utime            ``touch(path, truncate=False)`` (an existing file: only its times change)
read             ``cat_file(path)``
===============  ==============================================================================

``AbstractFileSystem`` itself has no chmod, symlink or link: over a backend without them (memory,
object stores) these verbs raise NotImplementedError -- after nothing, never around the check.
"""

from __future__ import annotations

from typing import Any

from cases import Case, Props
from conftest import RunEnv

from sandbox.fs import SandboxFileSystem

CONTENT = b"written through fsspec\n"

#: Verbs that need a method outside fsspec's AbstractFileSystem (present on LocalFileSystem).
LOCAL_ONLY = frozenset({"symlink", "hardlink", "hardlink_from", "chmod"})


def perform(fs: SandboxFileSystem, env: RunEnv, case: Case, props: Props) -> Any:
    """Do ``case.verb`` on ``case.path`` (workspace-absolute: fsspec has no cwd of its own)."""
    p = env.abspath(case.path)
    v = case.verb
    if v == "write":
        fs.pipe_file(p, CONTENT)
    elif v == "append":
        with fs.open(p, "ab") as fh:
            fh.write(CONTENT)
    elif v == "truncate":
        with fs.open(p, "wb"):
            pass
    elif v == "delete":
        fs.rm_file(p)
    elif v == "mkdir":
        fs.mkdir(p, create_parents=False)
    elif v == "rmdir":
        fs.rmdir(p)
    elif v == "rename_from":
        fs.mv(p, props.dst)
    elif v == "rename_to":
        fs.mv(props.src, p)
    elif v == "symlink":
        fs.symlink(props.src, p)
    elif v == "hardlink":
        fs.link(props.src, p)
    elif v == "hardlink_from":
        fs.link(p, props.dst)
    elif v == "chmod":
        fs.chmod(p, 0o600)
    elif v == "utime":
        fs.touch(p, truncate=False)
    elif v == "read":
        return fs.cat_file(p)
    else:  # a new verb in cases.py must get an fsspec form here
        raise AssertionError(f"no fsspec form for verb {v!r}")
    return None
