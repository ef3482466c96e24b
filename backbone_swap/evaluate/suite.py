"""Evaluation suites: which tasks, of which type, on which data, needing what (perception, reasoning, format).

A suite is YAML (``recipes/suites/*.yaml`` or a file of the user's), validated by the models below through the
project's one schema mechanism (``backbone_swap.schemas``): a mistake names its dotted key. Data paths are relative
to the suite file, so a suite and its data travel together.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator

from backbone_swap import schemas
from backbone_swap.choices import ON_BAD_SAMPLE, check
from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.benchmarks import BENCHMARKS
from backbone_swap.evaluate.benchmarks.base import BadItem, Loaded
from backbone_swap.evaluate.scoring import STRUCTURED_FORMATS
from backbone_swap.evaluate.tasks import TASK_TYPES, TYPES
from backbone_swap.verdict.decision import EXPECTATIONS

NEEDS = ("perception", "reasoning", "format")
_VOICE = schemas.Voice(document="suite")
_NON_NEGATIVE = "a non-negative number"


_PATH = "a path relative to the suite file"
# the keys of a task that name files or folders (relative to the suite file; absolute once the suite is loaded)
PATH_KEYS = ("data", "image_root", "questions", "annotations", "problems", "splits", "root")
# the keys only a benchmark task takes (each benchmark says which of them it reads)
_BENCHMARK_KEYS = ("questions", "annotations", "problems", "splits", "root", "split", "include_text_only", "circular")


class TaskSpec(schemas.Closed):
    """One task as a suite file writes it: a data file of our own (``data``, ``type``, ``needs``), or a benchmark's
    official release files (``benchmark`` and the keys it names). ``Task`` is the same with its paths resolved."""

    name: Annotated[schemas.Text, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
                    schemas.expect("a name of letters, digits, '_', '-' and '.' (it names files)")]
    benchmark: schemas.one_of(tuple(BENCHMARKS)) | None = None
    type: schemas.one_of(TASK_TYPES) | None = None  # a benchmark's by default
    needs: schemas.one_of(NEEDS) | None = None  # a benchmark's by default
    data: Annotated[schemas.Text, Field(min_length=1), schemas.expect(_PATH)] | None = None
    image_root: Annotated[schemas.Text, schemas.expect(_PATH)] | None = None
    questions: Annotated[schemas.Text, schemas.expect(_PATH)] | None = None
    annotations: Annotated[schemas.Text, schemas.expect(_PATH)] | None = None
    problems: Annotated[schemas.Text, schemas.expect(_PATH)] | None = None
    splits: Annotated[schemas.Text, schemas.expect(_PATH)] | None = None
    root: Annotated[schemas.Text, schemas.expect(_PATH)] | None = None
    split: Annotated[schemas.Text, schemas.expect("the name of a split, e.g. test")] | None = None
    include_text_only: Annotated[schemas.Boolean, schemas.expect("true or false")] | None = None
    circular: Annotated[schemas.Boolean, schemas.expect("true or false")] | None = None
    format: schemas.one_of(STRUCTURED_FORMATS) | None = None  # structured tasks: json | point | box
    # structured tasks: largest error still counted correct
    tolerance: Annotated[schemas.Number, Field(ge=0), schemas.NUMERIC_TEXT, schemas.expect(_NON_NEGATIVE)] = 0.0
    max_new_tokens: Annotated[schemas.Integer, Field(ge=1), schemas.expect("a positive integer")] = 16
    # appended to every question, e.g. "Answer with one word."
    instruction: Annotated[schemas.Text, schemas.expect("text")] = ""
    # description tasks: ROUGE-L at or above which an answer counts as correct
    pass_score: Annotated[schemas.Number, Field(ge=0), schemas.NUMERIC_TEXT, schemas.expect(_NON_NEGATIVE)] = 0.5
    expect: schemas.one_of(EXPECTATIONS) | None = None  # the finding the suite's author expects; the report checks it
    # keys a loaded task fills in itself, which its benchmark need not take (every task has an image root)
    _derived: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _fits_its_source_and_type(self) -> TaskSpec:
        given = [key for key in _BENCHMARK_KEYS if getattr(self, key) is not None]
        if self.benchmark is None:
            for key in ("type", "needs", "data"):
                if getattr(self, key) is None:
                    raise schemas.broken((key, "is missing"), hint=f"Give the task's {key}, or a benchmark: NAME")
            if given:
                raise schemas.broken((given[0], "is a key of benchmark tasks"),
                                     hint="Leave it out, or name the task's benchmark: NAME")
        else:
            benchmark = BENCHMARKS[self.benchmark]
            takes = (*benchmark.files, *benchmark.options)
            written = [k for k in ("data", "image_root") if getattr(self, k) is not None and k not in self._derived]
            other = [key for key in (*given, *written) if key not in takes]
            if other:
                raise schemas.broken((other[0], f"is not a key of {benchmark.name} (its keys: {', '.join(takes)})"))
            missing = [key for key in benchmark.files if getattr(self, key) is None]
            if missing:
                raise schemas.broken((missing[0], f"is missing ({benchmark.name}: {benchmark.layout})"))
            if self.type is not None and self.type != benchmark.type:
                raise schemas.broken(("type", f"is {benchmark.type} for {benchmark.name}"),
                                     hint="Leave type out for a benchmark task")
        problem = TYPES[self.type or BENCHMARKS[self.benchmark].type].check_task(self.model_dump())
        if problem is not None:
            raise schemas.broken(problem)
        return self


class Task(TaskSpec):
    """A task of a loaded suite: its type and needs filled in from its benchmark, its paths absolute."""

    # its images' folder: the suite's, or beside the data, or the benchmark's root (MME's images are in its folders)
    _derived: ClassVar[tuple[str, ...]] = ("image_root",)

    type: str
    needs: str
    data: Path | None = None
    image_root: Path
    questions: Path | None = None
    annotations: Path | None = None
    problems: Path | None = None
    splits: Path | None = None
    root: Path | None = None

    def option(self, key: str) -> Any:
        """A benchmark option as the suite gives it, or the benchmark's default."""
        value = getattr(self, key)
        return BENCHMARKS[self.benchmark].options.get(key) if value is None and self.benchmark else value


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
    tasks = []
    for task in spec.tasks:
        fields = task.model_dump()
        fields.update({key: (path.parent / fields[key]).resolve() for key in PATH_KEYS if fields[key] is not None})
        if fields["image_root"] is None:  # images beside the data, inside a benchmark's folder, or beside the suite
            fields["image_root"] = fields["data"].parent if fields["data"] else fields["root"] or path.parent.resolve()
        if task.benchmark is not None:
            benchmark = BENCHMARKS[task.benchmark]
            fields.update(type=benchmark.type, needs=task.needs or benchmark.needs)
        tasks.append(Task(**fields))
    return Suite(spec.name or path.stem, tuple(tasks), spec.probes, str(path))


