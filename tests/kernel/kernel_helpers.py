"""Helpers of the kernel-layer tests: run a command under a plan, snapshot a folder."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox.kernel import KernelPlan, spawn
from sandbox.kernel.spawning import ChildResult


@dataclass
class Ran:
    """A finished sandboxed command."""

    result: ChildResult
    out: str
    err: str

    @property
    def code(self) -> int:
        return self.result.exit_code


def run(
    argv: Sequence[str],
    plan: KernelPlan | None,
    cwd: str | os.PathLike[str] = "/",
    env: dict[str, str] | None = None,
) -> Ran:
    """Run ``argv`` through :func:`spawn` with ``plan``; capture stdout and stderr in anonymous
    temp files (open before the restriction, so the sandbox does not get in the way)."""
    stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            child = spawn(
                list(argv),
                env=dict(os.environ if env is None else env),
                cwd=os.fspath(cwd),
                plan=plan,
                stdin=stdin,
                stdout=out.fileno(),
                stderr=err.fileno(),
            )
        finally:
            os.close(stdin)
        result = child.wait()
        out.seek(0)
        err.seek(0)
        return Ran(result, out.read().decode(), err.read().decode())


def sh(script: str, plan: KernelPlan | None, cwd: str | os.PathLike[str] = "/") -> Ran:
    return run(["sh", "-c", script], plan, cwd)


def py(code: str, plan: KernelPlan | None, cwd: str | os.PathLike[str] = "/") -> Ran:
    """``python -I -S -c code``: an isolated interpreter no Python guard could ever see."""
    return run([sys.executable, "-I", "-S", "-c", code], plan, cwd)


def snapshot(root: str | os.PathLike[str]) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root``: kind, content hash, mode, mtime (ns), link target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            key = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[key] = ("link", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                out[key] = ("file", digest, st.st_mode, st.st_mtime_ns)
            else:
                out[key] = ("other", st.st_mode, st.st_mtime_ns)
    return out


def in_child(body: Callable[[], object]) -> str:
    """Run ``body()`` in a forked child (mount and Landlock changes are irrevocable: never in the
    test process); return ``"ok <repr of its result>"`` or ``"<ExceptionName> <errno> <message>"``."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            line = f"ok {body()!r}"
        except BaseException as e:
            line = f"{type(e).__name__} {getattr(e, 'errno', None)} {e}"
        os.write(wfd, " ".join(line.split()).encode())
        os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as fh:
        said = fh.read().decode()
    os.waitpid(pid, 0)
    return said
