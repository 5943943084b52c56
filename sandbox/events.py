"""The run's record: every deny and redirect as one JSON line, from every layer and every process.

``$TV_RUN_DIR/logs/sandbox_events.jsonl`` is appended to by the Python guard of every sandboxed
interpreter of a run (and by whoever else holds an :class:`EventLog`). A line is one object::

    {"time": 1767225600.123, "pid": 4242, "layer": "python", "op": "write", "action": "deny",
     "rule": "lakehouse-read-only", "path": "data/lakehouse/x.csv", "resolved": "/host/data/...",
     "target": null, "captured": false, "profile": "production", "reason": "...", "hint": "..."}

``time`` is in seconds, to the millisecond; ``path`` is the path as the program gave it,
``resolved`` what the policy decided on, ``target`` where a redirect acted.

Atomic across processes: the file is opened ``O_APPEND`` and lines reach it only in whole ``write()``
calls, each holding complete lines, so writers never interleave inside a line. The functions are the
``posix`` module's, bound at import: the guard patches ``os.*``, and its own record must not pass
through it.

Cheap enough for a hot loop: a redirected write costs one formatted line, and lines are written in
batches -- at once for a denial (the program is likely to die of it); otherwise at the next event
once 256 lines are waiting or the oldest has waited 0.25 s (there is no timer: the last lines of a
quiet process wait for its end), before a ``fork``, at ``close()`` and at exit (``atexit``), and
when the guard sees ``os._exit`` (multiprocessing's children end that way): :func:`flush_all`
flushes every open log of the process then, the guard's and the fsspec filesystem's alike. A
``SIGKILL`` can lose the last redirects of a process, never a denial.

The writers are the step's own processes, so the log explains, it does not prove
(docs/security.md): the launcher reads it as a hostile step may have left it --
:func:`load_events` leaves out and counts a line that is no record, never fails on one.

Stdlib only: every sandboxed interpreter imports this module at start-up.
"""

from __future__ import annotations

import atexit
import os
import posix
from time import time

from sandbox.rules import EVENT_FIELDS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from typing import Any
_p_open, _p_write, _p_close, _getpid = posix.open, posix.write, posix.close, posix.getpid

FIELDS = ("time", "pid", *EVENT_FIELDS)  # a line's keys, in order
TRIM = 200  # denials / redirects kept in a summary
EVENTS_NAME = "sandbox_events.jsonl"  # the run's event log, in $TV_RUN_DIR/logs/

_OPEN: list[EventLog] = []


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def py_encode(s: str) -> str:
    """``s`` as a JSON string literal, ASCII only: what ``json`` writes, byte for byte (its C
    encoder is used when it can be loaded; this is for when it cannot)."""
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            n = ord(ch)
            if n > 0xFFFF:  # a surrogate pair, as json writes it
                n -= 0x10000
                out.append(f"\\u{0xD800 | (n >> 10):04x}\\u{0xDC00 | (n & 0x3FF):04x}")
            else:
                out.append(f"\\u{n:04x}")
    return '"' + "".join(out) + '"'


def _first_encode(s: str) -> str:
    """:data:`_enc` until the first event: loads json's C string encoder (a shared library,
    ~0.3 ms of every sandboxed interpreter's start-up were it loaded there; most steps record
    no event), then stands aside for it. An interpreter that cannot import any more (a denial
    during its finalization) keeps :func:`py_encode`: an event is never lost to an encoder."""
    global _enc
    try:
        from _json import encode_basestring_ascii as enc
    except Exception:  # no accelerator, or an import system already torn down
        enc = py_encode
    _enc = enc
    return enc(s)


_enc: Callable[[str], str] = _first_encode  # json's C string encoder once an event needed it


def _s(v: str | None) -> str:
    return "null" if v is None else _enc(v)


