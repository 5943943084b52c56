"""The lakehouse diff of an audit-mode run: what it created, modified or deleted in the mounts.

An audit-mode run never touches the host: what it would have changed in a mount (the lakehouse,
the exports) lands in ``$TV_RUN_DIR/audit/<mount path>``. This module reads that back as one
reviewable artifact, ``$TV_RUN_DIR/reports/lakehouse_diff.json``, written before the export (so
the manifest lists it). Per changed path::

    path      workspace-relative ("data/lakehouse/x.csv"), "/"-separated
    mount     the mount's name ("lakehouse", "exports")
    change    "created" | "modified" | "deleted"
    before    the host's file:   {"type": "file", "size", "sha256", "mode"}  (null when created)
    after     the run's copy:    the same, read from audit/<path>           (null when deleted)
    diff      unified diff (difflib) when both sides are UTF-8 text under 64 KiB, else null
    diff_skipped  why there is no diff ("binary or not UTF-8", "larger than 64 KiB", "symlink")

A symlink is ``{"type": "symlink", "target"}``. Where the changes come from:

* **Run copies**: every file or symlink below ``audit/<mount>``; one identical to the host's
  (content and mode: a copy-up that changed nothing, e.g. a file opened for append and closed)
  is not a change.
* **Overlayfs** (the kernel layer's audit overlays): a whiteout (character device 0/0, or an empty
  file marked ``overlay.whiteout``) deletes the host entry of its name -- a whole folder when the
  host has one there; an opaque folder (``overlay.opaque = "y"``: the run removed the folder and
  made it again) deletes every host entry below it that the run did not write again; a run's file
  where the host has a folder (or a folder where the host has a file or link) replaces it.
* **The Python guard** (``--kernel off``): it cannot record a deletion in the run folder, so a
  captured ``delete``/``rmdir``/``rename`` is a no-op on the host, logged in
  ``logs/sandbox_events.jsonl`` with ``captured: true`` (a rename's source is copied up first, then
  moved on). A path named by such an event that has no run copy at the end of the run, and exists
  on the host, was deleted.

Imported only by audit-mode runs (hashlib, difflib and json are not start-up costs of the others).
Reads the host, never writes it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import stat

from sandbox._paths import write_into
from sandbox.policy import AUDIT_DIR

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

SCHEMA = "tv-sandbox-lakehouse-diff"
SCHEMA_VERSION = 1
CHANGES = ("created", "modified", "deleted")
TEXT_MAX = 64 * 1024  # a unified diff only for text files under this size (both sides)
#: The guard's captured operations that remove a name (without a run copy to show for it).
REMOVING_OPS = frozenset({"delete", "rmdir", "rename"})

_CHUNK = 1 << 18
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")  # userxattr: overlays in a user namespace


class _Mount:
    __slots__ = ("host", "name", "rel", "upper")

    def __init__(self, name: str, rel: str, host: str, upper: str) -> None:
        self.name, self.rel, self.host, self.upper = name, rel, host, upper


def collect(
    run_storage: str,
    mounts: Mapping[str, tuple[str, str]],
    events: Iterable[Mapping[str, Any]] = (),
    *,
    run_dirs: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The changes of a run, sorted by path (see the module docstring).

    ``mounts``: name -> (workspace-relative path, real host path). ``events``: the run's event log
    (:func:`sandbox.events.read_events`). ``run_dirs``: other names of the run folder than
    ``run_storage`` that the events' targets may use (``$TV_RUN_DIR`` in the workspace).
    """
    real = os.path.realpath(run_storage)
    ms = [
        _Mount(name, rel.strip("/"), host, os.path.join(real, AUDIT_DIR, rel.strip("/")))
        for name, (rel, host) in mounts.items()
    ]
    prefixes = [os.path.join(d, AUDIT_DIR) for d in (real, run_storage, *run_dirs)]
    removed: dict[str, set[str]] = {m.name: set() for m in ms}
    for ev in events:
        op = ev.get("op")  # a line of the step's processes: anything, an unhashable list included
        removing = isinstance(op, str) and op in REMOVING_OPS
        if removing and ev.get("captured") is True and ev.get("action") == "redirect":
            hit = _mount_of(str(ev.get("target") or ""), prefixes, ms)
            if hit is not None:
                removed[hit[0].name].add(hit[1])
    out: list[dict[str, Any]] = []
    for m in ms:
        out.extend(_mount_changes(m, removed[m.name]))
    return sorted(out, key=lambda c: str(c["path"]))


