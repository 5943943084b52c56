"""This namespace's mount table, to place a resolved path on its filesystem (:class:`MountTable`):
the launcher's check that a workspace or temp dir is not the host, nor inside it, however bound
(``runner.check_workspace_base``). Stdlib only; the launcher's alone (no step's interpreter
loads it)."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def is_below(path: str, root: str) -> bool:
    """``path`` is ``root`` or inside it, by components (``/a/bc`` is not below ``/a/b``)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


class MountTable:
    """This namespace's mount table (``/proc/self/mountinfo``), to place a resolved path on its
    filesystem: (device, path from the filesystem's root). Two paths are the same folder, however
    bound, when both are equal; one is inside the other when it is the other's or below it. The
    device is the table's (the filesystem's: st_dev differs per btrfs subvolume) and the root
    the table's too (a btrfs subvolume's path from the top one), on both sides alike.

    Not covered: a filesystem mounted below the host (other than the mounts' real roots) and also
    elsewhere -- its device is not the host's, so the table is not read; a btrfs subvolume below
    the host bound elsewhere, for the same reason (its st_dev is its own); an overlay's upper or
    lower folders, which are other folders of other filesystems than the merged view.
    """

    def __init__(self, rows: Sequence[tuple[int, int, str, str, str]]) -> None:
        # (mount id, parent id, major:minor, root within the filesystem, mount point)
        self.on = {(parent, point): (mid, dev, root, point) for mid, parent, dev, root, point in rows}
        ids = {row[0] for row in rows}
        roots = [(r[0], r[2], r[3], r[4]) for r in rows if r[4] == "/" and (r[1] not in ids or r[1] == r[0])]
        self.top = roots[0] if roots else None

    @classmethod
    def read(cls) -> MountTable | None:
        """The table, or None without a readable one (no /proc): the path and identity checks stand."""
        try:
            with open("/proc/self/mountinfo", "rb") as fh:
                rows = [line.split(b" ", 5) for line in fh]
            table = cls(
                [(int(r[0]), int(r[1]), r[2].decode(), _unescape(r[3]), _unescape(r[4])) for r in rows]
            )
        except (OSError, ValueError, IndexError):
            return None
        return table if table.top else None

    def place(self, real: str) -> tuple[str, str] | None:
        """Where ``real`` (a realpath) lies: the mounts are walked the way the kernel walks them,
        from the root mount down through each mount on the way, a later mount on the same point
        covering the earlier (not by the longest mount point, which a covered mount may have)."""
        mount, prefix = self.top, "/"
        rest = [part for part in real.split("/") if part]
        for i in range(len(rest) + 1):
            if i:
                prefix = prefix.rstrip("/") + "/" + rest[i - 1]
            while mount is not None and (mount[0], prefix) in self.on:
                mount = self.on[(mount[0], prefix)]
        if mount is None:
            return None
        _, dev, root, point = mount
        tail = real[len(point.rstrip("/")) :]  # "" or "/x/y": the walk matched point by components
        return dev, (root.rstrip("/") + tail).rstrip("/") or "/"

    def holder(self, real: str, protected: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
        """The protected root whose folder ``real`` is, or lies below, on the filesystem."""
        here = self.place(real)
        if here is None:
            return None
        for label, root in protected:
            there = self.place(root)
            if there is not None and there[0] == here[0] and is_below(here[1], there[1]):
                return label, root
        return None


def _unescape(field: bytes) -> str:
    r"""mountinfo writes space, tab, newline and backslash as ``\ooo`` (octal): ``\040``..."""
    head, *parts = field.split(b"\\")
    return os.fsdecode(head + b"".join(bytes((int(p[:3], 8),)) + p[3:] for p in parts))
