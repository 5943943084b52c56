"""A run's private workspace: a folder whose top level mirrors the host, built in O(1) of the data.

Layout of one workspace (``base`` is a fresh private folder ``tv-sandbox-<RUN_ID>-<seal>``, made
in ``--workspace-dir``, else the temp dir of :func:`temp_root`)::

    base/owner                  the launcher that made it (pid, start time, sealed token): the sweep
                                of dead launchers' workspaces removes only what this proves ours
    base/kept                   instead of ``owner``, when the workspace is kept (--keep-workspace)
    base/policy.marshal         the run's resolved policy (TV_SANDBOX_POLICY; written by the run)
    base/ws/                    the workspace: cwd of every step; mirrors HOST
        <lakehouse>  -> the mount's real host folder    read-only (truly, under the kernel layer)
        <exports>    -> the mount's real host folder
        <runs>/<ID>  -> base/run                         $TV_RUN_DIR (a bind mount under the kernel)
        everything else -> HOST/...                      code and configs, read through; writes
                                                         are redirected
    base/runs-view/             without the overlay, what ``ws/<runs>`` links to: a link per past
                                run (-> HOST/<runs>/<name>) and ``<ID> -> base/run``; outside every
                                writable root, and reused from run to run (see :mod:`sandbox.runs_view`)
    base/run/                   the run folder's storage (data/ reports/ config/ logs/ ...); exported
    base/tmp/                   $TMPDIR of the steps
    base/.ovl-work/             the workspace overlay's work dir (kernel layer)
    base/.ovl-work-<mount>/     an audit capture overlay's work dir (kernel layer, audit mode)

Only the folders on the way to a mount or to the run folder are real; every other entry at those
levels is a symlink to the host, so building it costs a few directory listings, however large the
lakehouse is. Under the kernel layer the workspace is instead an overlay of HOST with ``base/run`` as
its upper layer, so a write of any process to ``ws/<rel>`` lands at ``run/<rel>`` -- the same mapping
the Python guard applies to ``$TV_RUN_DIR/<rel>``.

**The runs folder grows with every run**, so without the overlay it is not mirrored into ``ws/``:
``ws/<runs>`` is one link to ``base/runs-view``, the view of the host's runs folder (a link per
past run, so ``<runs>/<old>/...`` reads natively as before, and ``<ID>`` to the run folder). That
view is *kept* between runs: the launcher hands it back, without its ``<ID>`` link, to a pool
beside the workspaces (``tv-sandbox-runs-<key>/<slot>``, one per host's runs folder, a few slots
for concurrent runs), and the next run takes it with one ``rename`` and brings it up to date (a
listing of each: the links of runs exported or removed meanwhile). A link costs ~50-170 us on an
ext4 ``/tmp``; 2000 past runs were 25-260 ms of every run to make, and more to walk and remove.
The view is outside every writable root of the Landlock fallback (the step cannot plant a link a
later run would follow), and a view holding anything but links (the guard alone: a native write
``<runs>/<new>/x`` lands there, and :func:`consolidate` carries it out) is not reused
(:mod:`sandbox.runs_view`).
"""

from __future__ import annotations

import errno
import os

from sandbox import runs_view
from sandbox._paths import private_marker, rmtree
from sandbox._record import field, record
from sandbox.errors import WorkspaceError
from sandbox.policy import Layout, Policy, PolicySpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

ENV_NAMES = (
    "TV_RUN_DIR",
    "TV_RUN_ID",
    "TV_PROFILE",
    "CANDIDATES_RAW",
    "CANDIDATES_SELECTED",
    "SELECTION_AUDIT",
    "TV_SCAN_DIR",
)