class EventLog:
    """Appends events to a JSON-lines file (see the module docstring). Opened at construction."""

    def __init__(self, path: str | os.PathLike[str], *, batch: int = 256, max_delay: float = 0.25) -> None:
        self.path = os.fspath(path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd: int | None = _p_open(self.path, flags, 0o644)
        self._buf: list[str] = []
        self._first = 0.0
        # the current millisecond, and the start of a line with it and the pid, formatted once
        self._stamp_ms, self._head = -1, ""
        self._batch, self._delay = batch, max_delay
        self._fixed: dict[tuple[str, str, str, str, bool, str, str, str], tuple[str, str]] = {}
        self._pid = _getpid()
        #: How a ``resolved`` or ``target`` path is shown (``Policy.host_path_of``: where the user
        #: finds it on the host, not in the temporary workspace); None: as given.
        self.to_host_path: Callable[[str], str] | None = None
        _OPEN.append(self)

    def emit(
        self,
        layer: str,
        op: str,
        action: str,
        rule: str,
        path: str,
        resolved: str | None,
        target: str | None = None,
        captured: bool = False,
        profile: str = "",
        reason: str = "",
        hint: str = "",
    ) -> None:
        """Record one event (positional for the guard's hot path; see :data:`FIELDS`)."""
        self.emit_body(
            self.body(layer, op, action, rule, path, resolved, target, captured, profile, reason, hint),
            action == "deny",
        )

    def body(
        self,
        layer: str,
        op: str,
        action: str,
        rule: str,
        path: str,
        resolved: str | None,
        target: str | None = None,
        captured: bool = False,
        profile: str = "",
        reason: str = "",
        hint: str = "",
    ) -> str:
        """The line of an event after its ``time`` and ``pid`` (:meth:`emit`'s arguments): a caller
        that records the same event again and again (a loop rewriting the same names) encodes it
        once and hands it to :meth:`emit_body` each time."""
        key = (layer, op, action, rule, captured, profile, reason, hint)
        fixed = self._fixed.get(key)
        if fixed is None:  # the fields a write loop repeats, encoded once (half the cost of a line)
            if len(self._fixed) >= 4096:
                self._fixed.clear()
            fixed = self._fixed[key] = (
                f'"layer": {_enc(layer)}, "op": {_enc(op)}, "action": {_enc(action)}, "rule": {_enc(rule)}, ',
                f'"captured": {"true" if captured else "false"}, "profile": {_enc(profile)}, '
                f'"reason": {_enc(reason)}, "hint": {_enc(hint)}}}\n',
            )
        to_host = self.to_host_path
        if to_host is not None:
            resolved, target = resolved and to_host(resolved), target and to_host(target)
        paths = f'"path": {_enc(path)}, "resolved": {_s(resolved)}, "target": {_s(target)}, '
        return f"{fixed[0]}{paths}{fixed[1]}"

    def emit_body(self, body: str, deny: bool = False) -> None:
        """Record an event given as :meth:`body` made it (``deny``: its action is ``deny``), stamped now."""
        now = time()
        ms = int(now * 1000)
        if ms != self._stamp_ms:  # formatting a float costs more than the rest of a line: once a ms
            self._head, self._stamp_ms = f'{{"time": {ms / 1000:.3f}, "pid": {self._pid}, ', ms
        buf = self._buf
        if not buf:
            self._first = now
        buf.append(self._head + body)
        if deny or len(buf) >= self._batch or now - self._first >= self._delay:
            self.flush()

    def write(self, record: Mapping[str, Any]) -> None:
        """Record an event given as a mapping (another layer's record, e.g. the fsspec filesystem's)."""
        self.emit(
            str(record.get("layer", "")),
            str(record.get("op", "")),
            str(record.get("action", "")),
            str(record.get("rule", "")),
            str(record.get("path", "")),
            record.get("resolved"),
            record.get("target"),
            bool(record.get("captured", False)),
            str(record.get("profile", "")),
            str(record.get("reason", "")),
            str(record.get("hint", "")),
        )

    def flush(self) -> None:
        buf = self._buf
        if not buf or self._fd is None:
            return
        data = "".join(buf).encode()
        buf.clear()
        view = memoryview(data)
        while view:  # a regular file takes it whole; a short write (a full disk) keeps the rest
            n = _p_write(self._fd, view)
            view = view[n:]

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            self.flush()
        finally:
            _p_close(self._fd)
            self._fd = None
            if self in _OPEN:
                _OPEN.remove(self)

    def _after_fork_in_child(self) -> None:
        self._buf.clear()  # flushed by the parent before the fork: the child must not repeat them
        self._pid = _getpid()
        self._stamp_ms = -1  # the start of a line holds the pid

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventLog({self.path!r})"


def flush_all() -> None:
    """Flush every open log of this process (the guard calls it before ``os._exit``)."""
    for log in list(_OPEN):
        try:
            log.flush()
        except OSError:  # a full disk must not turn an exit into a crash
            pass


def _close_all() -> None:
    for log in list(_OPEN):
        try:
            log.close()
        except OSError:
            pass


def _child_after_fork() -> None:
    for log in _OPEN:
        log._after_fork_in_child()


atexit.register(_close_all)
os.register_at_fork(before=flush_all, after_in_child=_child_after_fork)


#: The most of a step-written log the launcher reads, and of one line of it: the step's processes
#: write it, so it can be a sparse file of a terabyte with no newline (one ``readline`` of a 1 GiB
#: one took the launcher 2 GiB of memory and 4 s). A log is ~300 bytes an event: 64 MiB is some
#: 200,000 events; a line beyond 1 MiB is no event of ours. What lies past either is unreadable.
MAX_LOG_BYTES = 64 << 20
MAX_LINE_BYTES = 1 << 20


def step_lines(
    fh: Any, *, max_bytes: int = MAX_LOG_BYTES, max_line: int = MAX_LINE_BYTES
) -> Iterator[bytes | None]:
    """The lines of a binary file a step may have written, each with its newline; None for each
    line longer than ``max_line`` (never held whole), and one None for whatever lies past the
    first ``max_bytes``."""
    pending = b""
    too_long = False
    left = max_bytes
    while True:
        chunk = fh.read(min(1 << 16, left)) if left > 0 else b""
        if not chunk:
            if left <= 0 and fh.read(1):
                if pending or too_long:
                    yield None
                yield None  # the rest of the file, unread
            elif pending:
                yield None if too_long else pending
            elif too_long:
                yield None
            return
        left -= len(chunk)
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                if not too_long:
                    pending += chunk[start:]
                    if len(pending) > max_line:
                        pending, too_long = b"", True
                break
            if too_long:
                yield None
                too_long = False
            else:
                line = pending + chunk[start : end + 1]
                pending = b""
                yield line if len(line) <= max_line else None
            start = end + 1


def count_events(path: str | os.PathLike[str]) -> int:
    """How many lines the log holds (0 when there is none): where the next step's events begin."""
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in step_lines(fh))
    except FileNotFoundError:
        return 0


