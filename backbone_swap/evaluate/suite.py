"""Evaluation suites: which tasks, of which type, on which data, needing what (perception, reasoning, format).

A suite is YAML (``recipes/suites/*.yaml`` or a file of the user's), validated by the models below through the
project's one schema mechanism (``backbone_swap.schemas``): a mistake names its dotted key. Data paths are relative
to the suite file, so a suite and its data travel together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, model_validator

from backbone_swap import schemas
from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.scoring import STRUCTURED_FORMATS
from backbone_swap.evaluate.tasks import TASK_TYPES, TYPES
from backbone_swap.verdict.decision import EXPECTATIONS

NEEDS = ("perception", "reasoning", "format")
_VOICE = schemas.Voice(document="suite")
_NON_NEGATIVE = "a non-negative number"


class TaskSpec(schemas.Closed):
    """One task as a suite file writes it; ``Task`` is the same with its paths resolved."""

    name: Annotated[schemas.Text, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
                    schemas.expect("a name of letters, digits, '_', '-' and '.' (it names files)")]
    type: schemas.one_of(TASK_TYPES)
    needs: schemas.one_of(NEEDS)
    data: Annotated[schemas.Text, Field(min_length=1), schemas.expect("the path of a JSONL or JSON file")]
    image_root: Annotated[schemas.Text, schemas.expect("a folder path")] | None = None
    format: schemas.one_of(STRUCTURED_FORMATS) | None = None  # structured tasks: json | point | box
    # structured tasks: largest error still counted correct
    tolerance: Annotated[schemas.Number, Field(ge=0), schemas.NUMERIC_TEXT, schemas.expect(_NON_NEGATIVE)] = 0.0
    max_new_tokens: Annotated[schemas.Integer, Field(ge=1), schemas.expect("a positive integer")] = 16
    # appended to every question, e.g. "Answer with one word."
    instruction: Annotated[schemas.Text, schemas.expect("text")] = ""
    # description tasks: ROUGE-L at or above which an answer counts as correct
    pass_score: Annotated[schemas.Number, Field(ge=0), schemas.NUMERIC_TEXT, schemas.expect(_NON_NEGATIVE)] = 0.5
    expect: schemas.one_of(EXPECTATIONS) | None = None  # the finding the suite's author expects; the report checks it

    @model_validator(mode="after")
    def _fits_its_type(self) -> TaskSpec:
        problem = TYPES[self.type].check_task(self.model_dump())
        if problem is not None:
            raise schemas.broken(problem)
        return self


class Task(TaskSpec):
    """A task of a loaded suite: its data file and image folder as absolute paths."""

    data: Path
    image_root: Path


class SuiteSpec(schemas.Closed):
    name: Annotated[schemas.Text, schemas.expect("text")] | None = None
    probes: Annotated[schemas.Integer, Field(ge=0), schemas.expect("a non-negative integer")] = 32
    tasks: Annotated[tuple[TaskSpec, ...], Field(min_length=1), schemas.expect("a non-empty list of tasks")]

    @model_validator(mode="after")
    def _unique_names(self) -> SuiteSpec:
        names = [task.name for task in self.tasks]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise schemas.broken(("tasks", f"have duplicate names ({', '.join(twice)})"),
                                 hint="Give every task its own name: it names the task's answer files")
        return self


@dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple[Task, ...]
    probes: int = 32  # items per task whose hidden states feed the stability analysis
    source: str = ""

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name:
                return task
        raise BackboneSwapError(f"suite {self.name} has no task {name!r}", f"Its tasks: {self.names()}")

    def names(self) -> str:
        return ", ".join(t.name for t in self.tasks)


def shipped_suites() -> dict[str, Path]:
    folder = resources.files("backbone_swap.recipes") / "suites"
    try:
        return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def load_suite(ref: str | Path) -> Suite:
    """A suite from a YAML file, or a shipped one by name."""
    path = Path(ref).expanduser()
    if not path.is_file():
        shipped = shipped_suites()
        name = Path(str(ref)).stem
        if name not in shipped:
            raise BackboneSwapError(
                f"suite {ref} not found", f"Pass a suite YAML file or one of: {', '.join(sorted(shipped)) or 'none'}"
            )
        path = shipped[name]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BackboneSwapError(f"suite {path} cannot be read ({e.__class__.__name__})",
                                "Check that it is a readable UTF-8 text file") from None
    return suite_from_dict(schemas.parse_yaml(text, f"suite {path.name}"), path)


def suite_from_dict(data: Any, path: Path) -> Suite:
    """Validate a parsed suite file; its data paths are read relative to ``path``'s folder."""
    spec = schemas.validate(SuiteSpec, data, f"suite {path.name}", _VOICE)
    base = path.parent
    tasks = []
    for task in spec.tasks:
        data_path = (base / task.data).resolve()
        root = (base / task.image_root).resolve() if task.image_root is not None else data_path.parent
        tasks.append(Task(**{**task.model_dump(), "data": data_path, "image_root": root}))
    return Suite(spec.name or path.stem, tuple(tasks), spec.probes, str(path))


def read_items(task: Task) -> list[dict[str, Any]]:
    """The task's records (JSON list or JSONL: id, image, question, answer, optional choices), checked."""
    if not task.data.is_file():
        raise BackboneSwapError(
            f"data file {task.data} of task {task.name} does not exist", "Fix the suite's data path"
        )
    text = task.data.read_text(encoding="utf-8")
    try:
        items = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as e:
        raise BackboneSwapError(
            f"{task.data} is not valid JSON/JSONL ({e.msg}, line {e.lineno})", "Fix the file"
        ) from None
    if not isinstance(items, list) or not items:
        raise BackboneSwapError(
            f"{task.data} of task {task.name} holds no records",
            "Give the task at least one record (id, image, question, answer), or remove it from the suite",
        )
    seen = set()
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not {"id", "question", "answer"} <= set(item):
            raise BackboneSwapError(f"{task.data} record {number} needs id, question and answer", "Fix the record")
        if str(item["id"]) in seen:
            raise BackboneSwapError(f"{task.data} record {number} repeats id {item['id']!r}", "Make ids unique")
        seen.add(str(item["id"]))
        problem = TYPES[task.type].check_item(item)
        if problem is not None:
            raise BackboneSwapError(f"{task.data} record {number} {problem}", "Fix the record")
    return items
