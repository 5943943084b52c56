"""Live progress of a pipeline: a ``rich`` table on a terminal, plain lines otherwise, or nothing.

The driver calls :meth:`Progress.update` with each sleeve's state (polled from its actor) and
:meth:`Progress.done` when a sleeve ends; a display only prints what changed, so a plain log reads
as a sequence of events: ``[  3.1s] ma_long: step 2/4 prepare``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from sandbox.orchestrator.sleeve import SleeveResult

_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "interrupted": "yellow"}


class Progress:
    """Plain lines (or nothing when ``quiet``); :class:`RichProgress` draws a live table instead."""

    def __init__(self, sleeves: Sequence[str], *, stream: IO[str] | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.state: dict[str, dict[str, Any]] = {s: {"status": "waiting"} for s in sleeves}

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _line(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=self.stream, flush=True)

    def started(self, sleeve: str) -> None:
        self.state[sleeve] = {"status": "running", "since": time.monotonic()}
        self._line(f"{sleeve}: started")

    def update(self, sleeve: str, info: dict[str, Any]) -> None:
        st = self.state[sleeve]
        if info.get("step") and info.get("index") != st.get("index"):
            self._line(f"{sleeve}: step {info['index']}/{info['of']} {info['step']}")
        st.update({k: info[k] for k in ("step", "index", "of") if info.get(k)})

    def done(self, result: SleeveResult) -> None:
        self.state[result.id] = {"status": result.status, "result": result}
        where = f" -> {result.export}" if result.export else ""
        why = f" at step {result.failed_step}" if result.failed_step else ""
        err = f": {result.error}" if result.error else ""
        exit_ = f"exit {result.exit_code}, " if result.exit_code is not None else ""
        self._line(
            f"{result.id}: {result.status}{why} ({exit_}{result.duration_s:.1f}s, "
            f"{result.denied} denied, {result.redirected} redirected){where}{err}"
        )

    def note(self, text: str) -> None:
        self._line(text)


class RichProgress(Progress):
    """A live ``rich`` table: one row per sleeve (status, current step, elapsed)."""

    def __init__(self, sleeves: Sequence[str], *, stream: IO[str] | None = None) -> None:
        super().__init__(sleeves, stream=stream)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=self.stream)
        # get_renderable: each refresh redraws the table, so the elapsed times keep running
        self.live = Live(
            console=self.console, get_renderable=self._table, refresh_per_second=4, transient=False
        )

    def __enter__(self) -> RichProgress:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.refresh()
        self.live.__exit__(None, None, None)

    def _table(self) -> Any:
        from rich.table import Table

        t = Table(title="pipeline", title_justify="left", expand=False)
        for col in ("sleeve", "status", "step", "elapsed"):
            t.add_column(col)
        now = time.monotonic()
        for name, st in self.state.items():
            status = st["status"]
            res: SleeveResult | None = st.get("result")
            if res is not None:
                step = res.failed_step or (res.steps[-1].name if res.steps else "-")
                elapsed = f"{res.duration_s:.1f}s"
            elif status == "running":
                step = f"{st.get('index', 0)}/{st.get('of', '?')} {st.get('step') or 'starting'}"
                elapsed = f"{now - st['since']:.1f}s"
            else:
                step, elapsed = "-", "-"
            style = _STYLE.get(status, "cyan" if status == "running" else "dim")
            t.add_row(name, f"[{style}]{status}[/]", step, elapsed)
        return t

    def _line(self, text: str) -> None:
        self.live.refresh()

    def note(self, text: str) -> None:
        self.console.print(text)


def make_progress(sleeves: Sequence[str], *, mode: str, stream: IO[str]) -> Progress:
    """``mode``: ``auto`` (rich on a terminal, plain lines otherwise), ``rich``, ``plain``, ``none``."""
    if mode == "none":
        return Progress(sleeves, stream=stream, quiet=True)
    if mode == "rich" or (mode == "auto" and stream.isatty()):
        return RichProgress(sleeves, stream=stream)
    return Progress(sleeves, stream=stream)


def summary_table(results: Sequence[SleeveResult], *, stream: IO[str], rich: bool) -> None:
    """The end-of-run table: sleeve, status, exit, duration, denied, redirected, export."""
    rows = [
        (
            r.id,
            r.status + (" (kept)" if r.resumed else ""),
            "-" if r.exit_code is None else str(r.exit_code),
            f"{r.duration_s:.1f}s",
            str(r.denied),
            str(r.redirected),
            r.export or (r.error or "-"),
        )
        for r in results
    ]
    head = ("sleeve", "status", "exit", "time", "denied", "redirected", "export")
    if rich:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        t = Table()
        for h in head:
            t.add_column(h, overflow="fold")
        for row in rows:
            style = _STYLE.get(row[1].split()[0], "")
            # Text, not markup: an error names files of the steps, '[/]' and all
            t.add_row(*(Text(c, style=style if i == 1 else "") for i, c in enumerate(row)))
        Console(file=stream).print(t)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    for row in (head, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=stream)
