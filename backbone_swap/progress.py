"""Progress bars for long steps, on stderr so that stdout stays parseable (``--json``)."""

from __future__ import annotations

import contextlib
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

console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(description: str, total: float, *, as_bytes: bool = False) -> Iterator[Callable[[float], None]]:
    """Show a bar while the block runs; the block calls the yielded function with each increment."""
    count = DownloadColumn() if as_bytes else MofNCompleteColumn()
    columns = [TextColumn("{task.description}"), BarColumn(), count, TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
