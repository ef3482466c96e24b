"""Writing a comparison: ``report.json`` (the data), ``report.md`` and ``report.html`` (for people), and plots.

The comparison dict is built by ``compare.py``::

    {"meta": {...}, "tasks": [task statistics + "verdict" + "reasons"], "overall": {...},
     "capabilities": [...], "warnings": [str], "expectations": [...]}

``report.json`` is exactly that dict made JSON-safe (numpy scalars become Python numbers, NaN and
infinities become null); ``REPORT_SCHEMA`` describes it and ``validate_report`` checks it. The markdown and
the HTML say the same things in the same order: the overall verdict and its reasons first, then the
warnings (possible confounds), the findings the suite expects and whether this run shows them, the
per-task table, each task's reasons, and what only one model can do.

Every file is written through a temporary file and a rename, so a reader never sees half a report, and
``report.json`` is written last. The two documents are laid out in ``templates/report.md.j2`` and
``templates/report.html.j2``, so that their layout is read and changed in one place each; the values they
show are worded and formatted here once (``_context``), so that the two cannot disagree. The plots are
drawn by ``plots.py``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import jinja2
import numpy as np

from backbone_swap.evaluate.suite import NEEDS
from backbone_swap.evaluate.tasks import TASK_TYPES
from backbone_swap.runs import write_bytes
from backbone_swap.verdict.decision import (
    EXPECTATIONS,
    OVERALL_VERDICTS,
    VERDICTS,
    count_shown,
    fmt_num,
    fmt_p,
    fmt_pct,
    fmt_points,
    is_number,
)
from backbone_swap.verdict.plots import plot_accuracy, plot_overlap, plot_reliability

# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------

# The type language: "string", "integer", "number" (int or float, never bool), "boolean", "null",
# "datetime" (an ISO 8601 string), "interval" ([low, high], each number or null, low <= high),
# "enum:NAME" (one of REPORT_SCHEMA["enums"][NAME]), "list[T]", "map[T]" (an object with string keys and
# values of type T), a record name (a key of REPORT_SCHEMA other than "enums", e.g. "task"), and unions
# "A|B". Records list their required keys; extra keys are allowed everywhere, so that later versions
# can add fields without breaking readers.
REPORT_SCHEMA: dict[str, Any] = {
    "report": {
        "meta": "meta",
        "tasks": "list[task]",
        "overall": "overall",
        "capabilities": "list[capability]",
        "warnings": "list[string]",
        "expectations": "list[expectation]",
    },
    "meta": {
        "model_a": "string",
        "model_b": "string",
        "suite": "string",
        "baseline": "enum:baseline",
        "alpha": "number",
        "min_gain": "number",
        "n_resamples": "integer",
        "seed": "integer",
        "created": "datetime",
    },
    "task": {
        "name": "string",
        "type": "enum:type",
        "needs": "enum:needs",
        "n": "integer",
        "accuracy_a": "number|null",
        "accuracy_b": "number|null",
        "diff": "number|null",
        "diff_ci": "interval",
        "mcnemar_p": "number|null",
        "overlap": "overlap",
        "phi": "number|null",
        "kappa": "number|null",
        "oracle": "number|null",
        "jaccard": "number|null",
        "complementarity": "number|null",
        "ece_a": "number|null",
        "ece_b": "number|null",
        "ece_a_ci": "interval|null",
        "ece_b_ci": "interval|null",
        "brier_a": "number|null",
        "brier_b": "number|null",
        "reliability_a": "list[bin]",
        "reliability_b": "list[bin]",
        "cka_a": "number|null",
        "cka_b": "number|null",
        "valid_rate_a": "number|null",
        "valid_rate_b": "number|null",
        "mean_error_a": "number|null",
        "mean_error_b": "number|null",
        "verdict": "enum:verdict",
        "reasons": "list[string]",
    },
    "overlap": {"both": "integer", "only_a": "integer", "only_b": "integer", "neither": "integer"},
    "bin": {
        "lower": "number",
        "upper": "number",
        "count": "integer",
        "accuracy": "number|null",
        "mean_confidence": "number|null",
    },
    "overall": {
        "verdict": "enum:overall_verdict",
        "score": "number",
        "weights": "map[number]",
        "counts": "map[integer]",
        "reasons": "list[string]",
    },
    "capability": {
        "name": "string",
        "who": "enum:who",
        "measure": "enum:measure",
        "rate_a": "number",
        "rate_b": "number",
    },
    "expectation": {
        "task": "string",
        "expected": "enum:expectation",
        "observed": "string",
        "shown": "boolean",
    },
    "enums": {
        "baseline": ["as-is", "retrain"],
        "type": list(TASK_TYPES),
        "needs": list(NEEDS),
        "verdict": list(VERDICTS),
        "overall_verdict": list(OVERALL_VERDICTS),
        "who": ["A", "B"],
        "measure": ["valid outputs", "accuracy"],
        "expectation": list(EXPECTATIONS),
    },
}

# Task fields that are rates in [0, 1] when present.
_RATES = ("accuracy_a", "accuracy_b", "mcnemar_p", "oracle", "jaccard", "ece_a", "ece_b", "valid_rate_a",
          "valid_rate_b")


def _split_union(spec: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    return parts


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", str: "string", int: "integer", float: "number", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _parse_datetime(text: str) -> _dt.datetime:
    """ISO 8601 as written by ``datetime.isoformat`` or ``strftime("%Y-%m-%dT%H:%M:%S%z")`` (+0000, Z).

    Python 3.10's ``fromisoformat`` reads neither "Z" nor an offset without a colon, so both are
    normalised first.
    """
    text = re.sub(r"(?:Z|([+-]\d{2}):?(\d{2}))$", lambda m: f"{m.group(1)}:{m.group(2)}" if m.group(1) else "+00:00",
                  text.strip())
    return _dt.datetime.fromisoformat(text)


def _check(value: Any, spec: str, where: str, problems: list[str]) -> None:
    """Append to ``problems`` what is wrong with ``value`` against ``spec``."""
    options = _split_union(spec)
    if len(options) > 1:
        trial: list[list[str]] = []
        for option in options:
            found: list[str] = []
            _check(value, option, where, found)
            if not found:
                return
            trial.append(found)
        # Report the option whose shape matched (its inner problems), else a plain type mismatch.
        shaped = [found for found in trial if not found[0].endswith(f"got {_type_name(value)}")]
        problems.extend(shaped[0] if shaped else [f"{where}: expected {spec}, got {_type_name(value)}"])
        return
    mismatch = f"{where}: expected {spec}, got {_type_name(value)}"
    if spec == "null":
        if value is not None:
            problems.append(mismatch)
    elif spec == "string":
        if not isinstance(value, str):
            problems.append(mismatch)
    elif spec == "boolean":
        if not isinstance(value, bool):
            problems.append(mismatch)
    elif spec == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(mismatch)
    elif spec == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(mismatch)
        elif not math.isfinite(value):
            problems.append(f"{where}: {value} is not a finite number (JSON has no NaN)")
    elif spec == "datetime":
        if not isinstance(value, str):
            problems.append(mismatch)
        else:
            try:
                _parse_datetime(value)
            except ValueError:
                problems.append(f"{where}: {value!r} is not an ISO 8601 date and time")
    elif spec == "interval":
        if not isinstance(value, list) or len(value) != 2:
            problems.append(f"{where}: expected interval [low, high], got {_type_name(value)}")
            return
        for i, item in enumerate(value):
            _check(item, "number|null", f"{where}[{i}]", problems)
        if all(is_number(v) for v in value) and value[0] > value[1]:
            problems.append(f"{where}: low {value[0]} is above high {value[1]}")
    elif spec.startswith("enum:"):
        allowed = REPORT_SCHEMA["enums"][spec[5:]]
        if value not in allowed:
            problems.append(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
    elif spec.startswith("list[") and spec.endswith("]"):
        if not isinstance(value, list):
            problems.append(mismatch)
            return
        for i, item in enumerate(value):
            _check(item, spec[5:-1], f"{where}[{i}]", problems)
    elif spec.startswith("map[") and spec.endswith("]"):
        if not isinstance(value, dict):
            problems.append(mismatch)
            return
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"{where}: key {key!r} is not a string")
            _check(item, spec[4:-1], f"{where}.{key}", problems)
    elif spec in REPORT_SCHEMA and spec != "enums":
        if not isinstance(value, dict):
            problems.append(f"{where or 'report'}: expected object ({spec}), got {_type_name(value)}")
            return
        for key, sub in REPORT_SCHEMA[spec].items():
            path = f"{where}.{key}" if where else key
            if key not in value:
                problems.append(f"{path}: missing")
            else:
                _check(value[key], sub, path, problems)
    else:  # pragma: no cover - a typo in REPORT_SCHEMA itself
        raise ValueError(f"unknown type {spec!r} in REPORT_SCHEMA")


def validate_report(data: Any) -> list[str]:
    """Problems of ``data`` (a loaded ``report.json``) against ``REPORT_SCHEMA``; empty when valid.

    Besides the types: task names are unique, the overlap counts add up to ``n``, rates lie in [0, 1],
    capabilities and weights name tasks of the report.
    """
    problems: list[str] = []
    _check(data, "report", "", problems)
    if problems or not isinstance(data, dict):
        return problems
    names = [task["name"] for task in data["tasks"]]
    for i, task in enumerate(data["tasks"]):
        where = f"tasks[{i}]"
        if names.count(task["name"]) > 1:
            problems.append(f"{where}.name: {task['name']!r} appears more than once")
        if task["n"] < 1:
            problems.append(f"{where}.n: must be at least 1, got {task['n']}")
        elif sum(task["overlap"][key] for key in REPORT_SCHEMA["overlap"]) != task["n"]:
            problems.append(f"{where}.overlap: both + only_a + only_b + neither must equal n ({task['n']})")
        for key in _RATES:
            value = task[key]
            if is_number(value) and not 0.0 <= value <= 1.0:
                problems.append(f"{where}.{key}: {value} is outside [0, 1]")
    for i, entry in enumerate(data["expectations"]):
        if entry["task"] not in names:
            problems.append(f"expectations[{i}].task: {entry['task']!r} is not a task of this report")
    for i, entry in enumerate(data["capabilities"]):
        if entry["name"] not in names:
            problems.append(f"capabilities[{i}].name: {entry['name']!r} is not a task of this report")
    for key in data["overall"]["weights"]:
        if key not in names:
            problems.append(f"overall.weights.{key}: not a task of this report")
    for key in data["overall"]["counts"]:
        if key not in VERDICTS:
            problems.append(f"overall.counts.{key}: not a task verdict")
    return problems


# --------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------


def to_jsonable(value: Any, where: str = "comparison") -> Any:
    """``value`` with numpy types, tuples, paths, dates and dataclasses made JSON-safe; NaN/inf become None."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), where)
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), where)
    raise TypeError(f"{where}: {type(value).__name__} cannot be written to JSON")


