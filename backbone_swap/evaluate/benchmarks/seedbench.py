"""SEED-Bench (v1) as released: ``SEED-Bench.json`` (``questions[]`` and ``question_type``: name -> id) and the
image folder (``SEED-Bench-image``), whose files are named by the questions' ``data_id``.

A task takes the image questions (``data_type`` image, dimensions 1-9) and leaves the video ones out, with a note
counting them. An item is multiple choice over ``choice_a``..``choice_d``, asked as LLaVA-1.5 and lmms-eval's
``seedbench`` task ask it: the question, ``A. choice`` lines, and "Answer with the option's letter from the given
choices directly."; its options are the letters, ranked by their likelihood as for MMBench (the choices' texts
are kept as ``options``). SEED-Bench's own evaluation ranks the choices' texts by their likelihood instead.

The official metrics are those of LLaVA's ``convert_seed_for_submission.py`` for the image questions, as
fractions: ``accuracy`` over all of them, and ``accuracy_<question type>`` per evaluation dimension (named as the
file's ``question_type`` names them). An answer counts when it is the right letter or, for a generated answer,
when its first letter is the right one (lmms-eval's reading).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backbone_swap.evaluate.benchmarks.answers import LETTERS, lettered, mean, option_letter
from backbone_swap.evaluate.benchmarks.base import BadItem, Benchmark, Loaded, layout_error, read_json

LAYOUT = ("SEED-Bench.json (questions[]: question_id, question, choice_a..choice_d, answer, data_id, data_type, "
          "question_type_id), images <data_id> under image_root")
KEYS = ("choice_a", "choice_b", "choice_c", "choice_d")


def read(task: Any) -> Loaded:
    released = read_json(task.data, "SEED-Bench", LAYOUT)
    questions = released.get("questions") if isinstance(released, dict) else None
    if not isinstance(questions, list) or not any(isinstance(q, dict) and "choice_a" in q for q in questions):
        raise layout_error(task.data, "SEED-Bench", LAYOUT, "no questions[] with choice_a..choice_d")
    names = released.get("question_type") if isinstance(released.get("question_type"), dict) else {}
    type_names = {str(number): str(name) for name, number in names.items()}
    images = [q for q in questions if isinstance(q, dict) and q.get("data_type") == "image"]
    loaded = Loaded([], notes=[f"SEED-Bench: {len(images):,} of {len(questions):,} questions are on an image; the "
                               "others (video) are left out"])
    for number, question in enumerate(questions, start=1):
        try:
            if not isinstance(question, dict) or not {"question_id", "question", "data_id", *KEYS} <= set(question):
                raise BadItem(task.data, f"question number {number}", "needs question_id, question, data_id and "
                                                                      "choice_a..choice_d")
            if question.get("data_type") != "image":
                continue
            loaded.items.append(_item(task, question))
        except BadItem as bad:
            loaded.bad.append(bad)
    for item in loaded.items:  # the dimension's name where the file names it, else its number
        if item["question_type"] is not None:
            item["question_type"] = type_names.get(item["question_type"], item["question_type"])
    return loaded


def _item(task: Any, question: dict[str, Any]) -> dict[str, Any]:
    qid = str(question["question_id"])
    choices = [question[key] for key in KEYS]
    if not all(isinstance(choice, str) for choice in choices) or not isinstance(question["question"], str):
        raise BadItem(task.data, f"question {qid}", "needs a question and four choices as text")
    if question.get("answer") not in LETTERS[:4]:
        raise BadItem(task.data, f"question {qid}", "needs answer, one of A, B, C, D")
    return {"id": qid, "question": lettered(question["question"], choices), "options": choices,
            "choices": list(LETTERS[:4]), "answer": question["answer"],
            "image": _image_name(Path(task.image_root), str(question["data_id"])),
            "question_type": None if question.get("question_type_id") is None else str(question["question_type_id"])}


def _image_name(root: Path, data_id: str) -> str:
    """The image file of a question: named ``data_id`` as released, or with ``.jpg`` added where it is so."""
    if not (root / data_id).is_file() and (root / f"{data_id}.jpg").is_file():
        return f"{data_id}.jpg"
    return data_id


def first_letter(prediction: str) -> str | None:
    """The letter lmms-eval reads from a generated answer: its first character."""
    text = prediction.strip()
    return text[0].upper() if text else None


def metrics(items: Sequence[dict[str, Any]], lines: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Accuracy over the image questions and per question type."""
    every: list[float] = []
    per_type: dict[str, list[float]] = {}
    for item, line in zip(items, lines, strict=True):
        chosen = option_letter(str(line["prediction"]), len(item["choices"]), first_letter)
        every.append(float(chosen == item["answer"]))
        if item.get("question_type") is not None:
            per_type.setdefault(item["question_type"], []).append(every[-1])
    return {"accuracy": mean(every)} | {f"accuracy_{kind}": mean(per_type[kind]) for kind in sorted(per_type)}


SEEDBENCH = Benchmark("seedbench", "multiple_choice", "perception", files=("data", "image_root"), layout=LAYOUT,
                      reader=read, metrics=metrics)