@record
class Workspace:
    """One run's workspace. Never shared between concurrent steps of different runs or sleeves."""

    host: str
    run_id: str
    layout: Layout
    base: str
    mount_targets: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> str:
        return os.path.join(self.base, "ws")

    @property
    def run_storage(self) -> str:
        """Where the run folder's files really are (the overlay's upper layer; what is exported)."""
        return os.path.join(self.base, "run")

    @property
    def run_dir(self) -> str:
        """``$TV_RUN_DIR`` as the steps see it: ``<workspace>/<runs>/<RUN_ID>``."""
        return os.path.join(self.root, self.layout.runs, self.run_id)

    @property
    def scan_dir(self) -> str:
        return os.path.join(self.root, self.layout.exports, self.run_id)

    @property
    def tmp(self) -> str:
        return os.path.join(self.base, "tmp")

    @property
    def runs_view(self) -> str:
        """Without the overlay, what ``ws/<runs>`` links to (see the module docstring)."""
        return os.path.join(self.base, runs_view.VIEW)

    @property
    def overlay_work(self) -> str:
        return os.path.join(self.base, ".ovl-work")

    def env(self, profile: str) -> dict[str, str]:
        """The run environment of ARCHITECTURE.md, for the steps."""
        data = os.path.join(self.run_dir, "data")
        return {
            "TV_RUN_DIR": self.run_dir,
            "TV_RUN_ID": self.run_id,
            "TV_PROFILE": profile,
            "CANDIDATES_RAW": os.path.join(data, "portfolio_candidates_raw.json"),
            "CANDIDATES_SELECTED": os.path.join(data, "portfolio_candidates.json"),
            "SELECTION_AUDIT": os.path.join(data, "selection_audit.json"),
            "TV_SCAN_DIR": self.scan_dir,
            "TMPDIR": self.tmp,
        }

    def bind(self, spec: PolicySpec, *, mode: str = "enforce", profile: str | None = None) -> Policy:
        """The policy placed on this workspace."""
        return spec.bind(
            host=self.host,
            workspace=self.root,
            run_id=self.run_id,
            mode=mode,
            temp_dirs=(self.tmp,),
            run_storage=self.run_storage,
            mount_targets=self.mount_targets,
            profile=profile,
            runs_view=self.runs_view,
        )

    @property
    def native_events(self) -> str:
        """The explain shim's raw log (``$TV_RUN_DIR/logs/sandbox_native.jsonl``, a reserved name)."""
        return os.path.join(self.run_storage, "logs", "sandbox_native.jsonl")

    def native_env(self, env: Mapping[str, str], *, build: bool = True) -> dict[str, str]:
        """``env`` plus the explain shim (:mod:`sandbox.native`) for a step of this workspace: its
        raw log, and the places whose successful writes it records -- the workspace under its own
        path and the host's (the kernel layer binds the view over it), minus ``$TV_RUN_DIR``.
        Without a shim (no compiler...), ``env`` as it is: native denials stay unexplained."""
        from sandbox import native

        lib = native.shim_path(build=build)
        host_run = os.path.join(self.host, self.layout.runs, self.run_id)
        return native.child_env(
            env, self.native_events, lib, watch=(self.root, self.host), skip=(self.run_dir, host_run)
        )

    def mirror(self) -> None:
        """Build the symlink skeleton of ``ws/`` (see the module docstring), once. The kernel
        layer's overlay does not need it -- it shows the host itself there -- so a launch builds it
        only when it runs without the overlay (Landlock alone, the guard alone)."""
        if os.listdir(self.root):
            return
        runs_view.fill(self)
        _mirror(self.host, self.root, _skeleton(self)[1])

    def remove(self) -> None:
        """Remove the workspace, its ``owner`` marker last (see :func:`_remove_owned`); the view
        of the runs folder goes back to its pool first."""
        runs_view.give_back(self)
        _remove_owned(self.base)

    def remove_scratch(self) -> None:
        """Remove all of the workspace but the run folder and the ``owner`` marker: the view, the
        steps' temp dir, the overlay's work folder, the mount points, the bound policy. Nothing
        of it is read once the last step has ended, so the launcher removes it during the export
        (:meth:`sandbox.run.Run.close`); :meth:`remove` then removes the rest."""
        runs_view.give_back(self)
        _remove_owned(self.base, keep=(os.path.basename(self.run_storage),), marker_too=False)


_PREFIX = "tv-sandbox-"