# --------------------------------------------------------------------------------------------------
# Cells shared by the markdown, the HTML and the terminal table
# --------------------------------------------------------------------------------------------------

COLUMNS = ("task", "needs", "n", "acc A", "acc B", "valid A / B", "diff [95% CI]", "McNemar p", "only A / only B",
           "ECE A / B", "CKA A / B", "verdict")


def _pair(a: Any, b: Any, fmt: Any) -> str:
    if a is None and b is None:
        return "-"
    return f"{fmt(a)} / {fmt(b)}"


def _diff_cell(task: Mapping[str, Any]) -> str:
    ci = task.get("diff_ci") or [None, None]
    text = fmt_points(task.get("diff"))
    if all(is_number(v) for v in ci):
        text += f" [{fmt_points(ci[0], sign=False)}, {fmt_points(ci[1], sign=False)}]"
    return text


def task_row(task: Mapping[str, Any]) -> list[str]:
    """The cells of one task in the order of ``COLUMNS`` (accuracies in %, differences in points)."""
    overlap = task.get("overlap") or {}
    return [
        str(task["name"]),
        str(task.get("needs", "")),
        str(task.get("n", "")),
        fmt_pct(task.get("accuracy_a")),
        fmt_pct(task.get("accuracy_b")),
        _pair(task.get("valid_rate_a"), task.get("valid_rate_b"), fmt_pct),
        _diff_cell(task),
        fmt_p(task.get("mcnemar_p")),
        f"{overlap.get('only_a', '?')} / {overlap.get('only_b', '?')}",
        _pair(task.get("ece_a"), task.get("ece_b"), fmt_num),
        _pair(task.get("cka_a"), task.get("cka_b"), lambda v: fmt_num(v, 2)),
        str(task.get("verdict", "")),
    ]


