"""MMBench as released: one TSV (``MMBench_DEV_EN.tsv``...) with ``index``, ``question``, ``hint``, options ``A``-``D``
(2 to 4 present), ``answer`` (a letter), ``category``, ``l2-category``, ``split`` and ``image`` (base64; a value of
64 characters or fewer names the ``index`` of the row holding the image, as VLMEvalKit's files do to save space).

Prompt: LLaVA's (``model_vqa_mmbench.py``): the hint, if any, on a line before the question, then one line per
option (``A. cat``), then "Answer with the option's letter from the given choices directly."; the options are
the letters, scored by their likelihood as every multiple-choice task is. Item ids are the file's ``index``.

CircularEval (``circular: true``), as VLMEvalKit and lmms-eval score MMBench: each question is asked once per
rotation of its options, and is right only if every rotation is. A file that already holds the rotations (rows
whose index is the question's plus k x 1,000,000, as the released dev files do) is asked as it is; otherwise the
rotations are made here as LLaVA's ``--all-rounds`` makes them (options shifted left by k, the letters staying in
order), with the same ids: ``index + k x 1000000``, so ``index % 1000000`` is always the question's index. Every
rotation has ``group``, the question's index; ``compare`` collapses a group into one question before the paired
statistics. Without ``circular``, only the questions themselves (index below 1,000,000) are asked.

The official metrics are the accuracy over questions (CircularEval's when circular) overall and per ``category``
and ``l2-category`` (``category/<name>``, ``l2-category/<name>``; a row without one is "uncategorized").
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from typing import Any

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.benchmarks.base import BadItem, Benchmark, Loaded, layout_error

LAYOUT = "a TSV with columns index, question, hint, A, B, C, D, answer, category, l2-category, image (base64), split"
LETTERS = ("A", "B", "C", "D")
ROTATION = 1_000_000  # VLMEvalKit's offset between a question's index and its rotations'
INSTRUCTION = "Answer with the option's letter from the given choices directly."
_REQUIRED = ("index", "question", "A", "B", "image")


def _none(value: Any) -> bool:
    """An empty cell as the official readers see one (pandas' NaN, or "nan"/"none" as LLaVA's is_none)."""
    return value is None or str(value).strip().lower() in ("", "nan", "none")


def _rows(task: Any) -> list[tuple[int, dict[str, str]]]:
    """(line, row) of the TSV. A base64 image is megabytes in one cell: past csv's field limit."""
    path = task.data
    if not path.is_file():
        raise BackboneSwapError(f"{path} does not exist (MMBench: {LAYOUT})",
                                "Point the suite's key at the file as released")
    previous = csv.field_size_limit(2**31 - 1)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            # column names as VLMEvalKit reads them: lower case but for the options (lmms-eval's "L2-category")
            header = [name if name in LETTERS else name.lower() for name in reader.fieldnames or []]
            reader.fieldnames = header
            rows = []
            if all(column in header for column in _REQUIRED):
                for row in reader:
                    rows.append((reader.line_num, row))
    except (UnicodeDecodeError, csv.Error) as e:
        raise BackboneSwapError(f"{path} is not the TSV MMBench releases ({e.__class__.__name__}: {e})",
                                f"Point the suite's key at {LAYOUT}") from None
    finally:
        csv.field_size_limit(previous)
    missing = [column for column in _REQUIRED if column not in header]
    if missing:
        raise layout_error(path, "MMBench", LAYOUT, f"no column {', '.join(missing)}")
    if "answer" not in header:
        raise layout_error(path, "MMBench", LAYOUT, "no answer column: a test split, whose answers are withheld; "
                           "use the dev split")
    return rows


def read(task: Any) -> Loaded:
    rows = _rows(task)
    loaded = Loaded([])
    by_index: dict[int, dict[str, str]] = {}
    for line, row in rows:
        try:
            index = int(str(row["index"]).strip())
        except ValueError:
            loaded.bad.append(BadItem(task.data, f"line {line}", f"index {row['index']!r} is not an integer"))
            continue
        if index in by_index:
            loaded.bad.append(BadItem(task.data, f"index {index}", "repeats the index of an earlier row"))
            continue
        by_index[index] = row
    circular = bool(task.option("circular"))
    copies: dict[int, list[int]] = {}
    for index in by_index:
        if index >= ROTATION:
            copies.setdefault(index % ROTATION, []).append(index)
    for question in sorted(i for i in copies if i not in by_index):
        loaded.bad.extend(BadItem(task.data, f"index {index}", f"is a rotation of question {question}, which the "
                                  "file does not hold") for index in copies[question])
    if copies and not circular:
        loaded.notes.append(f"MMBench: {sum(map(len, copies.values()))} rotations (index >= {ROTATION}) in "
                            f"{task.data.name} left out: the task is not circular")
    for index in sorted(i for i in by_index if i < ROTATION):
        try:
            item = _item(task, index, by_index)
        except BadItem as bad:
            loaded.bad.append(bad)
            continue
        if not circular:
            loaded.items.append(item)
            continue
        group = {"group": str(index)}
        if copies.get(index):  # the file's own rotations, as released
            loaded.items.append(item | group)
            for copy in sorted(copies[index]):
                try:
                    loaded.items.append(_item(task, copy, by_index) | group)
                except BadItem as bad:
                    loaded.bad.append(bad)
        else:
            loaded.items.extend(rotation | group for rotation in rotations(item))
    return loaded


