"""Errors of tv-sandbox and the exit statuses the CLI maps them to. Stdlib only.

:class:`AccessDenied`, the one error a sandboxed interpreter raises, lives in
:mod:`sandbox._denied` (the guard loads that module alone) and is re-exported here.
"""

import errno

from sandbox._denied import AccessDenied as AccessDenied
from sandbox._denied import _rebuild_access_denied as _rebuild_access_denied  # what old pickles name

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


def printable(text: str) -> str:
    """``text`` safe to print on one line: every character that is not printable -- a control
    character (an escape sequence, a newline), a lone surrogate of an undecodable file name -- as
    its Python escape (``\\x1b``, ``\\n``, ``\\udcff``). Messages name files a step chose: on a
    terminal their escapes could rewrite the lines above, and a surrogate cannot be encoded by a
    strict UTF-8 stdout at all."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


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