def _rmtree(path: str) -> None:
    rmtree(path)  # best effort: what is left stays provably owned (see _remove_owned)


def _remove_owned(base: str, *, keep: tuple[str, ...] = (), marker_too: bool = True) -> None:
    """Remove a workspace folder with its ``owner`` marker last: a remover killed halfway (the
    launcher itself, or another launcher's sweep) leaves what is left still provably owned, for
    a later sweep to finish. ``keep``: names of the folder to leave; ``marker_too=False`` leaves
    the marker and the folder itself."""
    try:
        names = os.listdir(base)
    except OSError:
        names = []
    for name in names:
        if name != OWNER_FILE and name not in keep:
            path = os.path.join(base, name)
            if os.path.isdir(path) and not os.path.islink(path):
                _rmtree(path)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass
    if marker_too:
        _rmtree(base)


def temp_root() -> str:
    """The system temp dir, as :func:`tempfile.gettempdir` finds it (``TMPDIR``, ``TEMP``,
    ``TMP``, then ``/tmp``...), without importing ``tempfile`` on the start-up path."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        d = os.environ.get(name)
        if d and os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
            return os.path.abspath(d)
    for d in ("/tmp", "/var/tmp", "/usr/tmp"):
        if os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
            return d
    return os.getcwd()


# -- ownership: what lets a later run prove a folder is a dead launcher's workspace ----------------
#
# A workspace is ``tv-sandbox-<RUN_ID>-<seal>``, made 0700, holding ``owner`` -- written 0600 by
# the launcher, O_EXCL, never following a link -- with the launcher's pid, its start time (clock
# ticks since boot: with the pid it names one process, never a reused pid) and a random token whose
# first 16 hex digits are the seal (a marker of v1, from earlier versions: the first 16 of
# blake2b(token), still verified). The sweep removes a folder only when all of it holds: a real
# folder owned by this user with no access for others, ``owner`` a regular file of this user,
# private (0600), one link, in this format, whose token seals the folder's name, and whose
# launcher is gone, and no ``kept`` file (a workspace handed to the user). A folder that merely
# looks like ours -- the name, an old mtime, a marker copied from another workspace -- is never
# touched.
# The seal ties marker and name: a marker copied into another folder, or a folder renamed to look
# like one, does not verify. It needs no secret, so no hash (a shared library to load on the
# start-up path, ~0.4 ms): someone who reads this and forges both on purpose can have the folder
# removed -- as they could remove it themselves; a step cannot: under the kernel layer it cannot
# write the temp dir at all, and the Python guard denies it.
# A launcher killed in the microseconds between ``mkdir`` and the marker leaves an empty folder
# (or one with a partial marker): it is never swept, as it cannot be proved ours -- a few bytes.

OWNER_FILE = "owner"
KEPT_FILE = "kept"
_OWNER_MAGIC = "tv-sandbox workspace owner v2"
_OWNER_MAGIC_V1 = "tv-sandbox workspace owner v1"  # earlier versions' markers: still swept


def _seal(token: str, magic: str = _OWNER_MAGIC) -> str:
    """The name's suffix that ``token`` seals, in the marker format ``magic``."""
    if magic == _OWNER_MAGIC:
        return token[:16]
    try:  # v1; the C module alone: hashlib would load OpenSSL
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover - an interpreter built without it
        from hashlib import blake2b
    return blake2b(token.encode(), digest_size=8).hexdigest()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks: a pid plus this names one process, never a reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat.rsplit(b")", 1)[1].split()[19].decode()


