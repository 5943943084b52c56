"""Errors of tv-sandbox and the exit statuses the CLI maps them to.

Stdlib only: the guard imports this module in every sandboxed interpreter.
"""

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Exit statuses of ``tv-sandbox``, Docker's convention for ``docker run``: a command's own status
#: passes through unchanged; the sandbox's own are 125 and above, which ``make`` (2), ``python``
#: (1, 2) and shells (1, 2) never use for an ordinary failure, so CI can tell "tv-sandbox could not
#: run the step" from "the step failed". The message says which stage failed.
EXIT_SANDBOX = 125  # an error of tv-sandbox itself: before the command ran, or the export failed
EXIT_USAGE = EXIT_SANDBOX  # bad command line, RUN_ID, profile, mode, policy or host layout
EXIT_EXPORT = EXIT_SANDBOX  # the command ran but its run folder could not be exported
EXIT_INTERNAL = EXIT_SANDBOX  # a bug in tv-sandbox
EXIT_CANNOT_EXECUTE = 126  # the command exists but cannot be executed (permissions, not a program)
EXIT_NOT_FOUND = 127  # the command was not found (as a shell says)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)
#: Pipelines: every sleeve succeeded / at least one failed (then 125 and 130 as above).
EXIT_OK, EXIT_FAILED = 0, 1


class SandboxError(Exception):
    """Base class of every error tv-sandbox raises on purpose."""

    exit_status = EXIT_USAGE


class UsageError(SandboxError):
    """A bad argument on the command line (exit 125). The message is one line: what and what to do."""


class CommandNotFound(SandboxError):
    """The step's command does not exist (exit 127, as a shell says): nothing ran."""

    exit_status = EXIT_NOT_FOUND


class CommandNotExecutable(SandboxError):
    """The step's command exists but cannot be executed -- no permission, not a program (exit 126)."""

    exit_status = EXIT_CANNOT_EXECUTE


def exec_failure(exc: BaseException) -> BaseException:
    """The error to report for ``exc`` when it is an exec-stage failure of a step's command.

    :func:`sandbox.kernel.spawn` raises a :class:`UsageError` whose ``__cause__`` is the ``OSError``
    of ``execvpe`` (message ``cannot execute 'CMD': ...``); that becomes :class:`CommandNotFound`
    (ENOENT, ENOTDIR) or :class:`CommandNotExecutable` (EACCES, ENOEXEC, anything else), with the
    same message and cause. Any other exception (a missing working folder is the sandbox's own
    failure) is returned unchanged.
    """
    cause = exc.__cause__
    if not isinstance(exc, UsageError) or not isinstance(cause, OSError):
        return exc
    if not str(exc).startswith("cannot execute "):
        return exc
    cls = CommandNotFound if cause.errno in (errno.ENOENT, errno.ENOTDIR) else CommandNotExecutable
    new = cls(str(exc))
    new.__cause__ = cause
    return new


class PolicyError(SandboxError):
    """A policy file that cannot be used as a whole; names the file, the key and the allowed values."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + problem)


class PreflightError(SandboxError):
    """The host or the run cannot start (bad RUN_ID, missing layout folder, existing export...),
    found before the command ran (exit 125). ``errno``: the operating system's reason, when an
    ``OSError`` was the cause (else None)."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class WorkspaceError(PreflightError):
    """The run's workspace could not be made (a folder that is not writable, a full disk...):
    before the command ran (exit 125), with the ``errno`` of the failed call; nothing is left."""


class KernelUnavailable(SandboxError):
    """The kernel layer is required by the policy but this machine (or this call) cannot apply it."""

    exit_status = EXIT_USAGE  # refused before the command ran: the run contract says 125


class ExportError(SandboxError):
    """The run folder could not be exported; the previous export, if any, is intact."""

    exit_status = EXIT_EXPORT


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
