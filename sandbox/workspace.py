"""A run's private workspace: a folder whose top level mirrors the host, built in O(1) of the data.

Layout of one workspace (``base`` is a fresh private folder, by default in the system temp dir)::

    base/ws/                    the workspace: cwd of every step; mirrors HOST
        <lakehouse>  -> HOST/<lakehouse>      a mount (made truly read-only by the kernel layer)
        <exports>    -> HOST/<exports>        a mount
        <runs>/<ID>  -> base/run               $TV_RUN_DIR (a bind mount under the kernel layer)
        everything else -> HOST/...           code and configs, read through; writes are redirected
    base/run/                   the run folder's storage (data/ reports/ config/ logs/ ...); exported
    base/tmp/                   $TMPDIR of the steps
    base/.ovl-work/             overlayfs work dir (kernel layer)

Only the folders on the way to a mount or to the run folder are real; every other entry at those
levels is a symlink to the host, so building it costs a few directory listings, however large the
lakehouse is. Under the kernel layer the workspace is instead an overlay of HOST with ``base/run`` as
its upper layer, so a write of any process to ``ws/<rel>`` lands at ``run/<rel>`` -- the same mapping
the Python guard applies to ``$TV_RUN_DIR/<rel>``.
"""

from __future__ import annotations

import os
import time

from sandbox._record import field, record
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
        )

    def mirror(self) -> None:
        """Build the symlink skeleton of ``ws/`` (see the module docstring), once. The kernel
        layer's overlay does not need it -- it shows the host itself there -- so a launch builds it
        only when it runs without the overlay (Landlock alone, the guard alone)."""
        if os.listdir(self.root):
            return
        special = {rel: self.mount_targets[name] for name, rel in self.layout.mounts().items()}
        special[f"{self.layout.runs}/{self.run_id}"] = self.run_storage
        _mirror(self.host, self.root, special)

    def remove(self) -> None:
        _rmtree(self.base)


_PREFIX = "tv-sandbox-"


def _rmtree(path: str) -> None:
    import shutil  # not on the start-up path: a run removes its workspace after its step

    shutil.rmtree(path, ignore_errors=True)


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


def _make_base(run_id: str, base_dir: str | None) -> str:
    """A new private folder ``tv-sandbox-<ID>-<random>`` (what ``tempfile.mkdtemp`` does)."""
    parent = base_dir if base_dir is not None else temp_root()
    for _ in range(100):
        path = os.path.join(parent, f"{_PREFIX}{run_id}-{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return os.path.realpath(path)
    raise FileExistsError(f"no free workspace name in {parent}")


OWNER_FILE = "owner"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks: a pid plus this names one process, never a reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat.rsplit(b")", 1)[1].split()[19].decode()


KEPT_FILE = "kept"


def _stale_unowned(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return not os.path.exists(os.path.join(path, KEPT_FILE)) and time.time() - st.st_mtime > 2.0


def sweep(base_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove workspaces left behind by launchers that died (SIGKILL, power loss) in ``base_dir``.

    A workspace records its launcher (pid and start time); one whose launcher is gone is removed.
    Never touches a folder without that record. Returns the removed paths.
    """
    base = os.fspath(base_dir) if base_dir is not None else temp_root()
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(base) if n.startswith(_PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(base, name)
        try:
            with open(os.path.join(path, OWNER_FILE)) as fh:
                pid_s, start = fh.read().split()
        except (OSError, ValueError):
            # no record: a launcher killed between creating the folder and recording itself
            # (microseconds); anything older than a few seconds without one is such a leftover
            # -- unless it was kept on purpose (--keep-workspace leaves a "kept" marker)
            if _stale_unowned(path):
                _rmtree(path)
                removed.append(path)
            continue
        if _start_time(int(pid_s)) != start:
            _rmtree(path)
            removed.append(path)
    return removed


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
        with open(os.path.join(base, OWNER_FILE), "w") as fh:
            fh.write(f"{os.getpid()} {_start_time(os.getpid())}\n")
        for sub in (ws.root, ws.tmp, ws.overlay_work, ws.run_storage):
            os.mkdir(sub, 0o700 if sub == ws.tmp else 0o755)
        for folder in layout.run_folders:
            os.mkdir(os.path.join(ws.run_storage, folder))
        if mirror:
            ws.mirror()
    except BaseException:
        ws.remove()
        raise
    return ws


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
