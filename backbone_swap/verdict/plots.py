"""The PNG plots: the report's accuracy, overlap and reliability figures, and the training loss curve.

Each figure is a ``matplotlib.figure.Figure`` on its own Agg canvas, never pyplot: pyplot keeps every figure
in a global registry until it is closed and switching its backend is process-wide, which a library called
from someone else's notebook or training script must not touch. matplotlib is imported only when a figure
is drawn, so the command line starts without it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from backbone_swap.verdict.formatting import fmt_num, is_number

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_COLOR_A, _COLOR_B = "#4C72B0", "#DD8452"
_VERDICT_COLOR = {"upgrade": "#1a7f37", "keep": "#c62828", "complementary": "#b8860b"}
_OTHER_VERDICT = "#555555"  # no clear difference
_DPI = 100
# body-text size: every label, tick and legend is read at a glance, as the report's text is
_FONT = 10


def _label(name: Any, width: int = 28) -> str:
    """A name safe for matplotlib: shortened, and '$' escaped so it is not read as mathtext."""
    text = str(name).replace("\n", " ")
    if len(text) > width:
        text = text[: width - 1] + "\u2026"
    return text.replace("$", r"\$")


def _num(value: Any) -> float:
    return float(value) if is_number(value) else math.nan


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    """The figure as PNG, without the matplotlib version in its metadata, so the same data gives the same bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return buffer.getvalue()


