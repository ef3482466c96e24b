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
_DPI = 100


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