def read_events(path: str | os.PathLike[str], *, skip: int = 0) -> list[dict[str, Any]]:
    """The events of :func:`load_events`, without its count of unreadable lines (for a step's
    counts and the shim's explanations: the report counts those lines once, for the whole log)."""
    return load_events(path, skip=skip)[0]


def load_events(path: str | os.PathLike[str], *, skip: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The events of a log, in file order, after its first ``skip`` lines (one step's: see
    :func:`count_events`), and how many of those lines are unreadable -- not one JSON object each.

    The log is written by the step's own processes (the guard runs inside them), so a line can be
    anything: torn by a process killed mid-write (whole-line appends make that unlikely), or a
    hostile step's. Such a line is left out and counted, never fatal: the report says how many
    (:func:`sandbox.finish.report_and_export`). A missing log has none."""
    from sandbox import _json as json

    out: list[dict[str, Any]] = []
    unreadable = 0
    if not os.path.exists(path):
        return out, unreadable
    with open(path, "rb") as fh:
        for i, raw in enumerate(step_lines(fh)):
            if i < skip:
                continue
            try:
                ev = json.loads(raw) if raw is not None else None
            except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the limit
                ev = None
            if isinstance(ev, dict):
                out.append(ev)
            else:
                unreadable += 1
    return out, unreadable


def summarise(
    events: Iterable[Mapping[str, Any]], *, trim: int = TRIM, unreadable: int = 0
) -> dict[str, Any]:
    """The run report's view of a log: counts by action, rule, layer and op, how many were audit
    captures, the denials and redirects themselves (the first ``trim`` of each), and how many of
    its lines were ``unreadable`` (:func:`load_events`)."""
    by_action: dict[str, int] = {}
    by_rule: dict[str, int] = {}
    by_layer: dict[str, int] = {}
    by_op: dict[str, int] = {}
    denials: list[dict[str, Any]] = []
    redirects: list[dict[str, Any]] = []
    captured = total = 0
    for ev in events:
        total += 1
        action = str(ev.get("action", ""))
        for counts, key in (
            (by_action, action),
            (by_rule, ev.get("rule")),
            (by_layer, ev.get("layer")),
            (by_op, ev.get("op")),
        ):
            counts[str(key)] = counts.get(str(key), 0) + 1
        captured += bool(ev.get("captured"))
        if action == "deny" and len(denials) < trim:
            denials.append(dict(ev))
        elif action == "redirect" and len(redirects) < trim:
            redirects.append(dict(ev))
    return {
        "count": total,
        "by_action": by_action,
        "by_rule": by_rule,
        "by_layer": by_layer,
        "by_op": by_op,
        "captured": captured,
        "denials": denials,
        "redirects": redirects,
        "truncated": by_action.get("deny", 0) > len(denials) or by_action.get("redirect", 0) > len(redirects),
        "unreadable": unreadable,
    }
