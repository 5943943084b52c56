"""The one table of cases every enforcer is held against (Python guard, fsspec filesystem, kernel).

A case is (verb, path, expected outcome) in a production run with the sample host of
``sandbox.samples``. Paths are relative to the workspace (the steps' cwd) or start with a token:
``{host}`` the host root, ``{run}`` $TV_RUN_DIR, ``{tmp}`` the steps' $TMPDIR, ``{outside}`` a folder
outside everything. The run fixture also makes, unguarded: ``{run}/data/existing.txt``,
``{run}/data/to_lake`` -> the host lakehouse, ``{run}/data/to_lake_file`` -> a lakehouse file,
``{run}/data/to_outside`` -> the outside folder, ``{host}/data/lakehouse/empty_dir``,
``{outside}/file.txt`` and ``{outside}/empty_dir``; :func:`prepare` plants the host-side symlinks of
:data:`HOST_LINKS` (to files and to folders, inside and outside the mounts) before a case runs.

Outcomes:
- ``deny``: the operation raises an OSError (EACCES from the guard or Landlock, EROFS from a read-only
  mount) and the host is byte-identical.
- ``redirect``: the operation succeeds, its effect is at ``$TV_RUN_DIR/<workspace-relative path>``
  and the host is byte-identical.
- ``allow``: the operation succeeds where it was aimed (inside the run folder or the temp dir, or a
  read).
In audit mode every ``deny`` inside the workspace (the mounts included) becomes ``captured``: it
succeeds, its effect is at ``$TV_RUN_DIR/audit/<rel>``, the host is byte-identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import RunEnv

LAKE_FILE = "data/lakehouse/BINANCE_BTCUSDT_1d.csv"
SCAN_FILE = "export/R1/strategy_alpha_spot_rating_ma_long_20260101-120000.json"

VERBS = (
    "write",
    "append",
    "truncate",
    "delete",
    "mkdir",
    "rmdir",
    "rename_from",
    "rename_to",
    "symlink",
    "hardlink",
    "hardlink_from",
    "chmod",
    "utime",
    "read",
)


@dataclass(frozen=True)
class Case:
    id: str
    verb: str
    path: str
    expect: str  # deny | redirect | allow
    rule: str | None = None  # the policy rule expected to decide (checked where an enforcer names it)
    audit: str | None = None  # the outcome in audit mode, where it is not the general one
    lands: str | None = None  # where a redirect lands, when a host link it follows leads elsewhere

    @property
    def outside(self) -> bool:
        return self.path.startswith("{outside}") or self.rule == "outside-writable-roots"

    def expect_in(self, mode: str) -> str:
        if mode == "audit" and self.audit is not None:
            return self.audit
        if mode == "audit" and self.expect == "deny" and not self.outside:
            return "captured"
        return self.expect


LR = "lakehouse-read-only"
WR = "workspace-redirect"
STEP = "scripts/legacy_step.py"

#: Host-side symlinks :func:`prepare` plants (path under the host -> link text): to a file and to
#: folders, inside and outside the mounts, relative and absolute (``{outside}``).
HOST_LINKS: tuple[tuple[str, str], ...] = (
    ("scripts/step_alias.py", "legacy_step.py"),  # a file, outside the mounts
    ("scripts/to_lake", "../data/lakehouse"),  # a folder outside the mounts -> a mount
    ("scripts/to_outside", "{outside}"),  # -> outside everything
    ("scripts/outside_file", "{outside}/file.txt"),
    ("data/lakehouse/lake_alias.csv", "BINANCE_BTCUSDT_1d.csv"),  # a file inside a mount
    ("data/lakehouse/to_scripts", "../../scripts"),  # a folder inside a mount -> out of it
)
CASES: tuple[Case, ...] = (
    # -- the lakehouse mount, through the workspace path ------------------------------------------
    Case("lake-create", "write", "data/lakehouse/new.csv", "deny", LR),
    Case(
        "lake-seed-bug",
        "write",
        "data/lakehouse/selection_audit.json",
        "deny",
        "selection-audit-in-lakehouse",
    ),
    Case("lake-append", "append", LAKE_FILE, "deny", LR),
    Case("lake-truncate", "truncate", LAKE_FILE, "deny", LR),
    Case("lake-delete", "delete", LAKE_FILE, "deny", LR),
    Case("lake-rename-from", "rename_from", LAKE_FILE, "deny", LR),
    Case("lake-rename-to", "rename_to", "data/lakehouse/moved.csv", "deny", LR),
    Case("lake-mkdir", "mkdir", "data/lakehouse/newdir", "deny", LR),
    Case("lake-rmdir", "rmdir", "data/lakehouse/empty_dir", "deny", LR),
    Case("lake-symlink", "symlink", "data/lakehouse/link.csv", "deny", LR),
    Case("lake-hardlink-into", "hardlink", "data/lakehouse/hard.csv", "deny", LR),
    Case("lake-hardlink-out", "hardlink_from", LAKE_FILE, "deny", LR),
    Case("lake-chmod", "chmod", LAKE_FILE, "deny", LR),
    Case("lake-utime", "utime", LAKE_FILE, "deny", LR),
    # -- the same, through the mount's real host target, `..`, symlinks and /proc aliases ----------
    Case("lake-host-create", "write", "{host}/data/lakehouse/new.csv", "deny", LR),
    Case("lake-host-chmod", "chmod", "{host}/" + LAKE_FILE, "deny", LR),
    Case("lake-host-delete", "delete", "{host}/" + LAKE_FILE, "deny", LR),
    Case("lake-dotdot", "write", "reports/../data/lakehouse/dotdot.csv", "deny", LR),
    Case("lake-slashes", "write", "data//lakehouse/./slashes.csv", "deny", LR),
    Case("lake-via-run-dirlink", "write", "{run}/data/to_lake/via_link.csv", "deny", LR),
    Case("lake-via-run-filelink", "append", "{run}/data/to_lake_file", "deny", LR),
    Case("lake-chmod-via-link", "chmod", "{run}/data/to_lake_file", "deny", LR),
    Case("lake-proc-cwd", "write", "/proc/self/cwd/data/lakehouse/proc.csv", "deny", LR),
    # `..` after $TV_RUN_DIR climbs physically: out of the run storage where $TV_RUN_DIR is a
    # symlink (guard alone: outside, denied), into the lakehouse where it is a bind mount (kernel
    # layer: denied; captured in audit mode). Denied either way; the rule depends on the workspace.
    Case("lake-run-dotdot", "write", "{run}/../../../../data/lakehouse/up.csv", "deny", None, "deny"),
    # -- the scanner exports -------------------------------------------------------------------
    Case("export-create", "write", "export/R1/new.json", "deny", "exports-read-only"),
    Case("export-delete", "delete", SCAN_FILE, "deny", "exports-read-only"),
    Case("export-chmod", "chmod", SCAN_FILE, "deny", "exports-read-only"),
    Case("export-host-append", "append", "{host}/" + SCAN_FILE, "deny", "exports-read-only"),
    # -- outside everything ----------------------------------------------------------------------
    Case("outside-create", "write", "{outside}/new.txt", "deny", "outside-writable-roots"),
    Case("outside-append", "append", "{outside}/file.txt", "deny", "outside-writable-roots"),
    Case("outside-chmod", "chmod", "{outside}/file.txt", "deny", "outside-writable-roots"),
    Case("outside-utime", "utime", "{outside}/file.txt", "deny", "outside-writable-roots"),
    Case("outside-delete", "delete", "{outside}/file.txt", "deny", "outside-writable-roots"),
    Case("outside-mkdir", "mkdir", "{outside}/newdir", "deny", "outside-writable-roots"),
    Case("outside-rmdir", "rmdir", "{outside}/empty_dir", "deny", "outside-writable-roots"),
    Case(
        "outside-via-link",
        "write",
        "{run}/data/to_outside/new.txt",
        "deny",
        "outside-writable-roots",
    ),
    Case("outside-rename-to", "rename_to", "{outside}/moved.txt", "deny", "outside-writable-roots"),
    # -- relative (and host-absolute) writes land in the run folder -------------------------------
    Case("rel-create", "write", "reports/out.csv", "redirect", "workspace-redirect"),
    Case("rel-top-level", "write", "out.txt", "redirect", "workspace-redirect"),
    Case("rel-data", "write", "data/intermediate.pkl", "redirect", "workspace-redirect"),
    Case("rel-mkdir", "mkdir", "newdir", "redirect", "workspace-redirect"),
    Case("rel-append-code", "append", "scripts/legacy_step.py", "redirect", "workspace-redirect"),
    Case("rel-chmod-code", "chmod", "scripts/legacy_step.py", "redirect", "workspace-redirect"),
    Case("rel-rename-to", "rename_to", "reports/renamed.txt", "redirect", "workspace-redirect"),
    Case("rel-symlink", "symlink", "reports/link.txt", "redirect", "workspace-redirect"),
    Case("rel-prefix-sibling", "write", "data/lakehouseX.csv", "redirect", "workspace-redirect"),
    Case("host-root-create", "write", "{host}/new_at_host_root.txt", "redirect", "workspace-redirect"),
    Case("host-code-create", "write", "{host}/scripts/new.py", "redirect", "workspace-redirect"),
    Case(
        "host-run-export",
        "write",
        "{host}/artifacts/summaries/runs/R1/early.txt",
        "redirect",
        "run-folder",
    ),
    # -- through host-side symlinks (HOST_LINKS): what a link leads to is decided ----------------------
    Case("hostlink-append-file", "append", "scripts/step_alias.py", "redirect", WR, lands=STEP),
    Case("hostlink-chmod-file", "chmod", "scripts/step_alias.py", "redirect", WR, lands=STEP),
    Case("hostlink-host-append", "append", "{host}/scripts/step_alias.py", "redirect", WR, lands=STEP),
    # link(2) links the symlink itself: its copy-up is a link (issue 12's first drift)
    Case("hostlink-hardlink-from", "hardlink_from", "scripts/step_alias.py", "redirect", WR),
    # removing what exists only at the host is refused: an in-process enforcer cannot record a
    # deletion (the kernel layer's overlay records it as a whiteout in the run folder instead)
    Case("hostlink-delete", "delete", "scripts/step_alias.py", "deny", WR, "deny"),
    Case("hostlink-rename-from", "rename_from", "scripts/step_alias.py", "deny", WR, "deny"),
    Case("hostlink-read", "read", "scripts/step_alias.py", "allow"),
    Case("hostlink-into-lake", "write", "scripts/to_lake/new.csv", "deny", LR),
    Case("hostlink-into-lake-file", "append", "scripts/to_lake/BINANCE_BTCUSDT_1d.csv", "deny", LR),
    Case("hostlink-lake-file", "append", "data/lakehouse/lake_alias.csv", "deny", LR),
    Case("hostlink-lake-file-chmod", "chmod", "{host}/data/lakehouse/lake_alias.csv", "deny", LR),
    Case("hostlink-lake-delete", "delete", "data/lakehouse/lake_alias.csv", "deny", LR),
    Case(
        "hostlink-out-of-lake",
        "write",
        "data/lakehouse/to_scripts/new.py",
        "redirect",
        WR,
        lands="scripts/new.py",
    ),
    Case("hostlink-outside-dir", "write", "scripts/to_outside/new.txt", "deny", "outside-writable-roots"),
    Case("hostlink-outside-file", "append", "scripts/outside_file", "deny", "outside-writable-roots"),
    Case("hostlink-outside-chmod", "chmod", "scripts/outside_file", "deny", "outside-writable-roots"),
    # -- allowed as aimed --------------------------------------------------------------------------
    Case("run-create", "write", "{run}/data/out.csv", "allow", "run-folder"),
    Case("run-delete", "delete", "{run}/data/existing.txt", "allow", "run-folder"),
    Case("run-chmod", "chmod", "{run}/data/existing.txt", "allow", "run-folder"),
    Case("run-unlink-lake-link", "delete", "{run}/data/to_lake_file", "allow", "run-folder"),
    Case("run-rename-lake-link", "rename_from", "{run}/data/to_lake_file", "allow", "run-folder"),
    Case("tmp-create", "write", "{tmp}/scratch.txt", "allow", "temp-dir"),
    Case("read-lake", "read", LAKE_FILE, "allow"),
    Case("read-code", "read", "scripts/legacy_step.py", "allow"),
    Case("read-scan", "read", SCAN_FILE, "allow"),
)

assert len({c.id for c in CASES}) == len(CASES)
assert all(c.verb in VERBS for c in CASES)


# -- the props of two-path verbs, made before a case runs ----------------------------------------


@dataclass(frozen=True)
class Props:
    """The other end of a two-path verb, both in the run folder (allowed)."""

    src: str  # a fresh file of the run: what rename_to moves and links point at
    dst: str  # where rename_from and hardlink_from put the new name


def prepare(env: RunEnv, case: Case) -> Props:
    """Make the props of ``case`` and the host's :data:`HOST_LINKS` (unguarded, before any snapshot
    is taken)."""
    for rel, text in HOST_LINKS:
        link = os.path.join(env.host, rel)
        if not os.path.lexists(link):
            os.symlink(env.path(text), link)
    with open(os.path.join(env.ws.run_storage, "data", f"src-{case.id}.txt"), "wb") as fh:
        fh.write(b"source of " + case.id.encode() + b"\n")
    data = os.path.join(env.ws.run_dir, "data")
    return Props(os.path.join(data, f"src-{case.id}.txt"), os.path.join(data, f"dst-{case.id}"))
