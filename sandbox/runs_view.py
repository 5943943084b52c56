"""The view of a host's runs folder in a workspace without the overlay, kept between runs.

``ws/<runs>`` links to ``base/runs-view``: a link per entry of the host's runs folder and
``<ID> -> base/run``. Made afresh it costs a ``symlink`` per past run (~50-170 us on ext4), and
removing it an ``unlink`` each, so a run hands its view back to a pool beside the workspaces and
the next run of that host takes it: one ``rename`` each way, and a listing of the view and of the
host's runs folder to add the runs exported meanwhile and drop the ones removed (~0.5 us an entry,
no call per entry). Only a view of more than POOL_FROM runs is kept (fewer are made in a few
ms), so a host with a short history leaves nothing beside the workspaces. A pool is
``<parent>/tv-sandbox-runs-<key>`` (``key``: the runs folder's path hashed -- the seal of its
marker), this user's, 0700, with ``host`` (a private marker: a format line and the runs folder's
path; the sweep removes the pool once that folder is gone, and only a folder whose marker proves
it a pool, as a workspace's ``owner`` does: :func:`sweep_pool`) and up to POOL_SLOTS views named
``0``, ``1``... -- the sweep of dead launchers never takes it for a workspace (no ``owner``).
A view holds links only: one with anything else (the guard alone lets native code write there;
consolidate carried it out) is removed, never reused, and one not this user's, or writable by
others, is never taken. Under Landlock the view is outside the writable roots, so no step can
plant a link there that a later run's step would follow; with the guard alone, consolidate
carries out every link that is not the view's own, by its target (:func:`carry_out`).
"""

from __future__ import annotations

import errno
import os

from sandbox._paths import private_marker, rmtree

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sandbox.workspace import Workspace, _Store

VIEW = "runs-view"  # base/runs-view: the runs folder's view without the overlay
POOL_PREFIX = "tv-sandbox-runs-"  # + key: the pool of views of one host's runs folder
POOL_HOST = "host"  # in a pool: its marker, the runs folder its views show (see sweep_pool)
_POOL_MAGIC = "tv-sandbox runs-view pool v1"
POOL_SLOTS = 4  # views kept per runs folder: concurrent runs beyond this build their own
POOL_FROM = 32  # a view of fewer runs is not kept (cheap to make; nothing left beside workspaces)


def _host_runs(ws: Workspace) -> str:
    return os.path.join(ws.host, ws.layout.runs)


def _pool_key(host_runs: str) -> str:
    """A pool's name after its prefix: the seal of the runs folder its marker names."""
    from sandbox._digest import sha256_hex

    return sha256_hex(host_runs.encode("utf-8", "surrogateescape"))[:16]


def _pool(ws: Workspace) -> str | None:
    """The pool of views of this host's runs folder, or None when the name is taken by something
    that is not this user's own folder (never used then: no view is taken from or given to it)."""
    host_runs = _host_runs(ws)
    path = os.path.join(os.path.dirname(ws.base), POOL_PREFIX + _pool_key(host_runs))
    try:
        os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError:
        return None
    # A folder of that name is used only when its marker proves it this host's pool, as the
    # sweep removes one only then: a folder of the user's own named so (its "0" taken and
    # removed as a view), or one another user made between our look and our mkdir, is not.
    return path if _pool_runs(path) == host_runs else None


def _pool_runs(path: str) -> str | None:
    """The runs folder the pool ``path`` holds views of, when its marker proves it one: this
    user's private folder, a private regular file of one link in the pool's format, naming a
    runs folder whose seal is the folder's name; else None."""
    data = private_marker(path, POOL_HOST, 8192)
    if data is None:
        return None
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    if len(lines) != 3 or lines[0] != _POOL_MAGIC or lines[2]:
        return None
    host_runs = lines[1]
    if not host_runs.startswith("/") or POOL_PREFIX + _pool_key(host_runs) != os.path.basename(path):
        return None
    return host_runs


