"""The error the sandbox raises for a file operation its policy refuses: :class:`AccessDenied`.

Apart from :mod:`sandbox.errors` (which re-exports it) because every sandboxed interpreter loads
it, for the guard, and nothing else of that module: the launcher's nine errors are class
definitions each Python step would pay for at start-up (~0.2 ms). Stdlib only.
"""

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["AccessDenied"]


class AccessDenied(PermissionError):
    """A file operation refused by the sandbox policy.

    A :class:`PermissionError` with ``errno.EACCES``, ``strerror`` "Permission denied" and
    ``filename`` -- what the operating system would raise, so callers' ``except OSError`` keeps
    working -- shown the way the OS error is, then explained::

        PermissionError: [Errno 13] Permission denied: 'data/lakehouse/x' -- tv-sandbox: rule
        'lakehouse-read-only' (write, profile production): the shared lakehouse is read-only in
        production; write intermediates under $TV_RUN_DIR/data/ ...

    ``op``, ``rule``, ``reason``, ``hint``, ``profile`` and ``layer`` say who decided and why;
    ``resolved`` is where the path led, as the user knows it (workspace-relative), shown only
    when it differs from ``filename``. Tracebacks name it ``PermissionError`` (it is one); the
    guard re-raises it from its outermost frame, so a traceback shows at most one of the guard's.
    """

    def __init__(
        self,
        filename: "Any",
        *,
        op: str,
        rule: str,
        reason: str,
        hint: str = "",
        profile: str = "",
        layer: str = "python",
        resolved: str | None = None,
        filename2: "Any" = None,
    ) -> None:
        strerror = os.strerror(errno.EACCES)
        # as the OS error names it: open(Path(...)) reports the path as a str
        if isinstance(filename, os.PathLike):
            filename = os.fspath(filename)
        if isinstance(filename2, os.PathLike):
            filename2 = os.fspath(filename2)
        if filename2 is None:
            super().__init__(errno.EACCES, strerror, filename)
        else:
            super().__init__(errno.EACCES, strerror, filename, None, filename2)
        self.op, self.rule, self.reason, self.hint = op, rule, reason, hint
        self.profile, self.layer, self.resolved = profile, layer, resolved

    @property
    def explanation(self) -> str:
        """The sandbox's part of the message: rule, operation, profile, why, what to do."""
        who = f"{self.op}, profile {self.profile}" if self.profile else self.op
        text = f"tv-sandbox: rule '{self.rule}' ({who}): {self.reason}"
        if self.resolved is not None and str(self.resolved) != str(self.filename):
            text += f" [resolved: {self.resolved}]"
        if self.hint:
            text += f"; {self.hint}"
        return text

    def __str__(self) -> str:
        head = super().__str__()  # "[Errno 13] Permission denied: 'x'" (-> 'y'), as the OS says it
        return f"{head} -- {self.explanation}"

    def __reduce__(self) -> "Any":  # picklable across multiprocessing / Ray
        return (
            _rebuild_access_denied,
            (
                self.filename,
                self.op,
                self.rule,
                self.reason,
                self.hint,
                self.profile,
                self.layer,
                self.resolved,
                self.filename2,
            ),
        )


def _rebuild_access_denied(
    filename: "Any",
    op: str,
    rule: str,
    reason: str,
    hint: str,
    profile: str,
    layer: str,
    resolved: str | None,
    filename2: "Any",
) -> AccessDenied:
    return AccessDenied(
        filename,
        op=op,
        rule=rule,
        reason=reason,
        hint=hint,
        profile=profile,
        layer=layer,
        resolved=resolved,
        filename2=filename2,
    )


# Tracebacks print ``module.qualname`` of an exception's class (``builtins`` omitted): a denial
# reads as the ``PermissionError`` it is, the error users' code already handles.
AccessDenied.__module__ = "builtins"
AccessDenied.__qualname__ = "PermissionError"
