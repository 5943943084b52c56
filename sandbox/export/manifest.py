"""The export manifest: its schema, how the exporter builds it, and how an export is checked against it.

``<export>/manifest.json`` is one compact JSON object, written last into the stage by
:func:`sandbox.export.export_run`::

    schema          "tv-sandbox-manifest"
    schema_version  1
    run_id, status ("succeeded" | "failed"), exit_code (int or null)
    policy          {"name", "sha256"}
    created         UTC, ISO 8601 with milliseconds and "Z"
    files           [{"path", "size", "sha256", "mode"}]   regular files, sorted by path
    symlinks        [{"path", "target"}]                   copied as links, never followed
    dirs            [{"path", "mode"}]
    deleted         ["path"]                               overlayfs whiteouts: the run deleted these
    skipped         [{"path", "kind"}]                     fifos, sockets, devices, a reserved name
    totals          {"files", "bytes"}
    run             the caller's ``extra`` mapping

Paths are relative to the export, ``/``-separated. :func:`read_manifest` accepts only this schema,
version and shape; :func:`verify` holds an export to its manifest exactly, one line per problem,
and never raises for what the folder holds (a manifest that is not valid is one problem: the
folder does not verify). Stdlib only; no writes.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from sandbox import _json as json
from sandbox._digest import sha256

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STATUSES",
    "build",
    "differences",
    "encode",
    "header",
    "read_manifest",
    "verify",
]

MANIFEST_NAME = "manifest.json"
SCHEMA = "tv-sandbox-manifest"
SCHEMA_VERSION = 1
STATUSES = ("succeeded", "failed", "cancelled", "interrupted")

_CHUNK = 1 << 18

#: The largest ``manifest.json`` :func:`read_manifest` reads (a run of a million or two files);
#: past it the folder does not verify -- a sparse manifest of terabytes is never read into memory.
MAX_MANIFEST_BYTES = 256 << 20
#: The longest path a manifest may list (Linux's PATH_MAX): the exporter never writes a longer one.
MAX_PATH_CHARS = 4096


# -- writing (the exporter's side) ----------------------------------------------------------------


def header(
    *, run_id: str, status: str, exit_code: int | None, policy_name: str, policy_sha256: str
) -> dict[str, Any]:
    """The fields known before the copy starts; ``created`` is now."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": status,
        "exit_code": exit_code,
        "policy": {"name": policy_name, "sha256": policy_sha256},
        "created": _utc_now(),
    }


def build(
    head: dict[str, Any],
    *,
    files: list[dict[str, Any]],
    symlinks: list[dict[str, Any]],
    dirs: list[dict[str, Any]],
    deleted: list[str],
    skipped: list[dict[str, Any]],
    total_bytes: int,
    run: dict[str, Any],
) -> dict[str, Any]:
    """The whole manifest: ``head`` (from :func:`header`) and what the copy recorded, sorted."""
    return {
        **head,
        "files": sorted(files, key=_by_path),
        "symlinks": sorted(symlinks, key=_by_path),
        "dirs": sorted(dirs, key=_by_path),
        "deleted": sorted(deleted),
        "skipped": sorted(skipped, key=_by_path),
        "totals": {"files": len(files), "bytes": total_bytes},
        "run": run,
    }


def encode(manifest: dict[str, Any]) -> bytes:
    """The bytes of ``manifest.json``: indented for a reader, one line per file.

    ``indent=`` makes ``json`` fall back to its Python encoder (10x slower), so only the small
    header is indented; the files -- thousands in a big run -- go through the C encoder, a line
    each (``files`` comes last)."""
    head = json.dumps({k: v for k, v in manifest.items() if k != "files"}, indent=1)
    files = manifest.get("files")
    if files is None:
        return head.encode() + b"\n"
    lines = ",\n  ".join(json.dumps(f, separators=(", ", ": ")) for f in files)
    listing = f'"files": [\n  {lines}\n ]' if files else '"files": []'
    body = f"{head[:-2]},\n {listing}\n}}" if head != "{}" else f"{{\n {listing}\n}}"
    return body.encode() + b"\n"


def _by_path(item: dict[str, Any]) -> str:
    return str(item["path"])


# -- reading and verifying an export --------------------------------------------------------------


