"""One mutation, run once through the Python guard and once through ``SandboxFileSystem``, each on a
freshly reset copy of the same world, and what each did: denied, failed or succeeded -- and every
file it changed (``tests/test_properties.py`` holds the two to agree).

The world (real files, built once per test module, ``DEPTH`` folders below a temp folder so that
a ``..`` climbing out of it by mistake still lands where the test looks): the sample host plus a
host-only ``reports/x.csv``, a folder outside everything, a production workspace of run ``R1`` and,
in the run folder, ``data/x.csv``, ``data/src.txt`` (what ``rename_to`` moves and the links point
at), an empty ``reports/`` and symlinks ``to_lake``, ``to_lake_file``, ``to_outside``, ``to_host``
(at its top and in ``data/``); and in the host (:data:`HOST_LINKS`), symlinks to files and to
folders, inside and outside the mounts: ``scripts/step_alias.py`` (a file beside it),
``scripts/to_lake`` (a mount), ``scripts/to_outside`` and ``scripts/outside_file`` (outside
everything), ``reports/x_alias.csv`` (a host-only file), ``data/lakehouse/lake_alias.csv`` (a file
of the mount), ``data/lakehouse/to_reports`` (out of the mount, into the host) and
``export/to_lake`` (from one mount into the other). Only the run folder's storage and the temp dir are writable; they are
restored from a pristine copy (``shutil.copytree``) after every call that changed them, so both
enforcers start from the same bytes, and a snapshot of the whole world after the call says what
changed where.

Each verb is written the way the two APIs spell it (``tests/guard_adapter.py``,
``tests/fs_adapter.py``), with the differences of the APIs themselves evened out on the guard side
so that only enforcement can differ:

============= =========================================== =====================================
verb          guard (real ``open``/``os`` calls)          fsspec
============= =========================================== =====================================
write         ``open(p, "wb")``                           ``pipe_file(p, data)``
append        ``open(p, "ab")``                           ``open(p, "ab")``
delete        ``os.remove(p)``                            ``rm_file(p)``
mkdir         ``os.mkdir(p)``                             ``mkdir(p, create_parents=False)``
rmdir         ``os.rmdir(p)``                             ``rmdir(p)``
rename_from   ``os.rename(p, DST)``                       ``mv(p, DST)``
rename_to     ``os.rename(SRC, p)``, into ``p`` when it   ``mv(SRC, p)`` (fsspec moves into an
              is a folder                                 existing folder)
chmod         ``os.chmod(p, 0o600)``                      ``chmod(p, 0o600)``
touch         ``os.utime(p)``, ``open(p, "a")`` when it   ``touch(p, truncate=False)`` (what
              is missing                                  LocalFileSystem.touch does)
symlink       ``os.symlink(SRC, p)``                      ``symlink(SRC, p)``
hardlink      ``os.link(SRC, p)``                         ``link(SRC, p)``
hardlink_from ``os.link(p, DST)``                         ``link(p, DST)``
============= =========================================== =====================================

fsspec takes ``str`` paths only: a ``bytes`` path goes to the guard as bytes and to fsspec
``os.fsdecode``-d; and it drops a trailing ``/``, so both get the path without it.

``KNOWN`` lists the differences that remain (neither changes a protected place), each with why;
``known_shapes`` tells from the path, the pristine world and the shared ``Policy`` alone whether a
call falls in one.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox._paths import resolve
from sandbox.errors import AccessDenied
from sandbox.fs import SandboxFileSystem
from sandbox.guard import install
from sandbox.loader import load_policy
from sandbox.policy import Action, Op, Policy
from sandbox.samples import make_host
from sandbox.workspace import Workspace, create

CONTENT = b"written by a property test\n"

VERBS = (
    "write",
    "append",
    "delete",
    "mkdir",
    "rmdir",
    "rename_from",
    "rename_to",
    "chmod",
    "touch",
    "symlink",
    "hardlink",
    "hardlink_from",
)

#: Path components and prefixes the random paths are built from ({...}: a world's folders).
COMPONENTS = [
    "..",
    ".",
    "",
    "data",
    "lakehouse",
    "export",
    "R1",
    "reports",
    "x.csv",
    "to_lake",
    "to_lake_file",
    "to_outside",
    "to_host",
    "artifacts",
    "summaries",
    "runs",
    "BINANCE_BTCUSDT_1d.csv",
    "scripts",
    "legacy_step.py",
    "step_alias.py",
    "outside_file",
    "x_alias.csv",
    "lake_alias.csv",
    "to_reports",
]

#: The host's symlinks (path under the host -> link text; ``{outside}`` the outside folder).
HOST_LINKS: tuple[tuple[str, str], ...] = (
    ("scripts/step_alias.py", "legacy_step.py"),
    ("scripts/to_lake", "../data/lakehouse"),
    ("scripts/to_outside", "{outside}"),
    ("scripts/outside_file", "{outside}/file.txt"),
    ("reports/x_alias.csv", "x.csv"),
    ("data/lakehouse/lake_alias.csv", "BINANCE_BTCUSDT_1d.csv"),
    ("data/lakehouse/to_reports", "../../reports"),
    ("export/to_lake", "../data/lakehouse"),  # from one mount into the other
)
PREFIXES = ["", "{ws}/", "{host}/", "{run}/", "{tmp}/", "/proc/self/cwd/", "{outside}/", "//"]

Entry = tuple[Any, ...]
Snapshot = dict[str, Entry]

#: How far below its own temp folder a world is built: a ``..`` that climbs out of the world (a
#: bug) still lands in a folder the test snapshots, never in the machine's /tmp or /.
DEPTH = 9


def _entry(p: str) -> Entry:
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(p))
    if stat.S_ISREG(st.st_mode):
        with open(p, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()[:16]
        return ("file", digest, stat.S_IMODE(st.st_mode), st.st_nlink, st.st_mtime_ns)
    # a folder's mtime moves with every entry made in it: the entries themselves are compared
    return ("dir" if stat.S_ISDIR(st.st_mode) else "other", stat.S_IMODE(st.st_mode))


def changes(before: Snapshot, after: Snapshot) -> dict[str, Entry]:
    """What changed, without the times: a new entry with its content, a removed one, or the fields
    that differ (a file's new mtime shows as ``mtime``, not as its value: two runs differ in time)."""
    out: dict[str, Entry] = {}
    for key in sorted(before.keys() | after.keys()):
        b, a = before.get(key), after.get(key)
        if b == a:
            continue
        if b is None:
            assert a is not None
            out[key] = ("added", *(a[:-1] if a[0] == "file" else a))
        elif a is None:
            out[key] = ("removed", b[0])
        elif a[0] != b[0] or a[0] != "file":
            out[key] = ("replaced", *(a[:-1] if a[0] == "file" else a))
        else:
            names = ("kind", "content", "mode", "nlink", "mtime")
            out[key] = (
                "changed",
                *(n if n == "mtime" else (n, a[i]) for i, n in enumerate(names) if a[i] != b[i]),
            )
    return out


class World:
    """One host, one workspace and the run folder described in the module docstring, built
    ``DEPTH`` folders below a fresh folder of ``parent``."""

    def __init__(self, parent: Path) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="world-", dir=parent))
        self.root = root = self.top.joinpath(*["n"] * DEPTH)
        root.mkdir(parents=True)
        self.host = make_host(root / "host")
        (self.host / "reports").mkdir()
        (self.host / "reports" / "x.csv").write_text("host-only\n")
        self.outside = root / "outside"
        (self.outside / "empty_dir").mkdir(parents=True)
        (self.outside / "file.txt").write_text("outside\n")
        for rel, text in HOST_LINKS:
            os.symlink(text.replace("{outside}", str(self.outside)), self.host / rel)
        spec = load_policy(profile="production")
        (root / "b").mkdir()
        self.ws: Workspace = create(self.host, "R1", spec.layout, base_dir=root / "b")
        self.policy: Policy = self.ws.bind(spec)
        run = Path(self.ws.run_storage)
        lake = self.ws.mount_targets["lakehouse"]
        (run / "data" / "x.csv").write_text("run's own\n")
        (run / "data" / "src.txt").write_text("source\n")
        for folder in (run, run / "data"):
            for name, target in (
                ("to_lake", lake),
                ("to_lake_file", os.path.join(lake, "BINANCE_BTCUSDT_1d.csv")),
                ("to_outside", str(self.outside)),
                ("to_host", str(self.host)),
            ):
                os.symlink(target, folder / name)
        #: what a run may change (restored after a call that changed it); nothing else may change
        self.writable = {"run": self.ws.run_storage, "tmp": self.ws.tmp}
        self.src = os.path.join(self.ws.run_dir, "data", "src.txt")  # through the workspace
        self.dst = os.path.join(self.ws.run_dir, "data", "dst")
        self._template = root / "template"
        for label, path in self.writable.items():
            shutil.copytree(path, self._template / label, symlinks=True)
        self._base = os.path.relpath(self.ws.base, root) + "/"
        self.pristine = self.snapshot()
        self.broken = False  # a protected place changed: build a new world
        self.dirty = False  # a writable place changed: reset before the next call

    def expand(self, prefix: str, comps: list[str]) -> str:
        p = prefix.format(
            ws=self.ws.root, host=self.host, run=self.ws.run_dir, tmp=self.ws.tmp, outside=self.outside
        )
        return p + "/".join(comps)

    def _key(self, p: str) -> str:
        """``p`` relative to the world's root, the workspace's base folder left out (``run/...``,
        ``tmp/...``, ``ws/...``): the same key in every world."""
        rel = os.path.relpath(p, self.root)
        return rel[len(self._base) :] if rel.startswith(self._base) else rel

    def snapshot(self) -> Snapshot:
        """Key -> kind, content hash, mode, links, mtime of everything from the world's top folder
        down (links never followed)."""
        out: Snapshot = {}
        for dirpath, dirnames, filenames in os.walk(self.top):
            for name in [".", *dirnames, *filenames]:
                p = dirpath if name == "." else os.path.join(dirpath, name)
                out[self._key(p)] = _entry(p)
        return out

    def clean(self) -> None:
        """Reset the writable folders when the last call changed them."""
        if self.dirty:
            self.reset()

    def reset(self) -> None:
        """The writable folders back to their pristine bytes (times and modes included)."""
        self.dirty = False
        for label, path in self.writable.items():
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):  # the temp dir itself may be removed or replaced: it is allowed
                os.remove(path)
            shutil.copytree(self._template / label, path, symlinks=True)

    def remove(self) -> None:
        shutil.rmtree(self.top, ignore_errors=True)