def _make_base(run_id: str, base_dir: str | None) -> str:
    """A new private folder ``tv-sandbox-<ID>-<seal>`` with its ``owner`` marker (see above)."""
    parent = base_dir if base_dir is not None else temp_root()
    if not os.access(parent, os.W_OK | os.X_OK):  # (root passes unless the kernel refuses: /proc/sys)
        err = errno.EACCES if os.path.isdir(parent) else errno.ENOTDIR
        if not os.path.lexists(parent):
            err = errno.ENOENT
        raise _cannot_make(parent, OSError(err, "not a writable folder"))
    pid = os.getpid()
    me = f"{pid} {_start_time(pid)}"
    for _ in range(100):
        token = os.urandom(16).hex()
        path = os.path.join(parent, f"{_PREFIX}{run_id}-{_seal(token)}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        except OSError as e:
            raise _cannot_make(parent, e) from None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(os.path.join(path, OWNER_FILE), flags, 0o600)
        try:
            os.write(fd, f"{_OWNER_MAGIC}\n{me} {token}\n".encode())
        finally:
            os.close(fd)
        return os.path.realpath(path)
    raise FileExistsError(errno.EEXIST, "no free workspace name in this folder", parent)


def check_makeable(base_dir: str | None) -> None:
    """Raise :class:`WorkspaceError` when no workspace can be made in ``base_dir`` (else the temp
    dir), found by making and removing an empty folder there: what its permissions allow root,
    the kernel may still refuse (``/proc``). For a caller whose workspaces are made later and
    elsewhere -- a pipeline's sleeves, in their Ray workers -- so that it says so before dispatch.
    (A run makes its own at once, which says the same.)"""
    parent = base_dir if base_dir is not None else temp_root()
    probe = os.path.join(parent, f".{_PREFIX}probe-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.mkdir(probe, 0o700)
    except FileExistsError:
        return
    except OSError as e:
        raise _cannot_make(parent, e) from None
    os.rmdir(probe)


def _cannot_make(parent: str, e: OSError) -> WorkspaceError:
    return WorkspaceError(
        f"cannot make the run's workspace in {parent} ({e.strerror}): pass --workspace-dir (or set "
        "TMPDIR to) a writable folder outside the host",
        errno=e.errno,
    )


def owner_of(path: str) -> tuple[int, str] | None:
    """(pid, start time) of the launcher that provably made the workspace ``path``, or None when
    ``path`` is not provably a workspace of this tool and this user (see the comment above)."""
    name = os.path.basename(path)
    if not name.startswith(_PREFIX) or "-" not in name[len(_PREFIX) :]:
        return None
    data = private_marker(path, OWNER_FILE, 256)
    if data is None:
        return None
    text = data.decode("ascii", "replace")
    lines = text.split("\n")
    if len(lines) != 3 or lines[0] not in (_OWNER_MAGIC, _OWNER_MAGIC_V1) or lines[2]:
        return None
    fields = lines[1].split(" ")
    if len(fields) != 3 or not fields[0].isdigit() or len(fields[2]) != 32:
        return None
    if _seal(fields[2], lines[0]) != name.rpartition("-")[2]:
        return None
    if os.path.lexists(os.path.join(path, KEPT_FILE)):  # handed to the user (keep): never ours again
        return None
    return int(fields[0]), fields[1]


def sweep(base_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove workspaces left behind by launchers that died (SIGKILL, power loss) in ``base_dir``.

    Only what :func:`owner_of` proves is a workspace of this tool and user, made by a launcher that
    is gone; never by name or age. Kept workspaces (``--keep-workspace``) have no ``owner`` marker
    and are never swept. Returns the removed paths.
    """
    base = os.fspath(base_dir) if base_dir is not None else temp_root()
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(base) if n.startswith(_PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(base, name)
        owner = owner_of(path)
        if owner is None:
            # a pool of views of a runs folder now gone
            if name.startswith(runs_view.POOL_PREFIX) and runs_view.sweep_pool(path):
                removed.append(path)
            continue
        pid, start = owner
        if _start_time(pid) != start:
            _remove_owned(path)
            removed.append(path)
    return removed


def keep(ws: Workspace) -> None:
    """Hand a workspace to the user (``--keep-workspace``): its marker goes, so no sweep removes
    it, and a ``kept`` file says why."""
    try:
        os.unlink(os.path.join(ws.base, OWNER_FILE))
    except FileNotFoundError:
        pass
    with open(os.path.join(ws.base, KEPT_FILE), "w"):
        pass


def mount_targets(host: str, layout: Layout) -> dict[str, str]:
    """The real host path behind each mount (a lakehouse may itself be a symlink to a big disk)."""
    return {name: os.path.realpath(os.path.join(host, rel)) for name, rel in layout.mounts().items()}


def create(
    host: str | os.PathLike[str],
    run_id: str,
    layout: Layout,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    targets: Mapping[str, str] | None = None,
    mirror: bool = True,
) -> Workspace:
    """Build a fresh workspace for ``run_id`` of ``host`` (which the caller has validated);
    ``mirror=False`` leaves ``ws/`` empty until :meth:`Workspace.mirror`."""
    host_s = os.path.realpath(host)
    base = _make_base(run_id, os.fspath(base_dir) if base_dir is not None else None)
    ws = Workspace(host_s, run_id, layout, base, dict(targets or mount_targets(host_s, layout)))
    try:
        for sub in (ws.root, ws.tmp, ws.overlay_work, ws.run_storage):
            os.mkdir(sub, 0o700 if sub == ws.tmp else 0o755)
        for folder in layout.run_folders:
            os.mkdir(os.path.join(ws.run_storage, folder))
        if mirror:
            ws.mirror()
    except BaseException as e:
        ws.remove()
        if isinstance(e, OSError):
            raise _cannot_make(os.path.dirname(base), e) from None
        raise
    return ws


def _skeleton(ws: Workspace) -> tuple[set[str], dict[str, str]]:
    """The real folders and the symlinks (rel -> target) :meth:`Workspace.mirror` made."""
    special = {rel: ws.mount_targets[name] for name, rel in ws.layout.mounts().items()}
    special[ws.layout.runs] = ws.runs_view
    real_dirs: set[str] = {""}
    for rel in special:
        comps = rel.split("/")
        real_dirs.update("/".join(comps[:i]) for i in range(1, len(comps)))
    return real_dirs, special


CONFLICT_SUFFIX = ".from-workspace"


def consolidate(ws: Workspace, *, view: bool = True) -> list[str]:
    """Move into the run folder whatever the step wrote into the workspace skeleton; return the
    run-folder-relative paths of the files (and symlinks) carried, sorted.

    Without the kernel layer's overlay (Landlock alone, the guard alone) the workspace is the
    symlink skeleton of :meth:`Workspace.mirror`: a native or shell write to ``data/x.parquet``
    lands in its real folder ``ws/data/``, which is removed with the workspace. Everything there
    that the skeleton did not make -- files, folders, symlinks the step created -- is *moved*
    (``rename``: the workspace and the run folder's storage are one file system; nothing is
    copied, nothing left behind) to ``$TV_RUN_DIR/<rel>``, where the guard puts a Python write to
    the same path. A name the run folder already has (the guard redirected a write there) keeps
    the run folder's file, and the workspace's goes beside it as ``<rel>.from-workspace``.

    Never follows a symlink: the skeleton's own links (to the host, the mounts, the runs view)
    are recognised by their targets and left; a link the step made is moved as a link. The view
    of the runs folder (``base/runs-view``, which ``ws/<runs>`` links to) is searched too when
    ``view`` -- only the guard alone lets a step write there (Landlock leaves it out of the
    writable roots): what is not one of its links (a name of the host's runs folder, or ``<ID>``)
    is carried to ``<runs>/<name>``, one listing of each, no per-link call. Call it after the
    step, before the report and the export.
    """
    if not os.path.isdir(ws.root):
        return []
    real_dirs, special = _skeleton(ws)
    carried: list[str] = []
    store = _Store(ws.run_storage)
    if view:
        carried.extend(runs_view.carry_out(ws, store))
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        here = os.path.join(ws.root, rel_dir) if rel_dir else ws.root
        try:
            names = sorted(os.listdir(here))
        except OSError:
            continue
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = os.path.join(here, name)
            if os.path.islink(path):
                host_twin = os.path.join(ws.host, rel)
                if os.readlink(path) in (special.get(rel), host_twin):
                    continue  # the skeleton's own link
            elif rel in real_dirs and os.path.isdir(path):
                stack.append(rel)
                continue
            carried.extend(store.carry(path, rel))
    return sorted(carried)


UNPLACED = "unplaced"


class _Store:
    """Where :func:`consolidate` moves things: the run folder's storage, entered folder by folder
    without following a link the step may have planted there (``$TV_RUN_DIR/data -> /etc`` must
    not carry the launcher's rename out of the run folder). What cannot be placed at its own path
    goes below a fresh folder ``unplaced/`` (``unplaced-<n>/`` when that name is taken)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._unplaced: str | None = None

    def _real_dir(self, rel_dir: str) -> bool:
        """Make ``root/rel_dir`` folder by folder; False when a component is not a real folder."""
        here = self.root
        for comp in (c for c in rel_dir.split("/") if c):
            here = os.path.join(here, comp)
            try:
                os.mkdir(here, 0o755)
            except FileExistsError:
                pass
            except OSError:
                return False
            if os.path.islink(here) or not os.path.isdir(here):
                return False
        return True

    def _fallback(self) -> str:
        if self._unplaced is None:
            for n in range(1000):
                name = UNPLACED if n == 0 else f"{UNPLACED}-{n}"
                try:
                    os.mkdir(os.path.join(self.root, name), 0o755)
                except FileExistsError:
                    continue
                self._unplaced = name
                break
            else:  # pragma: no cover - a thousand planted names
                raise FileExistsError(errno.EEXIST, "no free folder name for unplaced outputs", self.root)
        return self._unplaced

    def carry(self, src: str, rel: str) -> list[str]:
        parent = rel.rpartition("/")[0]
        if not self._real_dir(parent):
            rel = f"{self._fallback()}/{rel}"
            if not self._real_dir(rel.rpartition("/")[0]):  # pragma: no cover - a fresh folder
                return []
        return _carry(src, os.path.join(self.root, rel), rel, self)


def _carry(src: str, dst: str, rel: str, store: _Store) -> list[str]:
    """Move ``src`` to ``dst`` (merging folders); the run-folder-relative files moved."""
    if os.path.isdir(src) and not os.path.islink(src) and os.path.isdir(dst) and not os.path.islink(dst):
        out: list[str] = []
        for name in sorted(os.listdir(src)):
            out.extend(_carry(os.path.join(src, name), os.path.join(dst, name), f"{rel}/{name}", store))
        try:
            os.rmdir(src)
        except OSError:
            pass
        return out
    if os.path.lexists(dst):
        dst, rel = dst + CONFLICT_SUFFIX, rel + CONFLICT_SUFFIX
        if os.path.lexists(dst):
            return store.carry(src, f"{store._fallback()}/{rel}") if not rel.startswith(UNPLACED) else []
    os.rename(src, dst)
    if os.path.isdir(dst) and not os.path.islink(dst):
        return [
            os.path.join(rel, os.path.relpath(os.path.join(d, f), dst))
            for d, dirs, files in os.walk(dst)
            for f in [*files, *(x for x in dirs if os.path.islink(os.path.join(d, x)))]
        ]
    return [rel]


def _mirror(host: str, root: str, special: Mapping[str, str]) -> None:
    """Make ``root`` mirror ``host``: real folders on the way to each special path, which becomes a
    symlink to its target; every other entry at those levels a symlink to the host's entry."""
    real_dirs: set[str] = {""}
    for rel in special:
        comps = rel.split("/")
        real_dirs.update("/".join(comps[:i]) for i in range(1, len(comps)))
    for rel_dir in sorted(real_dirs, key=lambda r: r.count("/") if r else -1):
        here = os.path.join(root, rel_dir) if rel_dir else root
        os.makedirs(here, exist_ok=True)
        host_dir = os.path.join(host, rel_dir) if rel_dir else host
        try:
            names = os.listdir(host_dir)
        except (FileNotFoundError, NotADirectoryError):
            names = []
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if rel in real_dirs or rel in special:
                continue
            os.symlink(os.path.join(host_dir, name), os.path.join(here, name))
    for rel, target in special.items():
        link = os.path.join(root, rel)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(target, link)
