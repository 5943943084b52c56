"""The atomic export of a run folder, and what reads it back.

- ``_exporter.py`` -- :func:`export_run`: stage beside the destination (``_stage``: the tree, then
  the manifest), then commit (``_Commit``: one rename, or an atomic exchange with ``overwrite``;
  ``rollback()`` on any failure); :func:`write_error`;
- ``_stager.py`` -- the stage's copy: the run folder walked by descriptors, hashed, fsynced;
- ``manifest.py`` -- the manifest's schema, :func:`read_manifest` and :func:`verify` (an export
  checked against its manifest, file by file);
- ``_space.py`` -- :func:`check_space`: will the run folder fit at its destination;
- ``_recovery.py`` -- the leftovers of an interrupted export, their names and locks, and
  :func:`recover` (run by every export, or by hand).

Names load on first use (PEP 562): ``tv-sandbox verify`` and the pipeline read manifests without
loading the exporter.
"""

from __future__ import annotations

from sandbox._lazy import attributes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sandbox.export._exporter import DEFAULT_MAX_BYTES, ExportResult, export_run, write_error
    from sandbox.export._recovery import recover, recover_at
    from sandbox.export._space import check_space
    from sandbox.export.manifest import (
        MANIFEST_NAME,
        SCHEMA,
        SCHEMA_VERSION,
        STATUSES,
        read_manifest,
        verify,
    )

_WHERE = {
    **dict.fromkeys(("DEFAULT_MAX_BYTES", "ExportResult", "export_run", "write_error"), "_exporter"),
    **dict.fromkeys(("recover", "recover_at"), "_recovery"),
    "check_space": "_space",
    **dict.fromkeys(
        ("MANIFEST_NAME", "SCHEMA", "SCHEMA_VERSION", "STATUSES", "read_manifest", "verify"), "manifest"
    ),
}

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MANIFEST_NAME",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STATUSES",
    "ExportResult",
    "check_space",
    "export_run",
    "read_manifest",
    "recover",
    "recover_at",
    "verify",
    "write_error",
]

__getattr__ = attributes(__name__, _WHERE)