class Worlds:
    """The world of a test module, rebuilt when a call changed what it must not (the test that saw
    it fails; the examples after it get a clean world)."""

    def __init__(self, parent: Path) -> None:
        self.parent = parent
        self._world: World | None = None

    def get(self) -> World:
        if self._world is not None and self._world.broken:
            self._world.remove()
            self._world = None
        if self._world is None:
            self._world = World(self.parent)
        return self._world

    def close(self) -> None:
        if self._world is not None:
            self._world.remove()
            self._world = None


# -- the verbs ---------------------------------------------------------------------------------------


def _guard_write(p: Any, w: World) -> None:
    with open(p, "wb") as fh:
        fh.write(CONTENT)


def _guard_append(p: Any, w: World) -> None:
    with open(p, "ab") as fh:
        fh.write(CONTENT)


def _guard_rename_to(p: Any, w: World) -> None:
    dst = p
    if os.path.isdir(dst):  # as fsspec's mv (and shutil.move): into an existing folder
        name = posixpath.basename(w.src)
        dst = os.path.join(dst, os.fsencode(name) if isinstance(dst, bytes) else name)
    os.rename(w.src, dst)


def _guard_touch(p: Any, w: World) -> None:
    try:  # what LocalFileSystem.touch(truncate=False) does on the place the sandbox picked
        os.utime(p)
    except FileNotFoundError:
        open(p, "a").close()


