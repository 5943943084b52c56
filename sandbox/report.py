"""The run report: ``$TV_RUN_DIR/sandbox_report.json``, what a user reads after a run.

It gathers what each layer recorded -- every deny and redirect (from the event log), the steps
(exit code, time, peak memory), which layers were active, the files a run wrote outside its
standard folders (scattered artifacts, now in the run folder), and, when a step failed on a
read-only or denied path under the kernel layer, an explanation with the tail of its stderr.
In audit mode it also summarises the lakehouse diff (:mod:`sandbox.lakediff`): how many files the
run created, modified and deleted in the mounts, and where the diff itself is.
"""

from __future__ import annotations

import os

from sandbox._paths import write_into
from sandbox._record import asdict, field, record
from sandbox.events import EVENTS_NAME

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

REPORT_NAME = "sandbox_report.json"
LAKEHOUSE_DIFF = "reports/lakehouse_diff.json"  # audit mode: written by sandbox.lakediff

# Fragments of the messages libc/Python print for EROFS and EACCES (strerror), for explanations.
_KERNEL_DENIAL_MARKERS = ("Read-only file system", "Permission denied", "Operation not permitted")


@record
class StepRecord:
    """One sandboxed step: its command, how it ended, and what its whole process tree cost.

    ``cpu_s`` is the user + system time of every process of the step; ``peak_rss_bytes`` the
    highest total resident memory of its process tree seen while it ran (at least the largest
    single process's). ``cut`` says why tv-sandbox ended the step, when it did: ``"timeout"``,
    ``"cancelled"`` or ``"interrupted"`` (None: it ended by itself); ``cut_reason`` in words.
    ``denied``/``redirected`` count the step's own events.
    """

    argv: list[str]
    exit_code: int
    signal: int | None
    duration_s: float
    peak_rss_bytes: int
    stderr_tail: str = ""
    name: str = "step"
    cpu_s: float = 0.0
    denied: int = 0
    redirected: int = 0
    cut: str | None = None
    cut_reason: str = ""


@record
class Layers:
    """Which enforcement layers were active for a run, and why one was not."""

    python_guard: bool = True
    landlock_abi: int = 0
    mount_namespace: bool = False
    overlay: bool = False
    readonly_mounts: bool = False
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def kernel(self) -> bool:
        return self.landlock_abi > 0 or self.mount_namespace


def scattered_artifacts(run_storage: str, run_folders: Sequence[str]) -> list[str]:
    """Files a run wrote outside its standard folders (relative outputs redirected to the run
    folder's top level, e.g. ``reports/x.csv`` when ``reports`` is not a run folder)."""
    known = set(run_folders) | {"audit", REPORT_NAME}
    ours = {LAKEHOUSE_DIFF}  # the sandbox's, wherever its folder is: not a step's stray output
    out: list[str] = []
    for name in sorted(os.listdir(run_storage)):
        if name in known:
            continue
        top = os.path.join(run_storage, name)
        if os.path.isdir(top) and not os.path.islink(top):
            for dirpath, _dirs, files in os.walk(top):
                out.extend(os.path.relpath(os.path.join(dirpath, f), run_storage) for f in files)
        else:
            out.append(name)
    return sorted(p for p in out if p not in ours)


#: The files the launcher writes into the run folder *after* the steps (the exporter writes the
#: manifest into its stage). Each is a reserved name (:data:`sandbox.policy.RESERVED_RUN_FILES`):
#: the guard and fsspec refuse a step's write to one, but a native or shell write under the kernel
#: layer lands -- so, before writing its own, the launcher sets the step's aside.
LAUNCHER_FILES = ("config/policy.json", REPORT_NAME, "manifest.json", LAKEHOUSE_DIFF)
STEP_COPY_SUFFIX = ".from-step"
_NAME_MAX = 255  # bytes in one file name: Linux's, on every file system the run folder may be on


