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
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file")
    with open(fd, "rb") as fh:
        try:
            manifest = json.load(fh)
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
    return None


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
    """:func:`verify` of ``dest`` against ``manifest``, as :func:`read_manifest` returned it."""
    root = os.fspath(dest)
    files = {f["path"]: f for f in manifest.get("files", [])}
    links = {s["path"]: s["target"] for s in manifest.get("symlinks", [])}
    dirs = {d["path"] for d in manifest.get("dirs", [])}
    for p in [*files, *links, *dirs]:  # a listed path's folders are implied
        while "/" in p:
            p = p.rpartition("/")[0]
            dirs.add(p)
    problems: list[str] = []
    seen: set[str] = set()
    buf = memoryview(bytearray(_CHUNK))
    for rel, path, st in _walk(root, dirs, problems):
        seen.add(rel)
        try:
            problem = _entry_problem(rel, path, st, files, links, dirs, buf)
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
    path: str,
    st: os.stat_result,
    files: dict[str, dict[str, Any]],
    links: dict[str, str],
    dirs: set[str],
    buf: memoryview,
) -> str:
    """How the entry ``rel`` of the export differs from the manifest ("" when it does not)."""
    mode = st.st_mode
    if rel in files:
        want = files[rel]
        if not stat.S_ISREG(mode):
            return f"not a regular file: {rel}"
        if st.st_size != want["size"]:
            return f"size differs: {rel}: manifest {want['size']}, on disk {st.st_size}"
        if _sha256(path, buf) != want["sha256"]:
            return f"content differs (sha256): {rel}"
        if "mode" in want and stat.S_IMODE(mode) != want["mode"]:
            return f"mode differs: {rel}: manifest {want['mode']:o}, on disk {mode & 0o7777:o}"
    elif rel in links:
        if not stat.S_ISLNK(mode):
            return f"not a symlink: {rel}"
        if (target := os.readlink(path)) != links[rel]:
            return f"symlink target differs: {rel}: manifest {links[rel]}, on disk {target}"
    elif rel in dirs:
        if not stat.S_ISDIR(mode):
            return f"not a directory: {rel}"
    elif rel != MANIFEST_NAME:
        return f"unlisted {'directory' if stat.S_ISDIR(mode) else 'file'}: {rel}"
    return ""


def _walk(
    root: str, dirs: set[str], problems: list[str], rel: str = ""
) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative path, path, lstat) of everything below ``root``; descends only into listed dirs. A
    folder or entry that cannot be read is one of ``problems``."""
    try:
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            entries = list(it)
    except OSError as exc:
        problems.append(f"cannot read: {rel.rstrip('/') or '.'}: {exc.strerror or exc}")
        return
    for entry in entries:
        r = rel + entry.name
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as exc:
            problems.append(f"cannot read: {r}: {exc.strerror or exc}")
            continue
        yield r, entry.path, st
        if stat.S_ISDIR(st.st_mode) and r in dirs:
            yield from _walk(root, dirs, problems, r + "/")


def _utc_now() -> str:
    """``2026-11-29T21:40:01.123Z`` (``datetime``'s isoformat in milliseconds, without its import)."""
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ns // 1_000_000:03d}Z"


def _sha256(path: str, buf: memoryview) -> str:
    digest = sha256(os.stat(path, follow_symlinks=False).st_size)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while n := os.readv(fd, [buf]):
            digest.update(buf[:n])
    finally:
        os.close(fd)
    return digest.hexdigest()