def plot_accuracy(comparison: Mapping[str, Any]) -> bytes:
    """Left: accuracy of A and B per task; right: the difference B - A in points with its 95% interval, coloured by
    the task's verdict. One legend below both names every colour."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    tasks = comparison["tasks"]
    k = len(tasks)
    fig = _new_figure(9.0, max(2.4, 0.5 * k + 1.3) + 0.5)
    left, right = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1.2, 1.0]})
    y = np.arange(k)
    acc_a = np.array([_num(t.get("accuracy_a")) for t in tasks]) * 100
    acc_b = np.array([_num(t.get("accuracy_b")) for t in tasks]) * 100
    left.barh(y - 0.2, np.nan_to_num(acc_a), height=0.4, color=_COLOR_A)
    left.barh(y + 0.2, np.nan_to_num(acc_b), height=0.4, color=_COLOR_B)
    left.set_xlim(0, 100)
    left.set_xlabel("accuracy (%)", fontsize=_FONT)
    left.set_yticks(y, [_label(t["name"]) for t in tasks])
    left.tick_params(labelsize=_FONT)
    left.invert_yaxis()

    min_gain = _num(comparison["meta"].get("min_gain")) * 100
    band = math.isfinite(min_gain) and min_gain > 0
    if band:
        right.axvspan(-min_gain, min_gain, color="#eeeeee")
    right.axvline(0, color="#555555", linewidth=0.8)
    for i, task in enumerate(tasks):
        diff = _num(task.get("diff")) * 100
        ci = task.get("diff_ci") or [None, None]
        low, high = _num(ci[0]) * 100, _num(ci[1]) * 100
        color = _VERDICT_COLOR.get(str(task.get("verdict")), _OTHER_VERDICT)
        if math.isfinite(low) and math.isfinite(high):
            right.plot([low, high], [i, i], color=color, linewidth=2, solid_capstyle="butt")
        if math.isfinite(diff):
            right.plot([diff], [i], "o", color=color)
    right.set_xlabel("B - A (points, 95% CI)", fontsize=_FONT)
    right.tick_params(labelsize=_FONT)
    handles = [Patch(color=_COLOR_A, label="A (old)"), Patch(color=_COLOR_B, label="B (new)")]
    handles += [Line2D([0], [0], color=_VERDICT_COLOR.get(v, _OTHER_VERDICT), marker="o", linewidth=2, label=v)
                for v in dict.fromkeys(str(task.get("verdict")) for task in tasks)]  # every colour drawn
    if band:
        handles.append(Patch(color="#eeeeee", label="below the minimum gain"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=_FONT - 1, frameon=False)
    fig.suptitle("Accuracy per task", fontsize=_FONT + 1)
    fig.tight_layout(rect=(0, 0.55 / fig.get_figheight(), 1, 1))
    return _png(fig)


def plot_overlap(comparison: Mapping[str, Any]) -> bytes:
    """Per task, the share of questions solved by both, only A, only B and neither (stacked to 100%)."""
    tasks = comparison["tasks"]
    k = len(tasks)
    legend_height = 0.45  # inches kept below the axis label for the legend
    fig = _new_figure(8.0, max(2.2, 0.45 * k + 1.3) + legend_height)
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
            if counts[i]:  # every segment is numbered; one too narrow for its number has it just above the bar
                inside = share[i] >= 6
                ax.text(start[i] + share[i] / 2, i if inside else i - 0.42, f"{int(counts[i])}", ha="center",
                        va="center" if inside else "bottom", fontsize=_FONT - 1)
        start += share
    ax.set_yticks(y, [_label(t["name"]) for t in tasks])
    ax.tick_params(labelsize=_FONT)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_ylim(k - 0.5, -0.9)  # room above the first bar for the numbers of its narrow segments
    ax.set_xlabel("share of questions (%), counts on the segments", fontsize=_FONT)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=_FONT, frameon=False)
    ax.set_title("Which questions each model solves", fontsize=_FONT + 1)
    fig.tight_layout(rect=(0, legend_height / fig.get_figheight(), 1, 1))
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
    legend_height = 0.7  # inches kept below the plots for the legend of marker sizes and its title
    fig = _new_figure(2.6 * cols + 0.3, 2.7 * rows + 0.4 + legend_height)
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
            ax.text(0.5, 0.5, "no confidences", ha="center", va="center", fontsize=_FONT, color="#777777")
        else:
            ax.legend(loc="upper left", fontsize=_FONT - 1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=_FONT - 1)
        ece = f"ECE A {fmt_num(task.get('ece_a'))} / B {fmt_num(task.get('ece_b'))}"
        ax.set_title(f"{_label(task['name'], 24)}\n{ece}", fontsize=_FONT)
        ax.set_xlabel("confidence", fontsize=_FONT - 1)
        ax.set_ylabel("accuracy", fontsize=_FONT - 1)
    for ax in axes[k:]:
        ax.set_visible(False)
    # what a marker's size says: its bin's share of the task's questions
    sizes = [axes[0].scatter([], [], s=10 + 120 * share, color="#999999", alpha=0.6,
                             label=f"{share:.0%} of questions") for share in (0.05, 0.25, 0.5)]
    fig.legend(handles=sizes, loc="lower center", ncol=3, fontsize=_FONT - 1, frameon=False,
               title="marker area: the bin's share of questions", title_fontsize=_FONT - 1)
    fig.tight_layout(rect=(0, legend_height / fig.get_figheight(), 1, 1))
    return _png(fig)


def _global_steps(history: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float], list[float]]:
    """(steps, losses, stage starts) with each stage's steps following the last one's."""
    steps, losses, starts, offset = [], [], [], 0
    for stage in dict.fromkeys(h["stage"] for h in history):
        points = [h for h in history if h["stage"] == stage]
        starts.append(offset)
        steps += [offset + h["step"] for h in points]
        losses += [float(h["loss"]) for h in points]
        offset += points[-1]["step"]
    return steps, losses, starts


def plot_loss(history: Sequence[Mapping[str, Any]]) -> bytes:
    """The training loss per optimizer step, one line per stage, each stage's steps following the last one's."""
    fig = _new_figure(6.0, 3.5)
    ax = fig.subplots()
    offset = 0
    for stage in dict.fromkeys(h["stage"] for h in history):
        points = [h for h in history if h["stage"] == stage]
        ax.plot([offset + h["step"] for h in points], [h["loss"] for h in points], label=_label(stage))
        offset += points[-1]["step"]
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if history:
        ax.legend()
    fig.tight_layout()
    return _png(fig)


def smoothed(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """An exponential moving average with its start-up bias corrected (as TensorBoard's smoothing): the first
    points are not pulled towards zero."""
    out, average = [], 0.0
    for k, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** k))
    return out


def plot_training(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes:
    """The training loss of each side (``{"A": history, "B": history}``) per optimizer step, stages one after the
    other: each step's loss faint, a smoothed line over it, and where the second stage starts."""
    fig = _new_figure(8.0, 3.8)
    ax = fig.subplots()
    colors = {"A": _COLOR_A, "B": _COLOR_B}
    starts_drawn = False
    for side, history in curves.items():
        if not history:
            continue
        steps, losses, starts = _global_steps(history)
        color = colors.get(side, _OTHER_VERDICT)
        ax.plot(steps, losses, color=color, alpha=0.25, linewidth=0.8, label=f"{side}: each step")
        ends = [*(steps.index(next(s for s in steps if s > start)) for start in starts[1:]), len(steps)]
        begin = 0
        for end in ends:  # smoothed within each stage: a new stage starts from its own losses
            ax.plot(steps[begin:end], smoothed(losses[begin:end]), color=color, linewidth=2,
                    label=f"{side}: smoothed" if begin == 0 else None)
            begin = end
        for start in starts[1:]:
            ax.axvline(start, color=color, linestyle=":", linewidth=1,
                       label=None if starts_drawn else "a stage starts")
            starts_drawn = True
    ax.set_xlabel("optimizer step (the stages one after the other)", fontsize=_FONT)
    ax.set_ylabel("training loss", fontsize=_FONT)
    ax.tick_params(labelsize=_FONT)
    ax.legend(fontsize=_FONT - 1, ncol=2)
    ax.set_title("Training loss of each side", fontsize=_FONT + 1)
    fig.tight_layout()
    return _png(fig)
