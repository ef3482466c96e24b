"""Evaluation suites: which tasks, of which type, on which data, needing what (perception, reasoning, format).

A suite is YAML (``recipes/suites/*.yaml`` or a file of the user's). Data paths are relative to the suite
file, so a suite and its data travel together.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.tasks import TASK_TYPES, TYPES
from backbone_swap.verdict.decision import EXPECTATIONS

NEEDS = ("perception", "reasoning", "format")
_TASK_KEYS = {
    "name",
    "type",
    "needs",
    "data",
    "image_root",
    "format",
    "tolerance",
    "max_new_tokens",
    "instruction",
    "pass_score",
    "expect",
}


@dataclass(frozen=True)
class Task:
    name: str
    type: str
    needs: str
    data: Path
    image_root: Path
    format: str | None = None  # structured tasks: json | point | box
    tolerance: float = 0.0  # structured tasks: largest error still counted correct
    max_new_tokens: int = 16
    instruction: str = ""  # appended to every question, e.g. "Answer with one word."
    pass_score: float = 0.5  # description tasks: ROUGE-L at or above which an answer counts as correct
    expect: str | None = None  # the finding the suite's author expects (recommend.EXPECTATIONS); the report checks it


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
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise BackboneSwapError(f"suite {path} is not readable YAML ({e.__class__.__name__})", "Fix the file") from None
    return suite_from_dict(data, path)


def _bad(path: Path, key: str, problem: str) -> BackboneSwapError:
    return BackboneSwapError(f"suite {path.name}: {key} {problem}", "Fix the suite file")


def suite_from_dict(data: Any, path: Path) -> Suite:
    if not isinstance(data, dict):
        raise _bad(path, "the file", "must be a mapping")
    unknown = set(data) - {"name", "tasks", "probes"}
    if unknown:
        raise _bad(path, sorted(unknown)[0], "is not a suite key (known: name, tasks, probes)")
    tasks_data = data.get("tasks")
    if not isinstance(tasks_data, list) or not tasks_data:
        raise _bad(path, "tasks", "must be a non-empty list")
    probes = data.get("probes", 32)
    if not isinstance(probes, int) or isinstance(probes, bool) or probes < 0:
        raise _bad(path, "probes", "must be a non-negative integer")
    tasks = []
    for i, item in enumerate(tasks_data):
        where = f"tasks[{i}]"
        if not isinstance(item, dict):
            raise _bad(path, where, "must be a mapping")
        unknown = set(item) - _TASK_KEYS
        if unknown:
            raise _bad(
                path, f"{where}.{sorted(unknown)[0]}", f"is not a task key (known: {', '.join(sorted(_TASK_KEYS))})"
            )
        for key in ("name", "type", "needs", "data"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise _bad(path, f"{where}.{key}", "is required (a string)")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", item["name"]):
            raise _bad(path, f"{where}.name", "may hold only letters, digits, '_', '-' and '.' (it names files)")
        if item["type"] not in TASK_TYPES:
            raise _bad(path, f"{where}.type", f"must be one of {', '.join(TASK_TYPES)}, not {item['type']!r}")
        if item["needs"] not in NEEDS:
            raise _bad(path, f"{where}.needs", f"must be one of {', '.join(NEEDS)}, not {item['needs']!r}")
        problem = TYPES[item["type"]].check_task(item)
        if problem is not None:
            raise _bad(path, f"{where}.{problem[0]}", problem[1])
        for key in ("tolerance", "pass_score"):
            if key in item and (not isinstance(item[key], int | float) or isinstance(item[key], bool) or item[key] < 0):
                raise _bad(path, f"{where}.{key}", "must be a non-negative number")
        if "max_new_tokens" in item and (not isinstance(item["max_new_tokens"], int) or item["max_new_tokens"] < 1):
            raise _bad(path, f"{where}.max_new_tokens", "must be a positive integer")
        if "expect" in item and item["expect"] not in EXPECTATIONS:
            raise _bad(path, f"{where}.expect", f"must be one of {', '.join(EXPECTATIONS)}, not {item['expect']!r}")
        base = path.parent
        data_path = (base / item["data"]).resolve()
        root = (base / item.get("image_root", ".")).resolve() if "image_root" in item else data_path.parent
        tasks.append(
            Task(
                name=item["name"],
                type=item["type"],
                needs=item["needs"],
                data=data_path,
                image_root=root,
                format=item.get("format"),
                tolerance=float(item.get("tolerance", 0.0)),
                max_new_tokens=item.get("max_new_tokens", 16),
                instruction=str(item.get("instruction", "")),
                pass_score=float(item.get("pass_score", 0.5)),
                expect=item.get("expect"),
            )
        )
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise _bad(path, "tasks", "have duplicate names")
    return Suite(str(data.get("name", path.stem)), tuple(tasks), probes, str(path))


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
