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
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import jinja2
import numpy as np

from backbone_swap.runs import write_bytes
from backbone_swap.verdict.decision import count_shown
from backbone_swap.verdict.formatting import fmt_num, fmt_p, fmt_pct, fmt_points, is_number
from backbone_swap.verdict.plots import plot_accuracy, plot_overlap, plot_reliability, plot_training
from backbone_swap.verdict.schema import validate_report

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
        str(task.get("needs") or "-"),
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


def official_rows(task: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """A benchmark's own metrics for one task as (metric, A, B) cells, in the order report.json lists them.

    A metric whose values all lie in [0, 1] is a rate and is shown in percent, as papers print accuracies; any
    other (MME's perception score, summed over its subtasks to at most 2000) is shown as points with one decimal.
    """
    rows = []
    for metric, pair in (task.get("official") or {}).items():
        values = [pair.get(side) for side in ("a", "b")]
        numbers = [float(v) for v in values if is_number(v)]
        rate = all(0.0 <= v <= 1.0 for v in numbers)
        cells = [(fmt_pct(v) if rate else fmt_num(v, 1)) if is_number(v) else "n/a" for v in values]
        rows.append((str(metric), cells[0], cells[1]))
    return rows


def _capability_line(entry: Mapping[str, Any]) -> str:
    return (f"{entry['name']}: only {entry['who']} can do it ({entry['measure']} A {fmt_pct(entry['rate_a'])}, "
            f"B {fmt_pct(entry['rate_b'])})")


def expectation_line(entry: Mapping[str, Any]) -> str:
    mark = "shown" if entry["shown"] else "NOT shown"
    return f"{entry['task']}: expected {entry['expected']}, observed {entry['observed']}: {mark}"


def _scored_by(task: Mapping[str, Any]) -> str:
    """Where the answers of a task compared from another tool's output were scored, and from which files."""
    if not task.get("metric"):
        return ""
    files = task.get("files") or {}
    shown = f" (A {files.get('a')}, B {files.get('b')})" if files else ""
    return f"{task.get('scored_by') or 'the logs'}: per-sample {task['metric']}{shown}"


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
    "training": "Training loss of each side trained here, per optimizer step (faint) and smoothed",
}


def _plots(comparison: Mapping[str, Any]) -> dict[str, str]:
    """The report's plots: the training curves only where a side was trained here."""
    return {key: caption for key, caption in PLOTS.items() if key != "training" or comparison.get("training_loss")}


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


def _answer_links(task: Mapping[str, Any], folder: Path | None) -> list[tuple[str, str]]:
    """(side, path) of a task's per-item answer files, relative to the report's folder when it is known."""
    files = task.get("files") or {}
    if task.get("metric") or not files:  # files of another tool's logs are named with the metric that scored them
        return []
    links = []
    for side in ("a", "b"):
        if side in files:
            path = Path(files[side])
            links.append((side.upper(), os.path.relpath(path, folder) if folder is not None else str(path)))
    return links


def _context(comparison: Mapping[str, Any], folder: Path | None = None) -> dict[str, Any]:
    """What both documents show, worded and formatted here once so that the markdown and the HTML agree."""
    meta, overall = comparison["meta"], comparison["overall"]
    expectations = comparison.get("expectations") or []
    return {
        "model_a": str(meta.get("name_a") or meta.get("model_a", "A")),
        "model_b": str(meta.get("name_b") or meta.get("model_b", "B")),
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
                   "cells": task_row(task), "reasons": task.get("reasons", []),
                   "solved_when": str(task.get("solved_when") or ""), "scored_by": _scored_by(task),
                   "official": official_rows(task), "poor": " (both models poor)" if task.get("both_poor") else "",
                   "examples": task.get("examples") or [], "answers": _answer_links(task, folder)}
                  for task in comparison["tasks"]],
        "plots": _plots(comparison),
        "capabilities": [_capability_line(entry) for entry in comparison.get("capabilities") or []],
        "settings": _settings(meta),
    }


def render_markdown(comparison: Mapping[str, Any], folder: Path | None = None) -> str:
    """The markdown report; with ``folder`` (where it is written) its links to answer files are relative."""
    return _TEMPLATES.get_template("report.md.j2").render(_context(comparison, folder))


def render_html(comparison: Mapping[str, Any], images: Mapping[str, bytes], folder: Path | None = None) -> str:
    """One self-contained page, the plots inlined as data URLs; every value from the data is escaped."""
    figures = [{"data": base64.b64encode(images[key]).decode("ascii"), "caption": caption}
               for key, caption in PLOTS.items() if key in images]
    return _TEMPLATES.get_template("report.html.j2").render(_context(comparison, folder), images=figures)


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
    if data.get("training_loss"):
        images["training"] = plot_training({side.upper(): curve for side, curve in data["training_loss"].items()})
    paths: dict[str, Path] = {}
    for key, png in images.items():
        paths[key] = folder / f"{key}.png"
        write_bytes(paths[key], png)
    paths["markdown"] = folder / "report.md"
    write_bytes(paths["markdown"], render_markdown(data, folder).encode("utf-8"))
    paths["html"] = folder / "report.html"
    write_bytes(paths["html"], render_html(data, images, folder).encode("utf-8"))
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
    name_a, name_b = (meta.get(f"name_{side}") or meta.get(f"model_{side}", side.upper()) for side in "ab")
    title = Text(f"{name_a} -> {name_b}: ")
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