def _own_view(path: str) -> bool:
    """``path`` is a real folder of this user that no one else can write (so its links are ours)."""
    import stat

    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _take(pool: str, view: str) -> set[str] | None:
    """A view from ``pool`` moved to ``view``: the names of its links; None when there is none
    to take (or the one taken held anything but links: then removed)."""
    for slot in range(POOL_SLOTS):
        if not _own_view(os.path.join(pool, str(slot))):
            continue  # absent, or not a view we gave back (a link: left as it is)
        try:
            os.rename(os.path.join(pool, str(slot)), view)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        names: set[str] = set()
        ok = _own_view(view)
        if ok:
            with os.scandir(view) as it:
                for entry in it:
                    if not entry.is_symlink():
                        ok = False
                        break
                    names.add(entry.name)
        if ok:
            return names
        rmtree(view)
        return None
    return None


def fill(ws: Workspace) -> None:
    """Make ``base/runs-view`` (see above): taken from the pool and brought up to date, else new."""
    host_runs, view = _host_runs(ws), ws.runs_view
    pool = _pool(ws)
    have = _take(pool, view) if pool is not None else None
    if have is None:
        os.mkdir(view, 0o755)
        have = set()
    try:
        want = set(os.listdir(host_runs))
    except (FileNotFoundError, NotADirectoryError):
        want = set()
    for name in have - want:
        os.unlink(os.path.join(view, name))
    for name in want - have:
        os.symlink(os.path.join(host_runs, name), os.path.join(view, name))
    own = os.path.join(view, ws.run_id)
    if os.path.lexists(own):  # (a run of that name was exported meanwhile: the export will refuse)
        os.unlink(own)
    os.symlink(ws.run_storage, own)


def give_back(ws: Workspace) -> None:
    """Hand ``base/runs-view`` back to its pool without its ``<ID>`` link (best effort: a view
    that cannot go back is removed with the workspace)."""
    view = ws.runs_view
    if not _own_view(view):
        return
    try:
        pool = _pool(ws)
        if pool is None or (len(os.listdir(view)) <= POOL_FROM and not os.path.isdir(pool)):
            return
        own = os.path.join(view, ws.run_id)
        if os.path.islink(own):
            os.unlink(own)
        try:
            os.mkdir(pool, 0o700)
        except FileExistsError:
            if _pool_runs(pool) != _host_runs(ws):  # made meanwhile by another (user), or no pool
                return
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(os.path.join(pool, POOL_HOST), flags, 0o600)
            try:
                os.write(fd, f"{_POOL_MAGIC}\n{_host_runs(ws)}\n".encode("utf-8", "surrogateescape"))
            finally:
                os.close(fd)
        for slot in range(POOL_SLOTS):
            try:
                os.rename(view, os.path.join(pool, str(slot)))
                return
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    return
    except OSError:
        return


def carry_out(ws: Workspace, store: _Store) -> list[str]:
    """What a step wrote into the runs view (the guard alone), carried as ``consolidate`` does --
    a link the step put in place of one of the view's own too (its target is not the past run's
    folder, or the run folder): left there, a later run taking the view would read through it.
    One ``readlink`` a link: ~2 us, only when the step could write the view."""
    view, host_runs = ws.runs_view, _host_runs(ws)
    try:
        entries = sorted((e.name, e.is_symlink()) for e in os.scandir(view))
    except OSError:
        return []
    try:
        known = set(os.listdir(host_runs))
    except OSError:
        known = set()
    known.add(ws.run_id)
    carried: list[str] = []
    for name, link in entries:
        path = os.path.join(view, name)
        if link and name in known:
            own = ws.run_storage if name == ws.run_id else os.path.join(host_runs, name)
            try:
                if os.readlink(path) == own:
                    continue  # the view's own link
            except OSError:
                pass
        carried.extend(store.carry(path, f"{ws.layout.runs}/{name}"))
    return carried


def sweep_pool(path: str) -> bool:
    """Remove the pool ``path`` when its marker proves it one (as :func:`owner_of` proves a
    workspace: this user's private folder, a private regular file of one link in the pool's
    format, naming a runs folder whose seal is the folder's name) and the runs folder its views
    show is gone. A folder that merely looks like a pool is never touched."""
    host_runs = _pool_runs(path)
    if host_runs is None or os.path.isdir(host_runs):
        return False
    rmtree(path)
    return True
