"""What ``report.json`` holds, as pydantic models: checked before it is written, shipped as a JSON Schema.

``report.json`` is read by tools (dashboards, the next comparison, people's scripts), so its shape is a
promise. Every record allows keys beyond those listed, so that a later version can add fields without
breaking readers; the listed ones are required, with JSON types: an integer is never a float or a boolean,
a number is finite (JSON has no NaN; ``report.to_jsonable`` writes null instead).

The models also generate ``report.schema.json`` next to this module (the package ships it), for readers
that validate with their own tools; ``python -m backbone_swap.verdict.schema`` prints it, and a test checks
that the shipped file is what the models generate. Rules that a JSON Schema cannot say (the overlap counts
add up to ``n``, capabilities name tasks of the report) are checked here only.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Strict, model_validator

from backbone_swap import schemas
from backbone_swap.evaluate.suite import NEEDS
from backbone_swap.evaluate.tasks import TASK_TYPES
from backbone_swap.schemas import expect, one_of
from backbone_swap.verdict.decision import EXPECTATIONS, OVERALL_VERDICTS, VERDICTS

JSON_SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"  # the draft pydantic generates
# One line per problem, for tools and for the error of a comparison that cannot be written.
VOICE = schemas.Voice(expected="{path}: expected {expected}, got {kind}", missing="{path}: missing",
                      choice="{path}: {shown} is not one of {quoted}", rule="{path}: {message}",
                      mapping="object ({model})", root="report")


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise schemas.broken(((), f"{value} is not a finite number (JSON has no NaN)"))
    return value


def _parse_datetime(text: str) -> _dt.datetime:
    """ISO 8601 as written by ``datetime.isoformat`` or ``strftime("%Y-%m-%dT%H:%M:%S%z")`` (+0000, Z).

    Python 3.10's ``fromisoformat`` reads neither "Z" nor an offset without a colon, so both are
    normalised first.
    """
    text = re.sub(r"(?:Z|([+-]\d{2}):?(\d{2}))$", lambda m: f"{m.group(1)}:{m.group(2)}" if m.group(1) else "+00:00",
                  text.strip())
    return _dt.datetime.fromisoformat(text)


def _iso_8601(text: str) -> str:
    try:
        _parse_datetime(text)
    except ValueError:
        raise schemas.broken(((), f"{text!r} is not an ISO 8601 date and time")) from None
    return text


def _low_to_high(interval: tuple[float | None, float | None]) -> tuple[float | None, float | None]:
    low, high = interval
    if low is not None and high is not None and low > high:
        raise schemas.broken(((), f"low {low} is above high {high}"))
    return interval


# The JSON types, named in problems as report.json's readers know them.
Integer = Annotated[schemas.Integer, expect("integer")]
Number = Annotated[float, Strict(), AfterValidator(_finite), expect("number")]
NumberOrNull = Annotated[Number | None, expect("number|null")]
Boolean = Annotated[schemas.Boolean, expect("boolean")]
Text = Annotated[schemas.Text, expect("string")]
Texts = Annotated[list[Text], expect("list[string]")]
DateTime = Annotated[schemas.Text, expect("datetime"), AfterValidator(_iso_8601)]
Interval = Annotated[tuple[NumberOrNull, NumberOrNull], expect("interval [low, high]"), AfterValidator(_low_to_high)]
IntervalOrNull = Annotated[Interval | None, expect("interval|null")]


class _Record(BaseModel):
    # protected_namespaces: meta's model_a and model_b are fields, which pydantic before 2.10 warns about
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Meta(_Record):
    """The two models compared, the suite, and the settings of the statistics."""

    model_a: Text
    model_b: Text
    # what each model is (the LLM and VLM it was built from), for titles; the paths above stay for settings
    name_a: Text | None = None
    name_b: Text | None = None
    suite: Text
    baseline: one_of(("as-is", "retrain"))
    # what A and B are: model folders evaluated here, lmms-eval's --log_samples folders, LLaVA's answer files
    source: one_of(("models", "lmms-eval", "llava-answers")) | None = None
    alpha: Number
    min_gain: Number
    n_resamples: Integer
    seed: Integer
    created: DateTime


class Overlap(_Record):
    """Items each model gets right: both, only A, only B, neither; they add up to the task's n."""

    both: Integer
    only_a: Integer
    only_b: Integer
    neither: Integer


