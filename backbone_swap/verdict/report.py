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
``report.json`` is written last. matplotlib is used through its object API with the Agg canvas (no pyplot,
no global backend switch) and imported only when plots are drawn.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from backbone_swap.runs import write_bytes
from backbone_swap.verdict.decision import (
    count_shown,
    fmt_num,
    fmt_p,
    fmt_pct,
    fmt_points,
    is_number,
)
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
# Markdown
# --------------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"[\\`*\[\]|]|<(?=[A-Za-z/!?])")


def md_escape(text: Any) -> str:
    """Backslash-escape what markdown would read as markup, a link, a table border or an HTML tag.

    ``<`` is escaped only where it could open a tag ("p < 0.001" stays as it is); underscores stay, as
    they do not emphasise inside words and task names are full of them.
    """
    out = str(text).replace("\r", " ").replace("\n", " ")
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), out)


def render_markdown(comparison: Mapping[str, Any]) -> str:
    meta, overall = comparison["meta"], comparison["overall"]
    lines = [
        f"# Backbone swap: {md_escape(meta.get('model_a', 'A'))} -> {md_escape(meta.get('model_b', 'B'))}",
        "",
        f"A is the old model, B the new one; suite {md_escape(meta.get('suite', '?'))}.",
        "",
        f"## Verdict: **{md_escape(overall['verdict'])}** (score {float(overall['score']):+.2f})",
        "",
    ]
    lines += [f"- {md_escape(reason)}" for reason in overall.get("reasons", [])]
    lines += [""]
    warnings = comparison.get("warnings") or []
    if warnings:
        lines += ["> **Warnings (possible confounds)**", ">"]
        lines += [f"> - {md_escape(w)}" for w in warnings]
    else:
        lines += ["> **Warnings (possible confounds):** none were detected."]
    expectations = comparison.get("expectations") or []
    if expectations:
        shown = count_shown(expectations)
        lines += ["", f"## Expected findings: {shown} of {len(expectations)} shown by this run", ""]
        lines += [f"- {md_escape(expectation_line(e))}" for e in expectations]
    lines += ["", "## Per task", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] * len(COLUMNS)) + "|"]
    for task in comparison["tasks"]:
        # Only the text cells can hold markup; the formatted numbers ("<0.001", "[4.1, 20.3]") are left alone.
        cells = task_row(task)
        cells[0], cells[1], cells[-1] = md_escape(cells[0]), md_escape(cells[1]), md_escape(cells[-1])
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Accuracies in percent; diff = B - A in percentage points with its 95% paired bootstrap interval; "
        "only A / only B = questions solved by one model alone; ECE: lower is better calibrated; CKA: "
        "higher is more stable under perturbed inputs; valid = outputs that parse in the declared format.",
        "",
    ]
    for key, caption in PLOTS.items():
        lines += [f"![{caption}]({key}.png)", ""]
    lines += ["## Reasons per task", ""]
    for task in comparison["tasks"]:
        lines += [f"### {md_escape(task['name'])}: {md_escape(task.get('verdict', ''))}", ""]
        lines += [f"- {md_escape(reason)}" for reason in task.get("reasons", [])]
        lines += [""]
    lines += ["## Abilities only one model has", ""]
    caps = comparison.get("capabilities") or []
    lines += [f"- {md_escape(_capability_line(entry))}" for entry in caps] or ["None: every task is within reach of "
                                                                              "both models, or of neither."]
    lines += ["", "## Settings", ""]
    lines += [f"- {label}: {md_escape(value)}" for label, value in _settings(meta)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Backbone swap: {{ meta.model_a }} -> {{ meta.model_b }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.warnings { border-left: 4px solid #d9822b; background: #fff6e5; padding: 0.5em 1em; }
.verdict-upgrade { color: #1a7f37; font-weight: bold; }
.verdict-keep { color: #c62828; font-weight: bold; }
.verdict-complementary { color: #8a6d00; font-weight: bold; }
img { max-width: 100%; }
.note { color: #555; font-size: 0.9em; }
</style>
</head>
<body>
<h1>Backbone swap: {{ meta.model_a }} &rarr; {{ meta.model_b }}</h1>
<p>A is the old model, B the new one; suite {{ meta.suite }}.</p>
<h2>Verdict: <span class="{{ overall_class }}">{{ overall.verdict }}</span> (score {{ score }})</h2>
<ul>
{% for reason in overall.reasons %}<li>{{ reason }}</li>
{% endfor %}</ul>
<div class="warnings">
{% if warnings %}<strong>Warnings (possible confounds)</strong>
<ul>
{% for w in warnings %}<li>{{ w }}</li>
{% endfor %}</ul>
{% else %}<strong>Warnings (possible confounds):</strong> none were detected.
{% endif %}</div>
{% if expectations %}<h2>Expected findings: {{ expectations_shown }} of {{ expectations|length }} shown by this run</h2>
<ul>
{% for line in expectations %}<li>{{ line }}</li>
{% endfor %}</ul>
{% endif %}<h2>Per task</h2>
<table>
<tr>{% for c in columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for cell in row.cells %}<td>{{ cell }}</td>{% endfor %}
<td class="verdict-{{ row.css }}">{{ row.verdict }}</td></tr>
{% endfor %}</table>
<p class="note">Accuracies in percent; diff = B - A in percentage points with its 95% paired bootstrap interval;
only A / only B = questions solved by one model alone; ECE: lower is better calibrated; CKA: higher is more stable
under perturbed inputs; valid = outputs that parse in the declared format.</p>
{% for image in images %}<figure><img src="data:image/png;base64,{{ image.data }}" alt="{{ image.caption }}">
<figcaption>{{ image.caption }}</figcaption></figure>
{% endfor %}
<h2>Reasons per task</h2>
{% for task in tasks %}<h3>{{ task.name }}: <span class="verdict-{{ task.css }}">{{ task.verdict }}</span></h3>
<ul>
{% for reason in task.reasons %}<li>{{ reason }}</li>
{% endfor %}</ul>
{% endfor %}
<h2>Abilities only one model has</h2>
{% if capabilities %}<ul>
{% for line in capabilities %}<li>{{ line }}</li>
{% endfor %}</ul>
{% else %}<p>None: every task is within reach of both models, or of neither.</p>
{% endif %}
<h2>Settings</h2>
<ul>
{% for label, value in settings %}<li>{{ label }}: {{ value }}</li>
{% endfor %}</ul>
</body>
</html>
"""


def _css(verdict: Any) -> str:
    return {"upgrade": "upgrade", "keep": "keep", "complementary": "complementary",
            "mixed: route per task": "complementary"}.get(str(verdict), "none")


def render_html(comparison: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """One self-contained page; every value from the data is escaped by jinja2's autoescape."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    overall = comparison["overall"]
    return env.from_string(_HTML).render(
        meta={k: str(v) for k, v in comparison["meta"].items()},
        overall=overall,
        overall_class=f"verdict-{_css(overall['verdict'])}",
        score=f"{float(overall['score']):+.2f}",
        warnings=comparison.get("warnings") or [],
        expectations=[expectation_line(e) for e in comparison.get("expectations") or []],
        expectations_shown=count_shown(comparison.get("expectations") or []),
        columns=COLUMNS,
        rows=[{"cells": task_row(task)[:-1], "verdict": task_row(task)[-1], "css": _css(task.get("verdict"))}
              for task in comparison["tasks"]],
        images=[{"data": base64.b64encode(images[key]).decode("ascii"), "caption": caption}
                for key, caption in PLOTS.items() if key in images],
        tasks=[{"name": str(task["name"]), "verdict": str(task.get("verdict", "")), "css": _css(task.get("verdict")),
                "reasons": task.get("reasons", [])} for task in comparison["tasks"]],
        capabilities=[_capability_line(entry) for entry in comparison.get("capabilities") or []],
        settings=_settings(comparison["meta"]),
    )


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------

_COLOR_A, _COLOR_B = "#4C72B0", "#DD8452"
_VERDICT_COLOR = {"upgrade": "#1a7f37", "keep": "#c62828", "complementary": "#b8860b"}
_DPI = 100


def _label(name: Any, width: int = 28) -> str:
    """A task name safe for matplotlib: shortened, and '$' escaped so it is not read as mathtext."""
    text = str(name).replace("\n", " ")
    if len(text) > width:
        text = text[: width - 1] + "\u2026"
    return text.replace("$", r"\$")


def _num(value: Any) -> float:
    return float(value) if is_number(value) else math.nan


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return buffer.getvalue()


def plot_accuracy(comparison: Mapping[str, Any]) -> bytes:
    """Left: accuracy of A and B per task; right: the difference B - A in points with its 95% interval."""
    tasks = comparison["tasks"]
    k = len(tasks)
    fig = _new_figure(9.0, max(2.4, 0.5 * k + 1.3))
    left, right = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1.2, 1.0]})
    y = np.arange(k)
    acc_a = np.array([_num(t.get("accuracy_a")) for t in tasks]) * 100
    acc_b = np.array([_num(t.get("accuracy_b")) for t in tasks]) * 100
    left.barh(y - 0.2, np.nan_to_num(acc_a), height=0.4, color=_COLOR_A, label="A (old)")
    left.barh(y + 0.2, np.nan_to_num(acc_b), height=0.4, color=_COLOR_B, label="B (new)")
    left.set_xlim(0, 100)
    left.set_xlabel("accuracy (%)")
    left.set_yticks(y, [_label(t["name"]) for t in tasks])
    left.invert_yaxis()
    left.legend(loc="lower right", fontsize=8)

    min_gain = _num(comparison["meta"].get("min_gain")) * 100
    if math.isfinite(min_gain) and min_gain > 0:
        right.axvspan(-min_gain, min_gain, color="#eeeeee", label="below minimum gain")
    right.axvline(0, color="#555555", linewidth=0.8)
    for i, task in enumerate(tasks):
        diff = _num(task.get("diff")) * 100
        ci = task.get("diff_ci") or [None, None]
        low, high = _num(ci[0]) * 100, _num(ci[1]) * 100
        color = _VERDICT_COLOR.get(str(task.get("verdict")), "#555555")
        if math.isfinite(low) and math.isfinite(high):
            right.plot([low, high], [i, i], color=color, linewidth=2, solid_capstyle="butt")
        if math.isfinite(diff):
            right.plot([diff], [i], "o", color=color)
    right.set_xlabel("B - A (points, 95% CI)")
    if math.isfinite(min_gain) and min_gain > 0:
        right.legend(loc="lower right", fontsize=8)
    fig.suptitle("Accuracy per task", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def plot_overlap(comparison: Mapping[str, Any]) -> bytes:
    """Per task, the share of questions solved by both, only A, only B and neither (stacked to 100%)."""
    tasks = comparison["tasks"]
    k = len(tasks)
    fig = _new_figure(8.0, max(2.2, 0.45 * k + 1.3))
    ax = fig.subplots()
    y = np.arange(k)
    parts = (("both", "#8c8c8c"), ("only_a", _COLOR_A), ("only_b", _COLOR_B), ("neither", "#e0e0e0"))
    start = np.zeros(k)
    for key, color in parts:
        counts = np.array([float((t.get("overlap") or {}).get(key) or 0) for t in tasks])
        n = np.array([float(t.get("n") or 0) or 1.0 for t in tasks])
        share = 100 * counts / n
        label = {"only_a": "only A", "only_b": "only B"}.get(key, key)
        ax.barh(y, share, left=start, color=color, label=label, height=0.6)
        for i in range(k):
            if share[i] >= 6:
                ax.text(start[i] + share[i] / 2, i, f"{int(counts[i])}", ha="center", va="center", fontsize=7)
        start += share
    ax.set_yticks(y, [_label(t["name"]) for t in tasks])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of questions (%), counts in the bars")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 if k < 4 else -0.12), ncol=4, fontsize=8,
              frameon=False)
    ax.set_title("Which questions each model solves", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _bins_xy(bins: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float], list[float]]:
    xs, ys, sizes = [], [], []
    for b in bins or []:
        if b.get("count") and is_number(b.get("mean_confidence")) and is_number(b.get("accuracy")):
            xs.append(float(b["mean_confidence"]))
            ys.append(float(b["accuracy"]))
            sizes.append(float(b["count"]))
    return xs, ys, sizes


def plot_reliability(comparison: Mapping[str, Any]) -> bytes:
    """One reliability diagram per task, side by side (four per row): A and B per bin against the diagonal."""
    tasks = comparison["tasks"]
    k = len(tasks)
    cols = max(1, min(k, 4))
    rows = max(1, math.ceil(k / cols))
    fig = _new_figure(2.6 * cols + 0.3, 2.7 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, task in zip(axes[:k], tasks, strict=True):
        ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=0.8)
        drawn = False
        for side, color, label in (("a", _COLOR_A, "A"), ("b", _COLOR_B, "B")):
            xs, ys, sizes = _bins_xy(task.get(f"reliability_{side}") or [])
            if xs:
                total = sum(sizes)
                ax.plot(xs, ys, "-o", color=color, linewidth=1, markersize=3, label=label)
                ax.scatter(xs, ys, s=[10 + 120 * s / total for s in sizes], color=color, alpha=0.6, zorder=3)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no confidences", ha="center", va="center", fontsize=8, color="#777777")
        else:
            ax.legend(loc="upper left", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ece = f"ECE A {fmt_num(task.get('ece_a'))} / B {fmt_num(task.get('ece_b'))}"
        ax.set_title(f"{_label(task['name'], 24)}\n{ece}", fontsize=8)
        ax.set_xlabel("confidence", fontsize=7)
        ax.set_ylabel("accuracy", fontsize=7)
    for ax in axes[k:]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)


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