def write(
    run_storage: str,
    rel_path: str,
    mounts: Mapping[str, tuple[str, str]],
    events: Iterable[Mapping[str, Any]] = (),
    *,
    run_id: str = "",
    run_dirs: Sequence[str] = (),
) -> dict[str, Any]:
    """Write the diff to ``run_storage/rel_path`` and return the run report's summary of it:
    ``{"path": rel_path, "created": n, "modified": n, "deleted": n}``."""
    changes = collect(run_storage, mounts, events, run_dirs=run_dirs)
    counts = {kind: sum(c["change"] == kind for c in changes) for kind in CHANGES}
    doc = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "mounts": {name: rel for name, (rel, _host) in mounts.items()},
        "counts": counts,
        "changes": changes,
    }
    # the step has had the run folder in its hands: what it left under this name is never followed
    write_into(run_storage, rel_path, (json.dumps(doc, indent=1) + "\n").encode())
    return {"path": rel_path, **counts}


# -- where the changes are ------------------------------------------------------------------------


def _mount_of(target: str, prefixes: Sequence[str], ms: Sequence[_Mount]) -> tuple[_Mount, str] | None:
    """(mount, path inside it) of an event's target ``<run dir>/audit/<mount>/<sub>``, or None."""
    for prefix in prefixes:
        if not target.startswith(prefix + "/"):
            continue
        rel = target[len(prefix) + 1 :]
        for m in ms:
            if rel.startswith(m.rel + "/"):
                sub = os.path.normpath(rel[len(m.rel) + 1 :])
                if sub not in (".", "..") and not sub.startswith("../"):
                    return m, sub
    return None


def _mount_changes(m: _Mount, removed: set[str]) -> list[dict[str, Any]]:
    after: dict[str, str] = {}  # sub -> the run's copy
    gone: set[str] = set()  # host entries (files or folders) the run's view no longer has
    if os.path.isdir(m.upper) and os.path.realpath(m.upper) == m.upper:  # never through a step's link
        _walk_upper(m, m.upper, "", host_hidden=False, after=after, gone=gone)
    for sub in removed:  # the guard's no-op removals: no run copy left, nothing of the overlay's
        if sub not in after and not _lexists(os.path.join(m.upper, sub)):
            gone.add(sub)
    deleted: set[str] = set()
    for sub in gone:
        deleted.update(s for s in _host_files(m.host, sub) if s not in after)
    out: list[dict[str, Any]] = []
    for sub in sorted(after.keys() | deleted):
        entry = _change(m, sub, after.get(sub))
        if entry is not None:
            out.append(entry)
    return out


def _walk_upper(
    m: _Mount, folder: str, sub: str, *, host_hidden: bool, after: dict[str, str], gone: set[str]
) -> None:
    """Record the run's copies below ``folder`` (``audit/<mount>/<sub>``) and what they hide.
    ``host_hidden``: the host's entries at this level are already gone (an opaque folder above)."""
    if not host_hidden and sub and _opaque(folder):
        gone.add(sub.rstrip("/"))  # the host's folder is hidden whole; the run's copies come back
        host_hidden = True
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return
    for entry in entries:
        s = sub + entry.name
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        host = None if host_hidden else _host_lstat(m.host, s)
        if _is_whiteout(entry.path, st):
            if host is not None:
                gone.add(s)
        elif stat.S_ISDIR(st.st_mode):
            if host is not None and not stat.S_ISDIR(host.st_mode):
                gone.add(s)  # a folder where the host has a file or link
            _walk_upper(m, entry.path, s + "/", host_hidden=host_hidden, after=after, gone=gone)
        elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            if host is not None and stat.S_ISDIR(host.st_mode):
                gone.add(s)  # a file where the host has a folder: the folder's files are gone
            after[s] = entry.path


def _is_whiteout(path: str, st: os.stat_result) -> bool:
    if stat.S_ISCHR(st.st_mode):
        return st.st_rdev == 0
    return stat.S_ISREG(st.st_mode) and st.st_size == 0 and _overlay_flag(path, "whiteout") is not None


def _opaque(folder: str) -> bool:
    return _overlay_flag(folder, "opaque") == b"y"


def _overlay_flag(path: str, name: str) -> bytes | None:
    for prefix in _OVERLAY_XATTRS:
        try:
            return os.getxattr(path, prefix + name, follow_symlinks=False)
        except OSError:
            continue
    return None