class Bin(_Record):
    """One confidence bin of a reliability diagram."""

    lower: Number
    upper: Number
    count: Integer
    accuracy: NumberOrNull
    mean_confidence: NumberOrNull


class Example(_Record):
    """One question of a task shown with both answers: one only A solves, one only B solves, or one neither does."""

    id: Text
    solved_by: one_of(("A", "B", "neither"))
    question: Text | None
    a: Text | None
    b: Text | None
    reference: Text | None


class Pair(_Record):
    """One number for each model: a benchmark's own metric for A and for B."""

    a: NumberOrNull
    b: NumberOrNull


# Task fields that are rates in [0, 1] when present.
_RATES = ("accuracy_a", "accuracy_b", "mcnemar_p", "oracle", "jaccard", "ece_a", "ece_b", "valid_rate_a",
          "valid_rate_b")


class Task(_Record):
    """One task's evidence (A is the old model, B the new one), its verdict and the reasons for it."""

    name: Text
    type: one_of(TASK_TYPES)
    # null for a task of another tool's logs whose needs backbone-swap does not know
    needs: Annotated[one_of(NEEDS) | None, expect(f"one of {', '.join(NEEDS)}, or null")]
    n: Integer
    accuracy_a: NumberOrNull
    accuracy_b: NumberOrNull
    diff: NumberOrNull
    diff_ci: Interval
    mcnemar_p: NumberOrNull
    overlap: Overlap
    phi: NumberOrNull
    kappa: NumberOrNull
    oracle: NumberOrNull
    jaccard: NumberOrNull
    complementarity: NumberOrNull
    ece_a: NumberOrNull
    ece_b: NumberOrNull
    ece_a_ci: IntervalOrNull
    ece_b_ci: IntervalOrNull
    brier_a: NumberOrNull
    brier_b: NumberOrNull
    reliability_a: Annotated[list[Bin], expect("list[bin]")]
    reliability_b: Annotated[list[Bin], expect("list[bin]")]
    cka_a: NumberOrNull
    cka_b: NumberOrNull
    valid_rate_a: NumberOrNull
    valid_rate_b: NumberOrNull
    mean_error_a: NumberOrNull
    mean_error_b: NumberOrNull
    verdict: one_of(VERDICTS)
    reasons: Texts
    # a few questions each model got right and wrong, with both answers (absent in older reports)
    examples: Annotated[list[Example], expect("list[example]")] | None = None
    # most questions solved by neither model: the verdict compares two failures (absent in older reports)
    both_poor: Boolean | None = None
    # a benchmark task's own metrics, as its evaluation code computes them (absent for tasks of other data)
    official: Annotated[dict[str, Pair], expect("map[pair]")] | None = None
    # when an answer counts as solving its question, for the paired statistics (partial credit binarised)
    solved_when: Text | None = None
    # why numbers are null although the task has items: {"calibration": "the logs hold no confidences", ...}
    unavailable: Annotated[dict[str, Text], expect("map[string]")] | None = None
    # tasks compared from another tool's logs: the per-sample score used, who scored it, and the files read
    metric: Text | None = None
    scored_by: Text | None = None
    files: Annotated[dict[str, Text], expect("map[string]")] | None = None

    @model_validator(mode="after")
    def _counts_add_up(self) -> Task:
        found = []
        if self.n < 1:
            found.append(("n", f"must be at least 1, got {self.n}"))
        elif sum(getattr(self.overlap, key) for key in Overlap.model_fields) != self.n:
            found.append(("overlap", f"both + only_a + only_b + neither must equal n ({self.n})"))
        for key in _RATES:
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                found.append((key, f"{value} is outside [0, 1]"))
        if found:
            raise schemas.broken(*found)
        return self