def _capability_line(entry: Mapping[str, Any]) -> str:
    return (f"{entry['name']}: only {entry['who']} can do it ({entry['measure']} A {fmt_pct(entry['rate_a'])}, "
            f"B {fmt_pct(entry['rate_b'])})")


def expectation_line(entry: Mapping[str, Any]) -> str:
    mark = "shown" if entry["shown"] else "NOT shown"
    return f"{entry['task']}: expected {entry['expected']}, observed {entry['observed']}: {mark}"


def _baseline_note(baseline: str) -> str:
    if baseline == "retrain":
        return "retrain: A was retrained with the same recipe, so the differences isolate the backbone"
    if baseline == "as-is":
        return "as-is: A is the old model as released, so the differences mix the backbone with the training recipe"
    return str(baseline)


def _settings(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        ("A (old)", str(meta.get("model_a", "?"))),
        ("B (new)", str(meta.get("model_b", "?"))),
        ("suite", str(meta.get("suite", "?"))),
        ("baseline", _baseline_note(str(meta.get("baseline", "?")))),
        ("alpha", f"{meta.get('alpha')}"),
        ("minimum gain", f"{fmt_points(meta.get('min_gain'), sign=False)} points"),
        ("bootstrap", f"{meta.get('n_resamples')} resamples, seed {meta.get('seed')}"),
        ("created", str(meta.get("created", "?"))),
    ]