def _host_lstat(host: str, sub: str) -> os.stat_result | None:
    """The host entry at ``sub`` in the mount, never through a symlink on the way (None if none)."""
    path = host
    comps = sub.split("/")
    for i, comp in enumerate(comps):
        path = os.path.join(path, comp)
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if i < len(comps) - 1 and not stat.S_ISDIR(st.st_mode):
            return None
    return st


def _host_files(host: str, sub: str) -> list[str]:
    """The files and symlinks of the host at ``sub`` (itself, or every one below a folder)."""
    st = _host_lstat(host, sub)
    if st is None:
        return []
    if not stat.S_ISDIR(st.st_mode):
        return [sub] if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) else []
    out: list[str] = []
    top = os.path.join(host, sub)
    for dirpath, dirs, files in os.walk(top):  # never follows a link
        rel = os.path.relpath(dirpath, host)
        for name in [*files, *dirs]:  # os.walk lists links to folders among the folders
            try:
                mode = os.lstat(os.path.join(dirpath, name)).st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                out.append(f"{rel}/{name}")
    return out


def _lexists(path: str) -> bool:
    try:
        os.lstat(path)
    except OSError:
        return False
    return True


# -- one change -----------------------------------------------------------------------------------


def _change(m: _Mount, sub: str, copy: str | None) -> dict[str, Any] | None:
    """The entry of one path, or None when the run's copy is the host's, unchanged."""
    rel = f"{m.rel}/{sub}"
    st = _host_lstat(m.host, sub)
    kept = st is not None and (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode))
    original = os.path.join(m.host, sub) if kept else None  # a host folder here: its files are listed
    change = "deleted" if copy is None else "created" if original is None else "modified"
    entry: dict[str, Any] = {"path": rel, "mount": m.name, "change": change}
    try:
        before, before_data = _describe(original) if original is not None else (None, None)
        after, after_data = _describe(copy) if copy is not None else (None, None)
    except OSError as exc:  # listed all the same: a reviewer must see that something changed here
        unreadable = f"unreadable: {exc.strerror or exc} ({exc.filename})"
        return {**entry, "before": None, "after": None, "diff": None, "diff_skipped": unreadable}
    if before is not None and before == after:
        return None
    text, why = _unified(rel, before, before_data, after, after_data)
    return {**entry, "before": before, "after": after, "diff": text, "diff_skipped": why}


def _describe(path: str) -> tuple[dict[str, Any], bytes | None]:
    """(description, content when a file under TEXT_MAX) of a file or symlink."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return {"type": "symlink", "target": os.readlink(path)}, None
    mode = stat.S_IMODE(st.st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if st.st_size < TEXT_MAX:
            chunks = []
            while chunk := os.read(fd, _CHUNK):
                chunks.append(chunk)
            data = b"".join(chunks)
            digest, size = hashlib.sha256(data).hexdigest(), len(data)
            kept: bytes | None = data if size < TEXT_MAX else None
        else:
            h = hashlib.sha256()
            size = 0
            while chunk := os.read(fd, _CHUNK):
                h.update(chunk)
                size += len(chunk)
            digest, kept = h.hexdigest(), None
    finally:
        os.close(fd)
    return {"type": "file", "size": size, "sha256": digest, "mode": mode}, kept


def _unified(
    rel: str,
    before: Mapping[str, Any] | None,
    before_data: bytes | None,
    after: Mapping[str, Any] | None,
    after_data: bytes | None,
) -> tuple[str | None, str | None]:
    """(unified diff, None) or (None, why there is none)."""
    sides = [s for s in (before, after) if s is not None]
    if any(s["type"] != "file" for s in sides):
        return None, "symlink"
    if (before is not None and before_data is None) or (after is not None and after_data is None):
        return None, f"larger than {TEXT_MAX // 1024} KiB"
    try:
        old = before_data.decode("utf-8") if before_data is not None else ""
        new = after_data.decode("utf-8") if after_data is not None else ""
    except UnicodeDecodeError:
        return None, "binary or not UTF-8"
    if "\x00" in old or "\x00" in new:
        return None, "binary or not UTF-8"
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile=f"a/{rel}" if before is not None else "/dev/null",
        tofile=f"b/{rel}" if after is not None else "/dev/null",
    )
    eol = "\n\\ No newline at end of file\n"  # as diff(1) marks a last line without one
    return "".join(line if line.endswith("\n") else line + eol for line in lines), None