def move_aside(run_storage: str, rel: str) -> str:
    """Rename ``rel`` of the run folder to ``<rel>.from-step`` (``-2``... ``-9`` when taken, then a
    random suffix) -- ``rename`` never follows a link -- and return the new relative name.

    Never fails on names: the step chooses every name in the run folder, so it can take any fixed
    list of them (a run once ended with an internal error and no export when ``-2``... ``-999``
    were taken) and make a name that a suffix pushes past ``NAME_MAX``; then the name before the
    suffix is shortened."""
    path = os.path.join(run_storage, rel)
    folder, name = os.path.split(path)
    n = 0
    while True:
        n += 1
        tag = "" if n == 1 else f"-{n}" if n < 10 else f"-{os.urandom(6).hex()}"
        new = os.path.join(folder, _within_name_max(name, STEP_COPY_SUFFIX + tag))
        if not os.path.lexists(new):
            os.rename(path, new)
            return os.path.relpath(new, run_storage)


def _within_name_max(name: str, suffix: str) -> str:
    """``name + suffix``, with ``name`` cut short (by bytes, keeping whole characters) to fit one
    file name of at most 255 bytes."""
    room = _NAME_MAX - len(os.fsencode(suffix))
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return name + suffix


def set_aside_step_files(run_storage: str) -> list[str]:
    """Move each file a step left at a name the launcher is about to write (:data:`LAUNCHER_FILES`)
    to ``<name>.from-step`` (``.from-step-2``... when taken): the sandbox never silently replaces a
    step's file. Returns one line per file moved, for the report's warnings. A name that is a
    folder or a symlink is moved too (``rename`` never follows the link)."""
    lines: list[str] = []
    for rel in LAUNCHER_FILES:
        path = os.path.join(run_storage, rel)
        parent = os.path.dirname(path)
        if os.path.islink(parent) or not os.path.lexists(path):
            continue  # a linked folder is replaced whole by write_into's own checks
        new = move_aside(run_storage, rel)
        lines.append(f"a step wrote {rel}, a name reserved for tv-sandbox's own file: kept as {new}")
    return lines


#: How deep the run folder's folders may nest to be exported: past it they are removed first. The
#: launcher's walks of the run folder (the report's, the export's, its manifest's) recurse a
#: level at a time, and a step that nested 5,000 folders ended its run with a RecursionError:
#: nothing reported or exported, the workspace left.
MAX_DEPTH = 100


def prune_deep(run_storage: str) -> list[str]:
    """Remove every folder of the run folder that lies deeper than :data:`MAX_DEPTH` levels (with
    what it holds; the walk never follows a link); call it when no process of the step is alive,
    before anything else walks the run folder. Returns the warning to report, if any."""
    from sandbox._paths import DIR_FLAGS, open_dir, rmtree

    removed = 0

    def walk(fd: int, level: int) -> None:
        nonlocal removed
        with os.scandir(fd) as it:
            folders = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        for name in folders:
            if level >= MAX_DEPTH:
                rmtree(name, dir_fd=fd)
                removed += 1
                continue
            try:
                sub = open_dir(name, fd)
            except OSError:
                continue
            try:
                walk(sub, level + 1)
            finally:
                os.close(sub)

    try:
        top = os.open(run_storage, DIR_FLAGS)
    except OSError:
        return []
    try:
        walk(top, 0)
    except OSError:
        pass
    finally:
        os.close(top)
    if not removed:
        return []
    return [
        f"a step nested folders deeper than {MAX_DEPTH} levels in the run folder: {removed} "
        "removed, with what they held, not exported"
    ]