GUARD: dict[str, Callable[[Any, World], None]] = {
    "write": _guard_write,
    "append": _guard_append,
    "delete": lambda p, w: os.remove(p),
    "mkdir": lambda p, w: os.mkdir(p),
    "rmdir": lambda p, w: os.rmdir(p),
    "rename_from": lambda p, w: os.rename(p, w.dst),
    "rename_to": _guard_rename_to,
    "chmod": lambda p, w: os.chmod(p, 0o600),
    "touch": _guard_touch,
    "symlink": lambda p, w: os.symlink(w.src, p),
    "hardlink": lambda p, w: os.link(w.src, p),
    "hardlink_from": lambda p, w: os.link(p, w.dst),
}


def _fs_append(fs: SandboxFileSystem, p: str, w: World) -> None:
    with fs.open(p, "ab") as fh:
        fh.write(CONTENT)


FSSPEC: dict[str, Callable[[SandboxFileSystem, str, World], None]] = {
    "write": lambda fs, p, w: fs.pipe_file(p, CONTENT),
    "append": _fs_append,
    "delete": lambda fs, p, w: fs.rm_file(p),
    "mkdir": lambda fs, p, w: fs.mkdir(p, create_parents=False),
    "rmdir": lambda fs, p, w: fs.rmdir(p),
    "rename_from": lambda fs, p, w: fs.mv(p, w.dst),
    "rename_to": lambda fs, p, w: fs.mv(w.src, p),
    "chmod": lambda fs, p, w: fs.chmod(p, 0o600),
    "touch": lambda fs, p, w: fs.touch(p, truncate=False),
    "symlink": lambda fs, p, w: fs.symlink(w.src, p),
    "hardlink": lambda fs, p, w: fs.link(w.src, p),
    "hardlink_from": lambda fs, p, w: fs.link(p, w.dst),
}

