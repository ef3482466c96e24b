"""What a benchmark read from its official release files is: one registry entry per benchmark.

An entry names the suite keys its files are given under (paths relative to the suite file, as released: no
conversion), reads them into items, and computes the metrics the benchmark's own evaluation code reports. Item ids
are the benchmark's own question ids, so answers line up with other tools' outputs for the same questions.

An item is a dict: ``id`` (str), ``question``, ``answer`` (a string, or the list of annotators' answers), and its
image as ``image`` (a path relative to the task's image root) or ``image_data`` (base64, as MMBench ships it);
multiple-choice items have ``choices``; a benchmark adds what its metrics need (``category``, ``answer_type``...).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbone_swap.errors import BackboneSwapError


class BadItem(Exception):
    """One item of a benchmark file that cannot be used: skipped and counted with --on-bad-sample skip."""

    def __init__(self, path: Path, item: Any, problem: str) -> None:
        super().__init__(problem)
        self.path, self.item, self.problem = path, item, problem

    def describe(self) -> str:
        return f"{self.path}, {self.item}: {self.problem}"


@dataclass
class Loaded:
    """A benchmark's items as read, and what the reader wants the user to know (``suite show`` prints it)."""

    items: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    bad: list[BadItem] = field(default_factory=list)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark's release files and evaluation."""

    name: str
    type: str  # the task type its items are answered and scored as
    needs: str  # what it mostly needs, as the literature groups it (a suite's task may say otherwise)
    files: tuple[str, ...]  # suite keys naming its files or folders, all required
    options: dict[str, Any] = field(default_factory=dict)  # optional suite keys and their defaults
    layout: str = ""  # the released layout in a few words, for errors and the README
    reader: Callable[[Any], Loaded] | None = None  # the task (its keys resolved) -> its items
    metrics: Callable[[Sequence[dict[str, Any]], Sequence[dict[str, Any]]], dict[str, float | None]] | None = None
    read_yes_no: Callable[[str], str] | None = None  # yes_no tasks: its own code's rule (default POPE's, yes_no.py)

    def read(self, task: Any) -> Loaded:
        assert self.reader is not None
        return self.reader(task)

    def official(self, items: Sequence[dict[str, Any]], lines: Sequence[dict[str, Any]]) -> dict[str, float | None]:
        """The benchmark's own metrics over one model's answer lines (aligned with ``items``)."""
        return self.metrics(items, lines) if self.metrics is not None else {}


def read_json(path: Path, benchmark: str, layout: str) -> Any:
    """A benchmark's JSON file, or one line saying which file is not what the benchmark releases."""
    if not path.is_file():
        raise BackboneSwapError(f"{path} does not exist ({benchmark}: {layout})",
                                "Point the suite's key at the file as released")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BackboneSwapError(f"{path} is not the JSON file {benchmark} releases ({e.__class__.__name__})",
                                f"Point the suite's key at {layout}") from None


def read_json_lines(path: Path, benchmark: str, layout: str) -> list[tuple[int, Any]]:
    """(line number, record) of a JSON-lines file (POPE's files are JSON lines despite their name)."""
    if not path.is_file():
        raise BackboneSwapError(f"{path} does not exist ({benchmark}: {layout})",
                                "Point the suite's key at the file as released")
    records = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if text.strip():
            try:
                records.append((number, json.loads(text)))
            except json.JSONDecodeError as e:
                raise BackboneSwapError(f"{path} line {number} is not JSON ({e.msg}); {benchmark} releases {layout}",
                                        "Point the suite's key at the file as released") from None
    return records


def layout_error(path: Path, benchmark: str, layout: str, found: str) -> BackboneSwapError:
    """A file in another layout than the benchmark's (another benchmark's file given by mistake, say)."""
    return BackboneSwapError(f"{path} is not in {benchmark}'s layout ({found}); {benchmark} releases {layout}",
                             "Point the suite's key at the file as released, or check the task's benchmark")