def secure_logs(run_storage: str) -> list[str]:
    """Make ``$TV_RUN_DIR/logs`` safe for the launcher to open by name; call it whenever no process
    of the step is alive and before the launcher reads or writes there.

    ``logs`` must be a real folder, and each name the launcher opens in it -- the event log, the
    explain shim's raw log, ``*.stdout.log`` / ``*.stderr.log`` -- a regular file or absent. What
    the step left instead (a symlink to a host file, a FIFO that would block the launcher, a
    device, a folder) is moved aside to ``<name>.from-step`` (``rename`` never follows a link), so
    the launcher never writes through a step's link nor hangs on its FIFO. Returns one line per
    entry moved, for the report's warnings."""
    import stat

    lines: list[str] = []

    def aside(rel: str) -> None:
        new = move_aside(run_storage, rel)
        what = "folder" if rel == "logs" else "file"
        lines.append(
            f"a step left {rel} as something tv-sandbox does not write through (not a regular {what}): "
            f"kept as {new}"
        )

    # A step may have taken the launcher's own write permission away (``chmod 555 logs``, or the
    # run folder itself): its owner -- the launcher's user, the step's too -- gives it back on
    # the folders the launcher writes in, or an unprivileged launcher could not write the record.
    for rel in ("", "logs", "config", "reports"):
        folder = os.path.join(run_storage, rel) if rel else run_storage
        try:
            fst = os.lstat(folder)
            if stat.S_ISDIR(fst.st_mode) and fst.st_mode & 0o700 != 0o700:
                os.chmod(folder, stat.S_IMODE(fst.st_mode) | 0o700)
                lines.append(f"a step made {rel or 'the run folder'} read-only: made writable again")
        except OSError:
            pass
    logs = os.path.join(run_storage, "logs")
    try:
        st = os.lstat(logs)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        aside("logs")
        st = None
    if st is None:
        os.mkdir(logs)
    launcher_names = (EVENTS_NAME, NATIVE_RAW, NATIVE_RAW + ".reading")
    for name in os.listdir(logs):
        if name in launcher_names or name.endswith((".stdout.log", ".stderr.log")):
            path = os.path.join(logs, name)
            if not stat.S_ISREG(os.lstat(path).st_mode):
                aside(f"logs/{name}")
    return lines


NATIVE_RAW = "sandbox_native.jsonl"  # the explain shim's raw lines (sandbox.native), in logs/
NATIVE_LAYER = "kernel"  # a write the kernel layer refused to native code, explained by the shim
OVERLAY_LAYER = "overlay"  # a native write the overlay redirected into the run folder
#: A native write into the workspace's own folders, gathered into the run folder after the step
#: (no overlay: Landlock alone, the Python guard alone; see workspace.consolidate).
WORKSPACE_LAYER = "workspace"
HOST_LAYER = "native"  # a native write the policy allows on the host (development's lakehouse)
UNENFORCED = "unenforced"  # the action of a write the policy denies that reached the host anyway
_OPS = {"write": "write", "delete": "delete", "rename": "rename", "mkdir": "mkdir", "rmdir": "rmdir",
        "link": "link", "metadata": "metadata"}  # fmt: skip


@record
class NativeCounts:
    """What :func:`explain_native` added to the event log."""

    denied: int = 0
    redirected: int = 0
    captured: int = 0  # audit mode: native writes the capture overlays took
    allowed: int = 0  # host changes the policy allows (development): listed in the report
    unexplained: int = 0  # refused by the kernel where the policy would not deny (a file's own mode)
    unenforced: int = 0  # the policy denies it, yet it succeeded (no kernel layer): the host changed
    unreadable: int = 0  # lines that are not one shim record each (a hostile step's): skipped
    cut: int = 0  # lines left unexplained: an interrupt was held (``stop``)