PLOTS = {
    "accuracy": "Accuracy per task (A old, B new) and the difference B - A with its 95% interval",
    "overlap": "Which questions each model solves: both, only A, only B, neither",
    "reliability": "Reliability diagrams: accuracy against confidence per bin (diagonal = perfectly calibrated)",
}


# --------------------------------------------------------------------------------------------------
# Markdown and HTML, from the templates in templates/
# --------------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"[\\`*\[\]|]|<(?=[A-Za-z/!?])")


def md_escape(text: Any) -> str:
    """Backslash-escape what markdown would read as markup, a link, a table border or an HTML tag.

    ``<`` is escaped only where it could open a tag ("p < 0.001" stays as it is); underscores stay, as
    they do not emphasise inside words and task names are full of them.
    """
    out = str(text).replace("\r", " ").replace("\n", " ")
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), out)


def _css(verdict: Any) -> str:
    return {"upgrade": "upgrade", "keep": "keep", "complementary": "complementary",
            "mixed: route per task": "complementary"}.get(str(verdict), "none")


# The templates shipped in the package: HTML autoescaped, markdown escaped by the md filter where the template
# says so; a misspelt variable is an error rather than a blank in someone's report.
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("backbone_swap.verdict", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_TEMPLATES.filters["md"] = md_escape


def _context(comparison: Mapping[str, Any]) -> dict[str, Any]:
    """What both documents show, worded and formatted here once so that the markdown and the HTML agree."""
    meta, overall = comparison["meta"], comparison["overall"]
    expectations = comparison.get("expectations") or []
    return {
        "model_a": str(meta.get("model_a", "A")),
        "model_b": str(meta.get("model_b", "B")),
        "suite": str(meta.get("suite", "?")),
        "verdict": str(overall["verdict"]),
        "verdict_css": _css(overall["verdict"]),
        "score": f"{float(overall['score']):+.2f}",
        "reasons": overall.get("reasons", []),
        "warnings": comparison.get("warnings") or [],
        "expectations": [expectation_line(entry) for entry in expectations],
        "shown": count_shown(expectations),
        "columns": COLUMNS,
        "tasks": [{"name": str(task["name"]), "verdict": str(task.get("verdict", "")), "css": _css(task.get("verdict")),
                   "cells": task_row(task), "reasons": task.get("reasons", [])} for task in comparison["tasks"]],
        "plots": PLOTS,
        "capabilities": [_capability_line(entry) for entry in comparison.get("capabilities") or []],
        "settings": _settings(meta),
    }


def render_markdown(comparison: Mapping[str, Any]) -> str:
    return _TEMPLATES.get_template("report.md.j2").render(_context(comparison))


def render_html(comparison: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """One self-contained page, the plots inlined as data URLs; every value from the data is escaped."""
    figures = [{"data": base64.b64encode(images[key]).decode("ascii"), "caption": caption}
               for key, caption in PLOTS.items() if key in images]
    return _TEMPLATES.get_template("report.html.j2").render(_context(comparison), images=figures)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def write_report(folder: Path, comparison: Mapping[str, Any]) -> dict[str, Path]:
    """Write the report files into ``folder`` (created if needed), each atomically, ``report.json`` last.

    Returns the paths by kind: ``json``, ``markdown``, ``html``, ``accuracy``, ``overlap``, ``reliability``.
    A comparison that does not match ``REPORT_SCHEMA`` is a bug in whatever built it: ``ValueError``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = to_jsonable(comparison)
    problems = validate_report(data)
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ValueError("the comparison does not match REPORT_SCHEMA: " + "; ".join(problems[:10]) + more)
    images = {
        "accuracy": plot_accuracy(data),
        "overlap": plot_overlap(data),
        "reliability": plot_reliability(data),
    }
    paths: dict[str, Path] = {}
    for key, png in images.items():
        paths[key] = folder / f"{key}.png"
        write_bytes(paths[key], png)
    paths["markdown"] = folder / "report.md"
    write_bytes(paths["markdown"], render_markdown(data).encode("utf-8"))
    paths["html"] = folder / "report.html"
    write_bytes(paths["html"], render_html(data, images).encode("utf-8"))
    paths["json"] = folder / "report.json"
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    write_bytes(paths["json"], text.encode("utf-8"))
    return paths


# --------------------------------------------------------------------------------------------------
# Terminal
# --------------------------------------------------------------------------------------------------

_RICH_STYLE = {"upgrade": "bold green", "keep": "bold red", "complementary": "bold yellow",
               "mixed: route per task": "bold yellow"}


def terminal_table(comparison: Mapping[str, Any]) -> Any:
    """A short ``rich.table.Table`` (task, acc A, acc B, diff, p, verdict); user text is never read as markup."""
    from rich.table import Table
    from rich.text import Text

    meta, overall = comparison["meta"], comparison["overall"]
    verdict = str(overall.get("verdict", ""))
    title = Text(f"{meta.get('model_a', 'A')} -> {meta.get('model_b', 'B')}: ")
    title.append(verdict, style=_RICH_STYLE.get(verdict, "bold"))
    table = Table(title=title, title_justify="left")
    table.add_column("task")
    for name in ("acc A", "acc B", "diff", "p"):
        table.add_column(name, justify="right")
    table.add_column("verdict")
    for task in comparison["tasks"]:
        v = str(task.get("verdict", ""))
        table.add_row(
            Text(str(task["name"])),
            fmt_pct(task.get("accuracy_a")),
            fmt_pct(task.get("accuracy_b")),
            fmt_points(task.get("diff")),
            fmt_p(task.get("mcnemar_p")),
            Text(v, style=_RICH_STYLE.get(v, "")),
        )
    caption = []
    expectations = comparison.get("expectations") or []
    if expectations:
        shown = count_shown(expectations)
        caption.append(Text(f"expected findings shown: {shown} of {len(expectations)}",
                            style="green" if shown == len(expectations) else "yellow"))
    warnings = comparison.get("warnings") or []
    if warnings:
        caption.append(Text(f"{len(warnings)} warning(s): see the report", style="yellow"))
    if caption:
        table.caption = Text("; ").join(caption)
    return table
