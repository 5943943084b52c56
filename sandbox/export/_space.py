"""Will a run folder fit at its destination? Checked before an export starts, so a full disk is
one line up front instead of an ENOSPC minutes into the copy."""

from __future__ import annotations

import os

from sandbox.errors import ExportError


def _tree_bytes(top: str) -> int:
    """What copying ``top`` would allocate: the blocks of its regular files (sparse stays sparse)."""
    total = 0
    for dirpath, _dirs, files in os.walk(top):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            total += st.st_blocks * 512
    return total


def check_space(run_id: str, src: str, dest: str) -> None:
    """Refuse, with one line, an export that cannot fit at its destination (ENOSPC half-way would
    leave the previous export intact, but after minutes of copying). A linked export
    (:func:`~sandbox.export.export_run` ``by_link``) runs it only before it first copies data --
    when the filesystem refused a link: another mount, even of the same filesystem -- since
    links need no room (``before_copy``)."""
    parent = os.path.dirname(dest)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    try:
        st = os.statvfs(parent)
    except OSError:
        return  # the export itself reports what is wrong with the destination
    need, free = _tree_bytes(src), st.f_bavail * st.f_frsize
    if need > free:
        raise ExportError(
            f"run {run_id} was not exported: its run folder needs {need / 2**20:.1f} MiB but "
            f"{parent} has {free / 2**20:.1f} MiB free; free space there and run it again"
        )
