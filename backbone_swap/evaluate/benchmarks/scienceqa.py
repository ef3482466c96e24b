"""ScienceQA as released: ``problems.json`` (question id -> problem), ``pid_splits.json`` (split -> question ids)
and the images, ``<split>/<pid>/image.png`` under the image root.

By default a task takes the questions of its split that have an image: ScienceQA-IMG, the subset LLaVA reports
(2,017 of the 4,241 test questions); ``include_text_only: true`` takes them all, the others asked without an
image. An item is multiple choice over the problem's listed choices, asked as LLaVA-1.5 asks it (lmms-eval's
``scienceqa_img`` builds the same prompt): ``Context: <hint>`` on a line of its own when the problem has a hint,
the question, one ``A. choice`` line per choice, and "Answer with the option's letter from the given choices
directly."; its options are the letters, as for MMBench (the choices' texts are kept as ``options``).

The official metrics are those of ScienceQA's ``evaluate_acc.py`` over the evaluated questions, as fractions:
``accuracy``; per subject (``accuracy_natural``, ``accuracy_social``, ``accuracy_language``); per context
(``accuracy_has_text``: a hint, ``accuracy_has_image``, ``accuracy_no_context``: neither; on the image subset
``accuracy_has_image`` is ``accuracy``, LLaVA's "IMG-Accuracy"); per grade band (``accuracy_grade_1_6``,
``accuracy_grade_7_12``). Its per-topic accuracies (26 topics) are left out. An answer is read as LLaVA's
``eval_science_qa.py`` reads it: a letter (as the likelihood of the options writes it), ``X. ...``, or "The
answer is X."; anything else counts wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.benchmarks.answers import LETTERS, lettered, mean, option_letter
from backbone_swap.evaluate.benchmarks.base import BadItem, Benchmark, Loaded, layout_error, read_json

LAYOUT = ("problems.json (pid -> question, choices, answer, hint, image, subject, grade) and pid_splits.json "
          "(split -> pids), images <split>/<pid>/image.png")
SUBJECTS = {"natural": "natural science", "social": "social science", "language": "language science"}
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def read(task: Any) -> Loaded:
    problems = read_json(task.problems, "ScienceQA", LAYOUT)
    splits = read_json(task.splits, "ScienceQA", LAYOUT)
    if not isinstance(problems, dict) or not any(isinstance(p, dict) and "choices" in p for p in problems.values()):
        raise layout_error(task.problems, "ScienceQA", LAYOUT, "no pid -> {question, choices, answer} entries")
    if not isinstance(splits, dict) or not splits or not all(isinstance(pids, list) for pids in splits.values()):
        raise layout_error(task.splits, "ScienceQA", LAYOUT, "no split -> [pid] lists")
    split = task.option("split")
    if split not in splits:
        raise BackboneSwapError(f"{task.splits} has no split {split!r}",
                                f"Give the task one of its splits: split: {' | '.join(splits)}")
    everything = bool(task.option("include_text_only"))
    pids = [str(pid) for pid in splits[split]]
    with_image = sum(1 for pid in pids if isinstance(problems.get(pid), dict) and problems[pid].get("image"))
    loaded = Loaded([], notes=[
        f"ScienceQA: all {len(pids):,} {split} questions, {with_image:,} of them with an image" if everything else
        f"ScienceQA: {with_image:,} of {len(pids):,} {split} questions have an image; the others are left out "
        "(include_text_only: true takes them too)"])
    for pid in pids:
        try:
            problem = problems.get(pid)
            if not isinstance(problem, dict):
                raise BadItem(task.problems, f"question {pid}", f"is in the {split} split but not in this file")
            if problem.get("image") or everything:
                loaded.items.append(_item(task, split, pid, problem))
        except BadItem as bad:
            loaded.bad.append(bad)
    return loaded


def _item(task: Any, split: str, pid: str, problem: dict[str, Any]) -> dict[str, Any]:
    choices, answer, question = problem.get("choices"), problem.get("answer"), problem.get("question")
    if not isinstance(question, str) or not isinstance(choices, list) or len(choices) < 2 \
            or not all(isinstance(c, str) for c in choices) or len(choices) > len(LETTERS):
        raise BadItem(task.problems, f"question {pid}", "needs a question and choices (2 or more strings)")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise BadItem(task.problems, f"question {pid}", f"needs answer, the index of the right one of its "
                                                        f"{len(choices)} choices")
    hint = problem.get("hint") or ""
    image = problem.get("image")
    return {
        "id": pid, "question": (f"Context: {hint}\n" if hint else "") + lettered(question, choices),
        "options": choices, "choices": list(LETTERS[: len(choices)]), "answer": LETTERS[answer],
        "image": f"{split}/{pid}/{image}" if image else None,
        "subject": problem.get("subject"), "grade": problem.get("grade"), "has_text": bool(hint),
    }


def answer_letter(prediction: str) -> str | None:
    """The letter LLaVA's ``eval_science_qa.py`` reads from a generated answer (None: it reads none)."""
    if prediction in LETTERS[:5]:
        return prediction
    if len(prediction) >= 3 and prediction[0] in LETTERS[:5] and prediction[1:3] == ". ":
        return prediction[0]
    found = _THE_ANSWER_IS.findall(prediction)
    return found[0] if len(found) == 1 else None


def metrics(items: Sequence[dict[str, Any]], lines: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Accuracy overall and per subject, context and grade band, as ``evaluate_acc.py`` groups the questions."""
    rows = []
    for item, line in zip(items, lines, strict=True):
        chosen = option_letter(str(line["prediction"]), len(item["choices"]), answer_letter)
        grade = str(item.get("grade") or "").removeprefix("grade")
        rows.append((item, float(chosen == item["answer"]), int(grade) if grade.isdigit() else None))
    groups = {
        "accuracy": lambda item, grade: True,
        **{f"accuracy_{name}": (lambda item, grade, s=subject: item.get("subject") == s)
           for name, subject in SUBJECTS.items()},
        "accuracy_has_text": lambda item, grade: item["has_text"],
        "accuracy_has_image": lambda item, grade: item["image"] is not None,
        "accuracy_no_context": lambda item, grade: not item["has_text"] and item["image"] is None,
        "accuracy_grade_1_6": lambda item, grade: grade is not None and 1 <= grade <= 6,
        "accuracy_grade_7_12": lambda item, grade: grade is not None and 7 <= grade <= 12,
    }
    return {name: mean([score for item, score, grade in rows if belongs(item, grade)])
            for name, belongs in groups.items()}


SCIENCEQA = Benchmark("scienceqa", "multiple_choice", "reasoning", files=("problems", "splits", "image_root"),
                      options={"split": "test", "include_text_only": False}, layout=LAYOUT, reader=read,
                      metrics=metrics)