assert set(GUARD) == set(FSSPEC) == set(VERBS)


# -- running and comparing -------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one enforcer did: ``denied`` (AccessDenied, with its rule), ``failed`` (another
    OSError: the call itself failed, as it would unsandboxed; its class is shown, not compared: the
    two APIs raise differently, e.g. ``shutil.Error`` from fsspec's ``mv``) or ``ok``; and every
    change it left, anywhere in the world (links' text with ``{root}`` for the world's root)."""

    kind: str
    rule: str
    error: str = field(compare=False)
    changed: tuple[tuple[str, Entry], ...] = ()

    def escaped(self) -> list[str]:
        """The changes outside the run folder's storage and the temp dir."""
        return [k for k, _v in self.changed if k.split("/", 1)[0] not in ("run", "tmp")]

    def __str__(self) -> str:
        head = " ".join(x for x in (self.kind, self.rule, self.error) if x)
        return "\n".join([head] + [f"    {k}: {v}" for k, v in self.changed])


def _rooted(v: Entry, root: str) -> Entry:
    return tuple(x.replace(root, "{root}") if isinstance(x, str) else x for x in v)


def _run(w: World, call: Callable[[], None]) -> Outcome:
    """``call`` on a pristine world, cwd = the workspace (the steps' cwd, and what /proc/self/cwd
    names), and what it did."""
    w.clean()
    kind, rule, error = "ok", "", ""
    cwd = os.getcwd()
    os.chdir(w.ws.root)
    w.dirty = True
    try:
        call()
    except AccessDenied as e:
        kind, rule = "denied", str(e.rule)
    except OSError as e:
        kind, error = "failed", type(e).__name__
    finally:
        os.chdir(cwd)
    changed = changes(w.pristine, w.snapshot())
    w.dirty = bool(changed)  # nothing changed (folder times aside): nothing to reset
    o = Outcome(kind, rule, error, tuple((k, _rooted(v, str(w.root))) for k, v in changed.items()))
    if o.escaped():
        w.broken = True
    return o


