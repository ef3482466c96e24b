"""Progress of long steps, on stderr so that stdout stays parseable (``--json``).

On a terminal it is a live bar. When stderr is a file or a pipe (a cluster job's log), a bar would either print
nothing until it ends or flood the log, so plain lines are written instead: one when the work starts, one every
few minutes (``BACKBONE_SWAP_PROGRESS_EVERY`` seconds, default 120) and one when it ends, each with the count,
the rate, the time left and whatever the step adds (loss, learning rate).

Inside ``labelled("new")`` every description starts with that label, so the steps of an ``upgrade`` say which
side they work on.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from backbone_swap.units import fmt_bytes, fmt_duration

console = Console(stderr=True, soft_wrap=True)  # a log line is never cut at 80 columns (paths stay whole)

_label: contextvars.ContextVar[str] = contextvars.ContextVar("progress_label", default="")
_open: list[Ticker] = []


@contextlib.contextmanager
def labelled(label: str) -> Iterator[None]:
    """Prefix the progress shown inside the block with ``label`` (e.g. ``old``, ``new``)."""
    token = _label.set(label)
    try:
        yield
    finally:
        _label.reset(token)


def titled(description: str) -> str:
    label = _label.get()
    return f"[{label}] {description}" if label else description


def say(text: str) -> None:
    """A line of its own among the progress, labelled like it."""
    console.print(titled(text), highlight=False, markup=False)


def plain_every() -> float:
    try:
        return max(float(os.environ.get("BACKBONE_SWAP_PROGRESS_EVERY", "120")), 0.0)
    except ValueError:
        return 120.0


def fmt_rate(per_second: float, unit: str) -> str:
    """``3.2 samples/s``, ``0.0312 samples/s``: three significant digits, so a slow rate never reads as 0.0."""
    if per_second <= 0:
        return f"- {unit}/s"
    return f"{per_second:,.0f} {unit}/s" if per_second >= 1000 else f"{per_second:.3g} {unit}/s"


class Ticker:
    """One piece of long work: ``update`` it as it goes, ``close`` it (or use it as a context manager).

    ``unit`` names what is counted (``steps``, ``items``); what else a step reports (training's loss, learning rate
    and samples/s) goes in ``info``. ``terminal``, ``clock`` and ``out`` are there for tests.
    """

    def __init__(self, description: str, total: float, *, unit: str = "items", as_bytes: bool = False,
                 show: bool = True, every: float | None = None, terminal: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, out: Console | None = None) -> None:
        self.description, self.total, self.unit, self.as_bytes = titled(description), total, unit, as_bytes
        self.show, self.clock, self.out = show, clock, out or console
        self.every = plain_every() if every is None else every
        self.completed, self.info = 0.0, ""
        self.started = self.last = clock()
        self.start_count = 0.0
        self.bar: Progress | None = None
        self.closed = False
        if not show:
            return
        live = self.out.is_terminal if terminal is None else terminal
        if live:
            count = DownloadColumn() if as_bytes else MofNCompleteColumn()
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), count, TextColumn("{task.fields[info]}"),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=self.out, transient=False)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=total, info="")
        _open.append(self)

    def __enter__(self) -> Ticker:
        return self

    def __exit__(self, *exc) -> None:
        self.close(interrupted=exc[0] is not None)

    def resume_at(self, completed: float) -> None:
        """Work done before this start (a resumed run): shown as done, left out of the rate."""
        self.completed = self.start_count = completed
        if self.bar is not None:
            self.bar.update(self.task, completed=completed)
        elif self.show:
            self._line("starting")

    def update(self, completed: float | None = None, *, advance: float = 0.0, info: str | None = None) -> None:
        self.completed = (self.completed if completed is None else completed) + advance
        if info is not None:
            self.info = info
        if not self.show:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=self.completed, info=self.info)
            return
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._line()

    def close(self, *, interrupted: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if self in _open:
            _open.remove(self)
        if self.bar is not None:
            self.bar.stop()
        elif self.show and not interrupted:
            self._line("done")

    def _line(self, state: str = "") -> None:
        elapsed = self.clock() - self.started
        done = self.completed - self.start_count
        if self.as_bytes:
            count = f"{fmt_bytes(self.completed)} of {fmt_bytes(self.total)}"
            rate = f"{fmt_bytes(done / elapsed)}/s" if elapsed > 0 and done > 0 else ""
        else:
            count = f"{self.completed:,.0f}/{self.total:,.0f} {self.unit}"
            rate = fmt_rate(done / elapsed, self.unit) if elapsed > 0 and done > 0 else ""
        parts = [f"{self.description}: {count}"]
        if self.total:
            parts[0] += f" ({100 * self.completed / self.total:.0f}%)"
        parts += [p for p in (self.info, rate) if p]
        if state == "done":
            parts.append(f"took {fmt_duration(elapsed)}")
        elif done > 0 and self.total > self.completed:
            parts.append(f"about {fmt_duration((self.total - self.completed) * elapsed / done)} left")
        self.out.print(", ".join(parts), highlight=False, markup=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(description: str, total: float, *, as_bytes: bool = False,
                 unit: str = "items") -> Iterator[Callable[[float], None]]:
    """Show progress while the block runs; the block calls the yielded function with each increment."""
    with Ticker(description, total, as_bytes=as_bytes, unit=unit) as ticker:
        ticker.resume_at(0)
        yield lambda n: ticker.update(advance=n)


def stop_all() -> None:
    """Stop every live bar (an interrupted run): the terminal gets its cursor back."""
    for ticker in list(_open):
        ticker.close(interrupted=True)
    console.show_cursor(True)