class Overall(_Record):
    """The verdict over all tasks, the weights that made it, and the verdicts counted."""

    verdict: one_of(OVERALL_VERDICTS)
    score: Number
    weights: Annotated[dict[str, Number], expect("map[number]")]
    counts: Annotated[dict[str, Integer], expect("map[integer]")]
    reasons: Texts


class Capability(_Record):
    """A task only one model can do: its valid outputs or its accuracy are near zero for the other."""

    name: Text
    who: one_of(("A", "B"))
    measure: one_of(("valid outputs", "accuracy"))
    rate_a: Number
    rate_b: Number


class Expectation(_Record):
    """A finding the suite's author expected of a task, and whether this comparison shows it."""

    task: Text
    expected: one_of(EXPECTATIONS)
    observed: Text
    shown: Boolean


class LossPoint(_Record):
    """One optimizer step of a training run: its stage, its step within the stage, its loss."""

    stage: Text
    step: Integer
    loss: Number


class Report(_Record):
    """``report.json``: a comparison of two vision-language models, task by task, written by backbone-swap."""

    meta: Meta
    tasks: Annotated[list[Task], expect("list[task]")]
    overall: Overall
    capabilities: Annotated[list[Capability], expect("list[capability]")]
    warnings: Texts
    expectations: Annotated[list[Expectation], expect("list[expectation]")]
    # the training loss of each side trained here ("a", "b"), as its training run recorded it
    training_loss: Annotated[dict[str, list[LossPoint]], expect("map[list[loss point]]")] | None = None

    @model_validator(mode="after")
    def _names_are_tasks(self) -> Report:
        names = [task.name for task in self.tasks]
        found: list[tuple[schemas.Loc, str]] = []
        for i, task in enumerate(self.tasks):
            if names.count(task.name) > 1:
                found.append((("tasks", i, "name"), f"{task.name!r} appears more than once"))
        for i, entry in enumerate(self.expectations):
            if entry.task not in names:
                found.append((("expectations", i, "task"), f"{entry.task!r} is not a task of this report"))
        for i, entry in enumerate(self.capabilities):
            if entry.name not in names:
                found.append((("capabilities", i, "name"), f"{entry.name!r} is not a task of this report"))
        found.extend((("overall", "weights", key), "not a task of this report")
                     for key in self.overall.weights if key not in names)
        found.extend((("overall", "counts", key), "not a task verdict")
                     for key in self.overall.counts if key not in VERDICTS)
        if found:
            raise schemas.broken(*found)
        return self


# The keys each record of report.json must hold, by record name.
RECORDS: dict[str, type[_Record]] = {"report": Report, "meta": Meta, "task": Task, "overlap": Overlap, "bin": Bin,
                                     "overall": Overall, "capability": Capability, "expectation": Expectation}
REPORT_SCHEMA: dict[str, tuple[str, ...]] = {
    name: tuple(key for key, field in model.model_fields.items() if field.is_required())
    for name, model in RECORDS.items()
}


def validate_report(data: Any) -> list[str]:
    """Problems of ``data`` (a loaded ``report.json``), one line each with its dotted path; empty when valid.

    Besides the types: task names are unique, the overlap counts add up to ``n``, rates lie in [0, 1],
    and expectations, capabilities and weights name tasks of the report. A record's rules are checked
    once its types are right.
    """
    return [problem.text for problem in schemas.problems(Report, data, VOICE)]


def report_json_schema() -> dict[str, Any]:
    """The JSON Schema of ``report.json`` (draft 2020-12), as shipped in ``report.schema.json``."""
    return {"$schema": JSON_SCHEMA_DRAFT, **Report.model_json_schema()}


if __name__ == "__main__":
    print(json.dumps(report_json_schema(), indent=2, ensure_ascii=False))