def via_guard(w: World, verb: str, raw: str, as_bytes: bool) -> Outcome:
    """``verb`` on ``raw`` (as bytes when ``as_bytes``) through real ``os``/``open`` calls under
    ``install(policy)``."""
    arg: str | bytes = os.fsencode(raw) if as_bytes else raw

    def call() -> None:
        with install(w.policy):
            GUARD[verb](arg, w)

    return _run(w, call)


def via_fsspec(w: World, verb: str, raw: str) -> Outcome:
    """``verb`` on ``raw`` through ``SandboxFileSystem`` over the local filesystem, same policy (a
    relative path is relative to the cwd there too)."""
    return _run(w, lambda: FSSPEC[verb](SandboxFileSystem(policy=w.policy), raw, w))


@dataclass(frozen=True)
class Call:
    """One generated call: ``verb`` on ``prefix`` + ``comps`` (``{...}`` the world's folders),
    as bytes to the guard when ``as_bytes``."""

    verb: str
    prefix: str
    comps: tuple[str, ...]
    as_bytes: bool = False

    def raw(self, w: World) -> str:
        return strip_slashes(w.expand(self.prefix, list(self.comps)))


def strip_slashes(raw: str) -> str:
    """fsspec drops a trailing ``/`` (``_strip_protocol``, LocalFileSystem's too): ``x/`` *is*
    ``x`` there, and "x, a folder" to the kernel. Both enforcers get the path without it."""
    return raw.rstrip("/") or raw[:1]


def run_guard(worlds: Worlds, c: Call) -> Outcome:
    w = worlds.get()
    return via_guard(w, c.verb, c.raw(w), c.as_bytes)


def run_fsspec(worlds: Worlds, c: Call) -> Outcome:
    w = worlds.get()
    return via_fsspec(w, c.verb, c.raw(w))


# -- known disagreements ---------------------------------------------------------------------------

#: (guard op, does it follow the last component) per verb, as the guard's wrappers decide them
GUARD_OPS: dict[str, tuple[Op, bool]] = {
    "write": (Op.WRITE, True),
    "append": (Op.WRITE, True),
    "delete": (Op.DELETE, False),
    "mkdir": (Op.MKDIR, False),
    "rmdir": (Op.RMDIR, False),
    "rename_from": (Op.RENAME, False),
    "rename_to": (Op.RENAME, False),
    "chmod": (Op.METADATA, True),
    "touch": (Op.METADATA, True),  # WRITE when the name is new: the same decisions in production
    "symlink": (Op.LINK, False),
    "hardlink": (Op.LINK, False),
    "hardlink_from": (Op.LINK, False),  # link(2) does not follow a symlink source
}

#: name -> which enforcer is wrong, and why. tests/test_properties.py pins each with a strict xfail.
KNOWN: dict[str, str] = {
    "fsspec-acts-on-the-resolved-path": (
        "fsspec calls the backend on the *resolved* path (sandbox/fs/_routing.py _route/_mutable/_removable), "
        "which realpath() has folded: `missing/..`, `file/..` or a last `.`/`..` the kernel refuses "
        "(and the guard, which passes the caller's path, fails with) succeed under fsspec; "
        "`rm_file('link/.')` removes the link itself. Decided and acted on agree: not an escape."
    ),
}