def _item(task: Any, index: int, by_index: dict[int, dict[str, str]]) -> dict[str, Any]:
    row = by_index[index]
    options = []
    for letter in LETTERS:  # the options present, up to the first empty one (LLaVA's get_options)
        if letter not in row or _none(row[letter]):
            break
        options.append(str(row[letter]).strip())
    if len(options) < 2:
        raise BadItem(task.data, f"index {index}", "has fewer than 2 options (A, B...)")
    answer = str(row.get("answer") or "").strip()
    if answer not in LETTERS[: len(options)]:
        raise BadItem(task.data, f"index {index}", f"answer {answer!r} is not one of its options' letters "
                      f"({', '.join(LETTERS[: len(options)])})")
    image = str(row.get("image") or "").strip()
    if len(image) <= 64 and image.isdigit() and int(image) in by_index:  # names the row that holds the image
        image = str(by_index[int(image)].get("image") or "").strip()
    if len(image) <= 64:
        raise BadItem(task.data, f"index {index}", "has no base64 image" + (f" (its image is {image!r})" if image
                                                                            else ""))
    hint = None if _none(row.get("hint")) else str(row["hint"]).strip()
    return {"id": str(index), "index": index, "question_text": str(row["question"]).strip(), "hint": hint,
            "options": options, "question": prompt(str(row["question"]).strip(), hint, options),
            "choices": list(LETTERS[: len(options)]), "answer": answer, "image_data": image,
            "category": _label(row.get("category")), "l2-category": _label(row.get("l2-category"))}


def _label(value: Any) -> str:
    return "uncategorized" if _none(value) else str(value).strip()


def prompt(question: str, hint: str | None, options: Sequence[str]) -> str:
    """LLaVA's MMBench prompt: hint, question, one line per option, the instruction to answer with its letter."""
    lines = ([hint] if hint else []) + [question]
    lines += [f"{letter}. {option}" for letter, option in zip(LETTERS[: len(options)], options, strict=True)]
    return "\n".join(lines + [INSTRUCTION])


def rotations(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The question and its rotations: rotation k lists the options shifted left by k (LLaVA's ``--all-rounds``),
    so the answer's letter moves with its option; ids ``index + k x 1000000``, the question itself first."""
    options, answer = item["options"], LETTERS.index(item["answer"])
    found = []
    for k in range(len(options)):
        shifted = options[k:] + options[:k]
        found.append(item | {"id": str(item["index"] + k * ROTATION), "options": shifted,
                             "question": prompt(item["question_text"], item["hint"], shifted),
                             "answer": LETTERS[(answer - k) % len(options)]})
    return found


def metrics(items: Sequence[dict[str, Any]], lines: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Accuracy over questions: a question of several rotations (one ``group``) is right only if every one is
    (CircularEval); overall and per category and l2-category."""
    hits: dict[str, bool] = {}
    labels: dict[str, tuple[str, str]] = {}
    for item, line in zip(items, lines, strict=True):
        question = str(item.get("group", item["id"]))
        hits[question] = hits.get(question, True) and bool(line["correct"])
        labels.setdefault(question, (item.get("category", "uncategorized"), item.get("l2-category", "uncategorized")))
    found: dict[str, float | None] = {"accuracy": sum(hits.values()) / len(hits) if hits else None}
    for level, column in ((0, "category"), (1, "l2-category")):
        for name in sorted({label[level] for label in labels.values()}):
            group = [hits[q] for q in hits if labels[q][level] == name]
            found[f"{column}/{name}"] = sum(group) / len(group)
    return found


MMBENCH = Benchmark("mmbench", "multiple_choice", "reasoning", files=("data",), options={"circular": False},
                    layout=LAYOUT, reader=read, metrics=metrics)
