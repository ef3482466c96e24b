"""``backbone-swap suite show``: what each task of a suite would evaluate, before any model is loaded.

Every task is read as ``eval`` reads it (``suite.inspect_items``: the benchmark's release files or the task's data
file, each item checked), but items that cannot be used never stop it: they are counted, the first few named, so
one look says how many items each task has, whether their images are there and what the readers left out (the
notes, e.g. ScienceQA's questions without an image). A task whose files cannot be read at all (missing, or in
another benchmark's layout) is reported with its error, and the others still are.
"""

from __future__ import annotations

from typing import Any

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.suite import PATH_KEYS, MissingImage, Suite, Task, inspect_items, without_image

EXAMPLES = 3  # bad items named per task


def describe_suite(suite: Suite) -> list[dict[str, Any]]:
    """One summary per task (``describe_task``), in the suite's order."""
    return [describe_task(task) for task in suite.tasks]


def describe_task(task: Task) -> dict[str, Any]:
    """A task's source and counts: ``n`` usable items; of those, ``images_found`` and ``without_image``
    (questions asked without one); ``images_missing`` (items whose image file is not there: bad items of a
    benchmark, items of a data file that ``eval`` would stop at); ``bad`` (items that cannot be used, skipped
    under ``--on-bad-sample skip``) with ``bad_examples``; the reader's ``notes``; ``error`` when the task's files
    cannot be read at all."""
    summary: dict[str, Any] = {
        "name": task.name, "benchmark": task.benchmark,
        "files": {key: str(getattr(task, key)) for key in PATH_KEYS if getattr(task, key) is not None},
        "type": task.type, "needs": task.needs, "n": 0, "images_found": 0, "images_missing": 0, "without_image": 0,
        "bad": 0, "bad_examples": [], "notes": [], "error": None, "hint": None,
    }
    try:
        loaded = inspect_items(task)
    except BackboneSwapError as e:
        return summary | {"error": e.message, "hint": e.hint or None}
    states = [_image_state(task, item) for item in loaded.items]
    return summary | {
        "n": len(loaded.items), "images_found": states.count("found"), "without_image": states.count("none"),
        "images_missing": states.count("missing") + sum(isinstance(bad, MissingImage) for bad in loaded.bad),
        "bad": len(loaded.bad), "bad_examples": [bad.describe() for bad in loaded.bad[:EXAMPLES]],
        "notes": list(loaded.notes),
    }


def _image_state(task: Task, item: dict[str, Any]) -> str:
    """found, missing, or none (a question asked without an image), as ``eval`` would find its image."""
    from backbone_swap.training.data import _Bad, resolve_image

    if "image_data" in item:  # a decoded base64 image (checked while reading)
        return "found"
    if without_image(item):
        return "none"
    try:
        resolve_image(item.get("image"), task.image_root)
    except _Bad:
        return "missing"
    return "found"


def print_suite(name: str, tasks: list[dict[str, Any]]) -> None:
    """The summaries as a table (80 columns wide), then each task's notes, bad items and error in words."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(title=f"suite {name}", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  collapse_padding=True)
    for column in ("task", "source"):  # names and file names wrap where the table is too wide, types do not
        table.add_column(column, overflow="fold")
    for column in ("type", "needs"):
        table.add_column(column, no_wrap=True)
    for column in ("items", "images", "missing", "bad"):
        table.add_column(column, justify="right")
    for task in tasks:
        source = task["benchmark"] or task["files"].get("data", "").rsplit("/", 1)[-1]
        counts = ("-",) * 4 if task["error"] else tuple(
            f"{task[key]:,}" for key in ("n", "images_found", "images_missing", "bad"))
        table.add_row(task["name"], source, task["type"], task["needs"], *counts)
    console.print(table)
    for task in tasks:
        lines = list(task["notes"])
        if task["without_image"]:
            lines.append(f"asked without an image: {task['without_image']:,} of its {task['n']:,} items")
        if task["error"]:
            lines.append(f"cannot be read: {task['error']}")
        if task["bad"]:
            more = f" (and {task['bad'] - len(task['bad_examples'])} more)" if task["bad"] > EXAMPLES else ""
            lines += [f"bad: {example}" for example in task["bad_examples"]]
            lines[-1] += more
        for line in lines:
            console.print(f"{task['name']}: {line}", markup=False)
