"""Errors of tv-sandbox and the exit statuses the CLI maps them to.

Stdlib only: the guard imports this module in every sandboxed interpreter.
"""

from __future__ import annotations

import errno

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Exit statuses of ``tv-sandbox``. A command's own status passes through unchanged;
#: these are the ones the sandbox itself returns before (or instead of) running it.
EXIT_USAGE = 2  # bad command line, RUN_ID, profile, mode, policy or host layout
EXIT_EXPORT = 3  # the command ran but its run folder could not be exported
EXIT_INTERNAL = 70  # a bug in tv-sandbox (EX_SOFTWARE)


class SandboxError(Exception):
    """Base class of every error tv-sandbox raises on purpose."""

    exit_status = EXIT_USAGE


class UsageError(SandboxError):
    """A bad argument on the command line (exit 2). The message is one line: what and what to do."""


class PolicyError(SandboxError):
    """A policy file that cannot be used as a whole; names the file, the key and the allowed values."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + problem)


class PreflightError(SandboxError):
    """The host or the run cannot start (bad RUN_ID, missing layout folder, existing export...)."""

    def __init__(self, message: str, *, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_status = status


class KernelUnavailable(SandboxError):
    """The kernel layer is required by the policy but this machine (or this call) cannot apply it."""

    exit_status = EXIT_USAGE  # refused before the command ran: the run contract says 2


class ExportError(SandboxError):
    """The run folder could not be exported; the previous export, if any, is intact."""

    exit_status = EXIT_EXPORT


class AccessDenied(PermissionError):
    """A file operation refused by the sandbox policy.

    A :class:`PermissionError` with ``errno.EACCES`` and ``filename`` so that callers'
    ``except OSError`` keeps working; ``op``, ``rule``, ``profile`` and ``layer`` say who decided.
    ``str()`` is one explained line: what was refused, by which rule, why, and what to do instead.
    """

    def __init__(
        self,
        filename: Any,
        *,
        op: str,
        rule: str,
        reason: str,
        hint: str = "",
        profile: str = "",
        layer: str = "python",
        resolved: str | None = None,
        filename2: Any = None,
    ) -> None:
        detail = f"tv-sandbox denied {op} (rule '{rule}'"
        if profile:
            detail += f", profile {profile}"
        detail += f"): {reason}"
        if resolved is not None and str(resolved) != str(filename):
            detail += f" [resolved: {resolved}]"
        if hint:
            detail += f" -- {hint}"
        if filename2 is None:
            super().__init__(errno.EACCES, detail, filename)
        else:
            super().__init__(errno.EACCES, detail, filename, None, filename2)
        self.op, self.rule, self.reason, self.hint = op, rule, reason, hint
        self.profile, self.layer, self.resolved = profile, layer, resolved

    def __reduce__(self) -> Any:  # picklable across multiprocessing / Ray
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
    filename: Any,
    op: str,
    rule: str,
    reason: str,
    hint: str,
    profile: str,
    layer: str,
    resolved: str | None,
    filename2: Any,
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
