"""MME as released: ``MME_Benchmark_release_version/``, one folder per subtask, two yes/no questions per image.

A subtask folder holds its images with ``<stem>.txt`` beside each (existence, count, OCR...), or ``images/`` and
``questions_answers_YN/`` (artwork, celebrity, landmark, posters, scene); each line of a ``.txt`` is
``question<TAB>Yes`` or ``question<TAB>No``. An item's id is ``<subtask>/<image file>#<line>``
(``existence/000000006040.jpg#1``): the part before ``#`` is the question_id lmms-eval gives both questions of the
image, and the line number keeps them apart and stable.

Answers are read by MME's own rule (``yes_no.mme_answer``: yes, no or other). The official metrics are
``eval_tool/calculation.py``'s: per subtask, acc (the share of questions right) and acc+ (the share of images with
both questions right), both as fractions here, a subtask's score being 100 x (acc + acc+); ``perception`` is the sum
of the scores of its 10 subtasks (at most 2000) and ``cognition`` of its 4 (at most 800), the split being
calculation.py's. A folder without some subtasks sums those present (``suite show`` says which are missing).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.benchmarks.base import BadItem, Benchmark, Loaded, layout_error
from backbone_swap.evaluate.yes_no import mme_answer

LAYOUT = ("MME_Benchmark_release_version/<subtask>/ holding <image>.jpg|png with <image>.txt beside each, or "
          "images/ and questions_answers_YN/; each line 'question<TAB>Yes|No'")
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


def read(task: Any) -> Loaded:
    root: Path = task.root
    if not root.is_dir():
        raise BackboneSwapError(f"{root} is not a folder (MME: {LAYOUT})",
                                "Point the task's root at the MME_Benchmark_release_version folder as released")
    folders = {path.name: path for path in root.iterdir() if path.is_dir()}
    present = [name for name in SUBTASKS if name in folders]
    if not present:
        raise layout_error(root, "MME", LAYOUT, "no subtask folder such as existence or OCR")
    loaded = Loaded([])
    absent = [name for name in SUBTASKS if name not in folders]
    if absent:
        loaded.notes.append(f"MME: {len(absent)} of its 14 subtasks are not in {root} ({', '.join(absent)}); "
                            "perception and cognition sum the scores of those present")
    for subtask in present:
        _read_subtask(subtask, folders[subtask], root, loaded)
    return loaded


def _read_subtask(subtask: str, folder: Path, root: Path, loaded: Loaded) -> None:
    questions, images = ((folder / "questions_answers_YN", folder / "images")
                         if (folder / "questions_answers_YN").is_dir() else (folder, folder))
    files = sorted(questions.glob("*.txt"))
    if not files:
        raise layout_error(folder, "MME", LAYOUT, "no .txt files of questions")
    for txt in files:
        image = next((images / (txt.stem + suffix) for suffix in _IMAGE_SUFFIXES
                      if (images / (txt.stem + suffix)).is_file()), None)
        if image is None:
            loaded.bad.append(BadItem(txt, f"{subtask}/{txt.stem}",
                                      f"its image {txt.stem}.jpg or .png is missing from {images}"))
            continue
        key = f"{subtask}/{image.name}"
        try:
            text = txt.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            loaded.bad.append(BadItem(txt, key, "is not UTF-8 text"))
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            question, _, answer = line.partition("\t")
            if not question.strip() or answer.strip().lower() not in ("yes", "no"):
                loaded.bad.append(BadItem(txt, f"{key}#{number}", f"line {number} is not 'question<TAB>Yes|No'"))
                continue
            loaded.items.append({"id": f"{key}#{number}", "question": question.strip(), "answer": answer.strip(),
                                 "image": image.relative_to(root).as_posix(), "subtask": subtask})


def metrics(items: Sequence[dict[str, Any]], lines: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """calculation.py's numbers from the raw answers: per subtask acc and acc+, and the two sums of scores."""
    right: dict[str, dict[str, list[bool]]] = {}  # subtask -> image -> its questions, right or not
    for item, line in zip(items, lines, strict=True):
        correct = mme_answer(str(line["prediction"])) == str(item["answer"]).strip().lower()
        right.setdefault(item["subtask"], {}).setdefault(item["image"], []).append(correct)
    found: dict[str, float | None] = {}
    scores = {}
    for subtask in SUBTASKS:
        images = right.get(subtask)
        if not images:
            continue
        answers = [correct for image in images.values() for correct in image]
        acc, acc_plus = sum(answers) / len(answers), sum(all(image) for image in images.values()) / len(images)
        found[f"{subtask}_acc"], found[f"{subtask}_acc_plus"] = acc, acc_plus
        scores[subtask] = 100 * (acc + acc_plus)
    totals = {name: [scores[s] for s in group if s in scores]
              for name, group in (("perception", PERCEPTION), ("cognition", COGNITION))}
    return {name: sum(values) if values else None for name, values in totals.items()} | found


MME = Benchmark("mme", "yes_no", "perception", files=("root",), layout=LAYOUT, reader=read, metrics=metrics,
                read_yes_no=mme_answer)