def explain_native(
    run_storage: str,
    policy: Any,
    events_file: str,
    *,
    kernel: bool = True,
    overlay: bool | None = None,
    stop: Callable[[], bool] | None = None,
) -> NativeCounts:
    """Turn the explain shim's raw lines (:mod:`sandbox.native`) into explained events of the run's
    event log; call it after each step (and before counting the step's events). ``kernel``: the
    step ran under the kernel layer (any plan); False for the Python guard alone. ``overlay``: its
    writes were redirected by the kernel layer's overlay (default: ``kernel``), else gathered from
    the workspace's folders after the step -- the layer its redirect events name. ``stop``: asked
    every thousand lines; True leaves the rest unexplained (``cut``: how many lines).

    Each raw line names a call, the path as the program gave it and the folder it was relative to.
    The path is placed (lexically) and decided by the policy, as the guard would have decided it:

    * refused by the kernel where the policy denies it (or would capture it in audit mode): a
      ``deny`` (layer ``kernel``) with the policy's rule, reason and hint and the user's path
      (``data/lakehouse/x``, not the workspace's); where the policy would redirect it (a write
      through the workspace's links to the host, Landlock alone): a ``deny`` of rule
      ``kernel-refused``; where the policy allows it, the file's own permissions refused it --
      not the sandbox's doing: counted as ``unexplained``, not logged;
    * a successful write the policy REDIRECTs -- the overlay (or, without it, the workspace's own
      folders, consolidated after the step) carried it into the run folder: a ``redirect`` (layer
      ``overlay``; in audit mode a capture) -- unless the Python guard already logged it (same
      process, same path);
    * a successful write the policy ALLOWs on a mount (development's lakehouse): an ``allow``
      (layer ``native``), so the report lists what the run changed there;
    * a successful write that reached the host against the policy -- only possible without the
      kernel layer (``kernel=False``: a write through the workspace's links to the host): an
      ``unenforced`` event, listed in the report's ``host_changes``.

    The raw log is consumed (renamed, read, removed): the next call sees only newer lines. The
    step's processes write it (the shim runs inside them): a line that is not one record of the
    shim's -- not JSON, not an object, a field missing or of the wrong type -- is skipped and
    counted (``unreadable``: the caller warns, :func:`unreadable_warning`), never fatal.
    """
    from sandbox import _json as json
    from sandbox.events import EventLog, read_events, step_lines

    raw = os.path.join(run_storage, "logs", NATIVE_RAW)
    taken = raw + ".reading"
    counts = NativeCounts()
    try:
        os.rename(raw, taken)
    except FileNotFoundError:
        try:
            EventLog(events_file).close()  # the run's event log exists even when nothing happened
        except OSError:
            pass
        return counts
    seen: set[tuple[int, str]] = set()  # (pid, path) the guard logged already
    if os.path.exists(events_file):
        for ev in read_events(events_file):
            for key in ("resolved", "path"):
                v = ev.get(key)
                if isinstance(v, str) and isinstance(ev.get("pid"), int):
                    seen.add((ev["pid"], os.path.normpath(v) if v.startswith("/") else v))
    via = OVERLAY_LAYER if (kernel if overlay is None else overlay) else WORKSPACE_LAYER
    log = EventLog(events_file)
    try:
        with open(taken, "rb") as fh:
            for n, line in enumerate(step_lines(fh)):  # bounded: a step can make it a sparse terabyte
                if stop is not None and n % 1024 == 0 and stop():
                    counts.cut = 1 + sum(1 for _ in step_lines(fh))
                    break
                try:
                    rec = json.loads(line) if line is not None else None
                except (ValueError, RecursionError):  # RecursionError: "[[[[..." past the limit
                    rec = None
                if not isinstance(rec, dict) or not _explain_one(rec, policy, seen, log, counts, kernel, via):
                    counts.unreadable += 1
    finally:
        log.close()
        try:
            os.unlink(taken)
        except OSError:
            pass
    return counts


_REFUSED = (
    "the kernel layer lets a step write only in the workspace's own folders, the run folder and the temp dir"
)
_REFUSED_HINT = "write under $TV_RUN_DIR (a relative path to a new folder lands there)"


def _stayed(policy: Any, path: str) -> bool:
    """Did a write to ``path`` stay in the sandbox's own places (no kernel layer: the workspace's
    real folders, the run folder, the temp dir) rather than follow a link to the host?"""
    real = os.path.realpath(path)
    ctx = policy.ctx
    roots = [ctx.workspace, *([ctx.run_storage] if ctx.run_storage else []), *ctx.temp_dirs]
    inside = [r for r in roots if real == r or real.startswith(r.rstrip("/") + "/")]
    return bool(inside) and ctx.workspace != ctx.host


