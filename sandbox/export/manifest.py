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

Paths are relative to the export, ``/``-separated. :func:`read_manifest` accepts only this schema
and version; :func:`verify` holds an export to its manifest exactly. Stdlib only; no writes.
"""

from __future__ import annotations

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
    """The manifest of the export at ``dest``. OSError when unreadable, ValueError when not ours."""
    path = os.path.join(os.fspath(dest), MANIFEST_NAME)
    with open(path, "rb") as fh:
        try:
            manifest = json.load(fh)
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise ValueError(f'{path} is not a tv-sandbox manifest (no "schema": "{SCHEMA}")')
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{path} has schema_version {manifest.get('schema_version')!r}; "
            f"this tv-sandbox reads version {SCHEMA_VERSION}"
        )
    return manifest


def verify(dest: str | os.PathLike[str]) -> list[str]:
    """[] when ``dest`` matches its manifest exactly, else one line per problem.

    Every listed file must be present with its size, sha256 and mode; every listed symlink with its
    target; every listed directory present; nothing unlisted except the manifest itself.
    """
    root = os.fspath(dest)
    try:
        manifest = read_manifest(root)
    except (OSError, ValueError) as exc:
        return [f"{root}: cannot read the manifest: {exc}"]
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
    for rel, path, st in _walk(root, dirs):
        seen.add(rel)
        mode = st.st_mode
        if rel in files:
            want = files[rel]
            if not stat.S_ISREG(mode):
                problems.append(f"not a regular file: {rel}")
            elif st.st_size != want["size"]:
                problems.append(f"size differs: {rel}: manifest {want['size']}, on disk {st.st_size}")
            elif _sha256(path, buf) != want["sha256"]:
                problems.append(f"content differs (sha256): {rel}")
            elif "mode" in want and stat.S_IMODE(mode) != want["mode"]:
                problems.append(f"mode differs: {rel}: manifest {want['mode']:o}, on disk {mode & 0o7777:o}")
        elif rel in links:
            if not stat.S_ISLNK(mode):
                problems.append(f"not a symlink: {rel}")
            elif (target := os.readlink(path)) != links[rel]:
                problems.append(f"symlink target differs: {rel}: manifest {links[rel]}, on disk {target}")
        elif rel in dirs:
            if not stat.S_ISDIR(mode):
                problems.append(f"not a directory: {rel}")
        elif rel != MANIFEST_NAME:
            problems.append(f"unlisted {'directory' if stat.S_ISDIR(mode) else 'file'}: {rel}")
    problems += [f"missing file: {p}" for p in files if p not in seen]
    problems += [f"missing symlink: {p}" for p in links if p not in seen]
    problems += [f"missing directory: {p}" for p in dirs if p not in seen]
    totals = manifest.get("totals", {})
    if totals != {"files": len(files), "bytes": sum(f["size"] for f in files.values())}:
        problems.append(f"manifest totals {totals} do not match its file list")
    return problems


def _walk(root: str, dirs: set[str], rel: str = "") -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative path, path, lstat) of everything below ``root``; descends only into listed dirs."""
    with os.scandir(os.path.join(root, rel) if rel else root) as it:
        entries = list(it)
    for entry in entries:
        r = rel + entry.name
        st = entry.stat(follow_symlinks=False)
        yield r, entry.path, st
        if stat.S_ISDIR(st.st_mode) and r in dirs:
            yield from _walk(root, dirs, r + "/")


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