def read_manifest(dest: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the export at ``dest``. OSError when it cannot be opened or read; ValueError
    when it is not one this version wrote: not a regular file (a link, a FIFO: never followed nor
    waited on), not JSON, another schema or version, or lists whose entries :func:`verify` could
    not read (an export's folder can be anyone's: the manifest is checked before it is used)."""
    path = os.path.join(os.fspath(dest), MANIFEST_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symlink, not the manifest file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file")
    too_big = ValueError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB: not read")
    if st.st_size > MAX_MANIFEST_BYTES:
        os.close(fd)
        raise too_big
    with open(fd, "rb") as fh:
        data = fh.read(MAX_MANIFEST_BYTES + 1)  # bounded: the file may grow meanwhile
    if len(data) > MAX_MANIFEST_BYTES:
        raise too_big
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." past the limit
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise ValueError(f'{path} is not a tv-sandbox manifest (no "schema": "{SCHEMA}")')
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{path} has schema_version {manifest.get('schema_version')!r}; "
            f"this tv-sandbox reads version {SCHEMA_VERSION}"
        )
    for key, fields in _ENTRIES.items():
        bad = _bad_entry(manifest.get(key, []), fields)
        if bad is not None:
            raise ValueError(f"{path} is not a valid tv-sandbox manifest: {key}{bad}")
    totals = manifest.get("totals", {})
    if not (isinstance(totals, dict) and all(type(v) is int for v in totals.values())):
        raise ValueError(f'{path} is not a valid tv-sandbox manifest: totals is not {{"files", "bytes"}}')
    return manifest


#: What :func:`verify` reads of each listed entry: field -> (type, required).
_ENTRIES: dict[str, dict[str, tuple[type, bool]]] = {
    "files": {"path": (str, True), "size": (int, True), "sha256": (str, True), "mode": (int, False)},
    "symlinks": {"path": (str, True), "target": (str, True)},
    "dirs": {"path": (str, True)},
}


def _bad_entry(entries: Any, fields: dict[str, tuple[type, bool]]) -> str | None:
    """Where ``entries`` is not a list of objects with ``fields`` (``[3]["size"] is not an int``)."""
    if not isinstance(entries, list):
        return " is not a list"
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            return f"[{i}] is not an object"
        for name, (kind, required) in fields.items():
            if name not in entry and not required:
                continue
            value = entry.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                return f'[{i}]["{name}"] is not {"an integer" if kind is int else "a string"}'
            if name == "path" and not _relative(str(value)):
                return f'[{i}]["path"] is not a relative path inside the export'
    return None


def _relative(path: str) -> bool:
    """Whether ``path`` is one the exporter writes: relative, ``/``-separated, no empty, ``.`` or
    ``..`` part, no NUL, at most :data:`MAX_PATH_CHARS` long."""
    if not path or len(path) > MAX_PATH_CHARS or "\0" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def verify(dest: str | os.PathLike[str]) -> list[str]:
    """[] when ``dest`` matches its manifest exactly, else one line per problem; a single line when
    the manifest cannot be read or is not a valid one (:func:`read_manifest`): nothing to hold the
    folder to. Never raises for what the folder holds -- an entry that cannot be read is a problem.

    Every listed file must be present with its size, sha256 and mode; every listed symlink with its
    target; every listed directory present; nothing unlisted except the manifest itself.
    """
    root = os.fspath(dest)
    try:
        manifest = read_manifest(root)
    except (OSError, ValueError) as exc:
        return [f"{root}: cannot read the manifest: {exc}"]
    return differences(root, manifest)


def differences(dest: str | os.PathLike[str], manifest: dict[str, Any]) -> list[str]:
    """:func:`verify` of ``dest`` against ``manifest``, as :func:`read_manifest` returned it.

    The folder is read through descriptors, a folder at a time, never through a link: an entry
    swapped for a link, a FIFO or a device while it is read is a difference, never followed,
    waited on or read from."""
    root = os.fspath(dest)
    files = {f["path"]: f for f in manifest.get("files", [])}
    links = {s["path"]: s["target"] for s in manifest.get("symlinks", [])}
    dirs = {d["path"] for d in manifest.get("dirs", [])}
    # A listed path's folders are implied: a tree of the listed paths' parts (linear in the
    # manifest's size; a set of every prefix would be quadratic in a path's length).
    tree: dict[str, Any] = {}
    for p in [*files, *links, *dirs]:
        node = tree
        for part in p.split("/"):
            node = node.setdefault(part, {})
    problems: list[str] = []
    seen: set[str] = set()
    buf = memoryview(bytearray(_CHUNK))
    for rel, dfd, name, st, below in _walk(root, tree, dirs, problems):
        seen.add(rel)
        try:
            problem = _entry_problem(rel, dfd, name, st, files, links, rel in dirs or bool(below), buf)
        except OSError as exc:  # gone, or not readable by this user: it does not verify
            problem = f"cannot read: {rel}: {exc.strerror or exc}"
        if problem:
            problems.append(problem)
    problems += [f"missing file: {p}" for p in files if p not in seen]
    problems += [f"missing symlink: {p}" for p in links if p not in seen]
    problems += [f"missing directory: {p}" for p in dirs if p not in seen]
    totals = manifest.get("totals", {})
    if totals != {"files": len(files), "bytes": sum(f["size"] for f in files.values())}:
        problems.append(f"manifest totals {totals} do not match its file list")
    return problems


def _entry_problem(
    rel: str,
    dfd: int,
    name: str,
    st: os.stat_result,
    files: dict[str, dict[str, Any]],
    links: dict[str, str],
    is_dir: bool,
    buf: memoryview,
) -> str:
    """How the entry ``rel`` (``name`` in the folder open at ``dfd``) differs from the manifest
    ("" when it does not); ``is_dir``: the manifest lists it as a folder, or paths below it."""
    mode = st.st_mode
    if rel in files:
        want = files[rel]
        if not stat.S_ISREG(mode):
            return f"not a regular file: {rel}"
        if st.st_size != want["size"]:
            return f"size differs: {rel}: manifest {want['size']}, on disk {st.st_size}"
        digest = _sha256(dfd, name, st, buf)
        if digest is None:
            return f"changed while verified: {rel}"
        if digest != want["sha256"]:
            return f"content differs (sha256): {rel}"
        if "mode" in want and stat.S_IMODE(mode) != want["mode"]:
            return f"mode differs: {rel}: manifest {want['mode']:o}, on disk {mode & 0o7777:o}"
    elif rel in links:
        if not stat.S_ISLNK(mode):
            return f"not a symlink: {rel}"
        if (target := os.readlink(name, dir_fd=dfd)) != links[rel]:
            return f"symlink target differs: {rel}: manifest {links[rel]}, on disk {target}"
    elif is_dir:
        if not stat.S_ISDIR(mode):
            return f"not a directory: {rel}"
    elif rel != MANIFEST_NAME:
        return f"unlisted {'directory' if stat.S_ISDIR(mode) else 'file'}: {rel}"
    return ""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC


def _walk(
    root: str, tree: dict[str, Any], dirs: set[str], problems: list[str]
) -> Iterator[tuple[str, int, str, os.stat_result, dict[str, Any] | None]]:
    """(relative path, descriptor of its folder, name, lstat, its node of ``tree`` or None) of
    everything below ``root``; descends only into listed folders (in ``dirs`` or above a listed
    path), through descriptors opened without following a link. Iterative: a folder nested
    thousands deep costs a descriptor a level, never the stack. A folder or entry that cannot be
    read is one of ``problems``."""
    stack: list[tuple[str, int, Iterator[os.DirEntry[str]], dict[str, Any]]] = []

    def enter(rel: str, fd: int, node: dict[str, Any]) -> None:
        try:
            with os.scandir(fd) as it:
                entries = list(it)
        except OSError as exc:
            os.close(fd)
            problems.append(f"cannot read: {rel.rstrip('/') or '.'}: {exc.strerror or exc}")
            return
        stack.append((rel, fd, iter(entries), node))

    try:
        try:
            top = os.open(root, _DIR_FLAGS)  # the caller's own argument: a link to it is fine
        except OSError as exc:
            problems.append(f"cannot read: .: {exc.strerror or exc}")
            return
        enter("", top, tree)
        while stack:
            rel, dfd, entries, node = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                os.close(dfd)
                continue
            name = entry.name
            r = rel + name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                problems.append(f"cannot read: {r}: {exc.strerror or exc}")
                continue
            child = node.get(name)
            yield r, dfd, name, st, child
            if stat.S_ISDIR(st.st_mode) and (child or r in dirs):
                try:
                    cfd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dfd)
                except OSError as exc:  # swapped for a link or a file since, or too deep
                    problems.append(f"cannot read: {r}: {exc.strerror or exc}")
                    continue
                enter(r + "/", cfd, child or {})
    finally:
        for _, dfd, _, _ in stack:
            os.close(dfd)


def _utc_now() -> str:
    """``2026-11-29T21:40:01.123Z`` (``datetime``'s isoformat in milliseconds, without its import)."""
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ns // 1_000_000:03d}Z"


def _sha256(dfd: int, name: str, st: os.stat_result, buf: memoryview) -> str | None:
    """The sha256 of the file ``name`` in the folder open at ``dfd``, whose lstat was ``st``; None
    when it is no longer that file (swapped for a FIFO, a device, another file) or grew past its
    size -- never waited on, never read past ``st.st_size`` (a file appended to forever)."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return None
        digest = sha256(st.st_size)
        left = st.st_size
        while n := os.readv(fd, [buf]):
            if n > left:
                return None
            left -= n
            digest.update(buf[:n])
        if left:
            return None
    finally:
        os.close(fd)
    return digest.hexdigest()