def _explain_one(
    ev: Mapping[str, Any],
    policy: Any,
    seen: set[tuple[int, str]],
    log: Any,
    counts: NativeCounts,
    kernel: bool,
    redirected_by: str = OVERLAY_LAYER,
) -> bool:
    """One raw line of the shim: the events it stands for (see :func:`explain_native`). False when
    it is not a record of the shim's (the shim writes strings and integers, paths without NUL)."""
    from functools import partial  # after the step: not on the start-up path

    from sandbox.policy import RESERVED_RULE, Action, Op

    op_name, err, pid = ev.get("op"), ev.get("errno"), ev.get("pid")
    path, path2, base = ev.get("path"), ev.get("path2") or "", ev.get("dir") or "/"
    if not (isinstance(op_name, str) and op_name in _OPS and type(err) is int and type(pid) is int):
        return False
    if not (isinstance(path, str) and isinstance(path2, str) and isinstance(base, str)):
        return False
    if "\0" in path + path2 + base:
        return False
    op = Op.named(_OPS[op_name])
    paths = [path, *([path2] if path2 else [])]
    for given in paths:
        full = os.path.normpath(os.path.join(base, given))
        d = policy.decide(full, op)
        user = policy.user_path(full)
        on_host = policy.host_path_of(full)
        target = policy.host_path_of(d.target) if d.target else None
        emit = partial(log.emit, op=op, path=user, resolved=on_host, profile=policy.profile, hint=d.hint)
        if err:
            if d.action is Action.ALLOW:
                counts.unexplained += 1  # the file's own permissions: not the sandbox's doing
                continue
            if d.action is Action.DENY or d.captured:
                emit(layer=NATIVE_LAYER, action="deny", rule=d.rule, reason=d.reason)
            else:
                emit(
                    layer=NATIVE_LAYER,
                    action="deny",
                    rule="kernel-refused",
                    reason=_REFUSED,
                    hint=_REFUSED_HINT,
                )
            counts.denied += 1
            return True  # a rename refused once is one denial, whichever end it was
        if (pid, full) in seen or (pid, given) in seen or (pid, user) in seen or (pid, on_host) in seen:
            continue  # the guard logged it already
        if d.action is Action.DENY and d.rule == RESERVED_RULE.name and (kernel or _stayed(policy, full)):
            # A name of the run folder the launcher writes, reached natively (the overlay, or the
            # workspace folders gathered after the step): the step's file is kept aside, never
            # silently replaced (set_aside_step_files, Run._place_logs) -- it reached no host file.
            why = f"{d.reason}; the step's file is kept aside as <name>{STEP_COPY_SUFFIX}"
            emit(layer=redirected_by, action="redirect", rule=d.rule, target=target, reason=why)
            counts.redirected += 1
        elif not kernel and d.action is not Action.ALLOW and not _stayed(policy, full):
            why = f"{d.reason or d.rule} -- but no kernel layer enforced it: the change reached the host"
            emit(layer=HOST_LAYER, action=UNENFORCED, rule=d.rule, reason=why)
            counts.unenforced += 1
        elif d.action is Action.REDIRECT:  # the overlay carried it (audit mode: a capture overlay)
            emit(layer=redirected_by, action="redirect", rule=d.rule, target=target,
                 captured=d.captured, reason=d.reason)  # fmt: skip
            if d.captured:
                counts.captured += 1
            else:
                counts.redirected += 1
        elif d.action is Action.ALLOW and policy._mount_of(tuple(user.split("/"))) is not None:
            emit(layer=HOST_LAYER, action="allow", rule=d.rule, reason=d.reason)
            counts.allowed += 1
        elif d.action is Action.DENY:  # the policy denies it, yet it happened: say so
            why = f"{d.reason} -- but no kernel layer enforced it: the change reached the host"
            emit(layer=HOST_LAYER, action=UNENFORCED, rule=d.rule, reason=why)
            counts.unenforced += 1
    return True


def unreadable_warning(name: str, lines: int, left_out_of: str) -> str:
    """The report's warning for ``lines`` unreadable lines of ``name`` in the run folder: a file
    the step's own processes write, so a line can be anything (docs/security.md)."""
    return (
        f"{name}: {lines} line(s) not readable as records, left out of {left_out_of} "
        "(the step's own processes write this file)"
    )