def physical(p: str, follow: bool) -> str:
    """What the kernel reaches for absolute ``p`` (``os.path.realpath`` of the path as written: a
    ``..`` after a symlink climbs from the link's target)."""
    if follow:
        return os.path.realpath(p)
    head, tail = posixpath.split(p)
    if tail in ("", ".", ".."):  # a trailing "/" follows the last link too
        return os.path.realpath(p)
    return posixpath.join(os.path.realpath(head or "/"), tail)


def _trips(p: str) -> bool:
    """Is there a ``..`` after something that is not a folder in absolute ``p`` (``missing/..``,
    ``file/..``)? The kernel stops there (ENOENT/ENOTDIR); realpath, and so ``resolve``, folds it."""
    comps = p.split("/")
    return any(c == ".." and not os.path.isdir("/".join(comps[:i]) or "/") for i, c in enumerate(comps))


def _folds(p: str) -> bool:
    """Does ``resolve`` fold away a part of absolute ``p`` that the kernel trips on when it creates,
    removes or renames the last name: ``_trips``, or a last ``.``/``..``?"""
    return p.rsplit("/", 1)[-1] in (".", "..") or _trips(p)


def _model(w: World, p: str, op: Op, follow: bool) -> tuple[str, Action, str, str]:
    """(resolved path, action, rule, the place acted on) of ``op`` on ``p``, from the shared
    ``Policy``: a redirect settled, and denied when it does not settle on an allowed place (as
    both enforcers do)."""
    real = resolve(p, follow=follow)
    d = w.policy.decide(real, op)
    if d.action is not Action.REDIRECT:
        return real, d.action, d.rule, real
    d = w.policy.settle(d, op, lambda t: resolve(t, follow=follow))
    if d.action is not Action.REDIRECT or d.target is None:
        return real, d.action, d.rule, real
    place = resolve(d.target, follow=follow)
    if w.policy.decide(place, op).action is not Action.ALLOW:
        return real, Action.DENY, d.rule, real
    return real, d.action, d.rule, place


def _merged(w: World, p: str) -> str:
    """Where a read of ``p`` looks (read-your-writes: the run folder's copy first; when that copy
    leads to a host path -- an alias of the workspace path -- that path's copy in turn, as far as
    ``Policy.settle`` follows a mutation's: the deepest that exists)."""
    chain = [resolve(p)]
    for _ in range(4):
        d = w.policy.decide(chain[-1], Op.READ)
        if d.action is not Action.REDIRECT or d.target is None:
            break
        chain.append(resolve(d.target))
    return next((t for t in reversed(chain[1:]) if os.path.exists(t)), chain[0])


def known_shapes(w: World, c: Call) -> tuple[str, ...]:
    """The known disagreements (keys of ``KNOWN``) call ``c`` falls in; none: there the two
    enforcers must agree exactly. Worked out on the pristine world from the path and the shared
    ``Policy`` alone -- never from what either enforcer did."""
    w.clean()
    cwd = os.getcwd()
    os.chdir(w.ws.root)
    try:
        return tuple(sorted(_shapes(w, c.verb, posixpath.join(w.ws.root, c.raw(w)))))
    finally:
        os.chdir(cwd)


def _shapes(w: World, verb: str, p: str) -> set[str]:
    found: set[str] = set()
    op, follow = GUARD_OPS[verb]
    g_p = p  # the name the guard acts on
    if verb == "rename_to":  # into p when it is a folder: fsspec's mv, and the guard's verb
        into = posixpath.join(p, posixpath.basename(w.src))
        if os.path.isdir(_merged(w, p)):  # fsspec's isdir(), on the resolved path
            if _trips(p):  # the guard's is the kernel's: ENOENT/ENOTDIR, no folder
                found.add("fsspec-acts-on-the-resolved-path")
            else:
                g_p = into
    if _model(w, g_p, op, follow)[1] is Action.ALLOW and _folds(g_p):
        found.add("fsspec-acts-on-the-resolved-path")
    return found