def load_items(task: Task, on_bad_sample: str = "fail") -> Loaded:
    """The task's items, checked: from its benchmark's release files, or from its data file (JSON list or JSONL
    records: id, image, question, answer, optional choices; ``image: null`` asks the question without an image).

    An item that cannot be used (a missing key or image, a repeated id, an image that does not decode) stops
    the run in one line naming the file, the item and the problem, or with ``on_bad_sample="skip"`` is left out
    and counted in ``Loaded.bad``. A file that is not in the expected layout always stops it.
    """
    check(on_bad_sample, ON_BAD_SAMPLE, "--on-bad-sample")
    loaded = inspect_items(task)
    source = _source(task)
    if loaded.bad and on_bad_sample == "fail":
        more = f" (and {len(loaded.bad) - 1} more)" if len(loaded.bad) > 1 else ""
        raise BackboneSwapError(f"task {task.name}: {loaded.bad[0].describe()}{more}",
                                "Fix the data, or pass --on-bad-sample skip to leave such items out (counted)")
    if not loaded.items:
        raise BackboneSwapError(
            f"{source} of task {task.name} holds no records" + (" that can be used" if loaded.bad else ""),
            "Give the task at least one record (id, image, question, answer), or remove it from the suite",
        )
    return loaded


def inspect_items(task: Task) -> Loaded:
    """The task's usable items and the ones that cannot be used (``Loaded.bad``), however many: what ``load_items``
    checks, without stopping at bad items or at a task left with none (``suite show`` counts them). A file that
    is not in the expected layout still raises."""
    loaded = BENCHMARKS[task.benchmark].read(task) if task.benchmark else _read_data_file(task)
    kind, seen, kept = TYPES[task.type], set(), []
    source = _source(task)
    for item in loaded.items:
        try:
            key = str(item["id"])
            if key in seen:
                raise BadItem(source, f"item {key!r}", "repeats an id of an earlier item")
            problem = kind.check_item(item)
            if problem is not None:
                raise BadItem(source, f"item {key!r}", problem)
            _check_image(task, item)
        except BadItem as bad:
            loaded.bad.append(bad)
            continue
        seen.add(key)
        kept.append(item)
    loaded.items = kept
    return loaded


def _source(task: Task) -> Path:
    """The file a task's items come from, as messages name it."""
    return task.data or task.root or task.questions or task.problems


def read_items(task: Task, on_bad_sample: str = "fail") -> list[dict[str, Any]]:
    """The task's usable items (see ``load_items``)."""
    return load_items(task, on_bad_sample).items


def without_image(item: dict[str, Any]) -> bool:
    """A question asked without an image: its ``image`` is null (ScienceQA's text-only questions)."""
    return "image" in item and item["image"] is None and "image_data" not in item


class MissingImage(BadItem):
    """An item whose image file is not there (``suite show`` counts these apart)."""


def _check_image(task: Task, item: dict[str, Any]) -> None:
    if "image_data" in item:
        from PIL import Image, UnidentifiedImageError

        try:
            raw = base64.b64decode(item["image_data"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise BadItem(task.data, f"item {item['id']!r}", "its base64 image does not decode") from None
        try:  # the header only: the runner opens it fully
            Image.open(io.BytesIO(raw)).close()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise BadItem(task.data, f"item {item['id']!r}", "its base64 image decodes to no image format PIL "
                          "reads") from None
    elif task.benchmark is not None:  # our own data files' images are checked when they are opened
        if without_image(item):
            return
        image = task.image_root / str(item.get("image"))
        if not image.is_file():
            raise MissingImage(task.image_root, f"item {item['id']!r}", f"image {item.get('image')} is missing")


def _read_data_file(task: Task) -> Loaded:
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
    if not isinstance(items, list):
        items = []
    loaded = Loaded([])
    for number, item in enumerate(items, start=1):
        if isinstance(item, dict) and {"id", "question", "answer"} <= set(item):
            loaded.items.append(item)
        else:
            loaded.bad.append(BadItem(task.data, f"record {number}", "needs id, question and answer"))
    return loaded