def host_changes(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What a run changed on the host's mounts, in order, for the report: each write its policy
    allows there (development's lakehouse) and each it denies that no kernel layer stopped --
    ``{"op", "path", "rule", "allowed"}``."""
    return [
        {
            "op": str(e.get("op")),
            "path": str(e.get("path")),
            "rule": str(e.get("rule")),
            "allowed": e.get("action") == "allow",
        }
        for e in events
        if e.get("action") in ("allow", UNENFORCED)
    ]


def summary_line(report: Mapping[str, Any]) -> str:
    """The counts of the CLI's closing line: ``N denied, M redirected`` and, in audit mode,
    ``captured K (lakehouse diff: c created, m modified, d deleted)``."""
    ev = report.get("events", {})
    by = ev.get("by_action", {})
    captured = int(ev.get("captured", 0))
    denied = int(by.get("deny", 0))
    redirected = int(by.get("redirect", 0)) - captured
    text = f"{denied} denied, {redirected} redirected"
    if report.get("mode") == "audit":
        diff = report.get("lakehouse_diff") or {}
        counts = diff.get("counts", diff)
        text += (
            f", captured {captured} (lakehouse diff: {int(counts.get('created', 0))} created, "
            f"{int(counts.get('modified', 0))} modified, {int(counts.get('deleted', 0))} deleted)"
        )
    changed = report.get("host_changes") or []
    if changed:
        against = sum(1 for c in changed if not c.get("allowed"))
        text += f", {len(changed)} host change(s)"
        text += f" ({against} AGAINST the policy: no kernel layer)" if against else " allowed by the policy"
    return text


def explain_failure(step: StepRecord, layers: Layers, protected: Mapping[str, str]) -> str | None:
    """A few lines telling a kernel-layer denial from a bug, or None when nothing points to one."""
    if step.exit_code == 0 or not layers.kernel:
        return None
    # a denial the guard or fsspec raised explains itself ("... -- tv-sandbox: rule ..."): not the kernel's
    raw = "\n".join(ln for ln in step.stderr_tail.splitlines() if "-- tv-sandbox: rule " not in ln)
    hits = [m for m in _KERNEL_DENIAL_MARKERS if m in raw]
    if not hits:
        return None
    mounts = ", ".join(f"{name} ({path})" for name, path in protected.items())
    return (
        f"the step exited {step.exit_code} after the kernel refused a write ({'; '.join(hits)}). "
        f"Read-only in this run: {mounts}, and everything outside the workspace, the run folder "
        "and the temp dir. If the failing path is one of these, it is a policy denial: write under "
        "$TV_RUN_DIR (relative paths land there); otherwise it is a bug in the step. "
        "The tail of its stderr is in steps[].stderr_tail."
    )


def build(
    *,
    run_id: str,
    profile: str,
    mode: str,
    policy_name: str,
    policy_sha256: str,
    policy_source: str,
    layers: Layers,
    steps: Sequence[StepRecord],
    events: Sequence[Mapping[str, Any]],
    event_summary: Mapping[str, Any],
    scattered: Sequence[str],
    protected: Mapping[str, str],
    warnings: Sequence[str] = (),
    lakehouse_diff: Mapping[str, Any] | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """The report. ``lakehouse_diff``: the summary :func:`sandbox.lakediff.write` returns (audit
    mode; None -- shown as null -- in enforce mode, which makes no diff). ``status`` defaults to
    ``succeeded`` when every step exited 0, else ``failed``."""
    explanations = [e for s in steps if (e := explain_failure(s, layers, protected))]
    if status is None:
        status = "succeeded" if steps and all(s.exit_code == 0 for s in steps) else "failed"
    return {
        "schema": "tv-sandbox-report",
        "schema_version": 1,
        "run_id": run_id,
        "status": status,
        "profile": profile,
        "mode": mode,
        "policy": {"name": policy_name, "sha256": policy_sha256, "source": policy_source},
        "layers": {**asdict(layers), "kernel": layers.kernel},
        "steps": [asdict(s) for s in steps],
        "events": dict(event_summary),
        "event_count": len(events),
        "scattered_artifacts": list(scattered),
        "protected_mounts": dict(protected),
        "explanations": explanations,
        "warnings": list(warnings),
        "lakehouse_diff": dict(lakehouse_diff) if lakehouse_diff is not None else None,
        # development: what the run changed on the host through a mount its policy opens
        "host_changes": host_changes(events),
    }


def write(run_storage: str, report: Mapping[str, Any]) -> str:
    """Write the report at the top of the run folder -- replacing, never following, whatever
    the step left under that name (a symlink to the lakehouse, say)."""
    from sandbox import _json as json

    return write_into(run_storage, REPORT_NAME, (json.dumps(report, indent=1) + "\n").encode())
