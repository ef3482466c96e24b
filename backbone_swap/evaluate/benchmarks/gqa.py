"""GQA as released: a questions file (``testdev_balanced_questions.json``: question id -> question) and the
images named by their ``imageId``.

An item is scored as a short answer with one reference (exact match after the VQA normalisation). The official
metrics are those of GQA's ``eval.py`` on predictions converted as LLaVA's ``convert_gqa_for_eval.py`` converts
them (trailing periods stripped, lowercased), then compared with the answer exactly: stricter than the item's
score, which also forgives articles, number words and punctuation. As ``eval.py`` does, they cover the balanced
questions only (``isBalanced``; every question of the balanced files is):

- ``accuracy``; ``binary`` and ``open`` (open: structural type ``query``; binary: the rest);
- ``consistency``: for each question answered right, the accuracy on the questions it entails (``entailed``),
  averaged; entailed questions that were not evaluated are left out (``eval.py`` needs all of them);
- ``accuracy_structural_<type>`` and ``accuracy_semantic_<type>``: per question type (``types``).

``validity`` and ``plausibility`` need GQA's choices file and ``grounding`` a model's attention, so they are not
computed; nor is ``distribution``, whose lower is better.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backbone_swap.evaluate.benchmarks.answers import mean
from backbone_swap.evaluate.benchmarks.base import BadItem, Benchmark, Loaded, layout_error, read_json

LAYOUT = ("<split>_questions.json (question id -> {imageId, question, answer, types, isBalanced, entailed}), "
          "images <imageId>.jpg")


def read(task: Any) -> Loaded:
    released = read_json(task.questions, "GQA", LAYOUT)
    if not isinstance(released, dict) or not any(isinstance(q, dict) and "imageId" in q for q in released.values()):
        raise layout_error(task.questions, "GQA", LAYOUT, "no question id -> {imageId, question, answer} entries")
    loaded = Loaded([])
    for qid, question in released.items():
        try:
            if not isinstance(question, dict) or not isinstance(question.get("imageId"), str) \
                    or not isinstance(question.get("question"), str):
                raise BadItem(task.questions, f"question {qid}", "needs imageId and question")
            if not isinstance(question.get("answer"), str):
                raise BadItem(task.questions, f"question {qid}", "has no answer (those of the test and challenge "
                                                                 "splits are not released)")
            types = question.get("types") if isinstance(question.get("types"), dict) else {}
            entailed = question.get("entailed") if isinstance(question.get("entailed"), list) else []
            loaded.items.append({
                "id": str(qid), "question": question["question"], "answer": question["answer"],
                "image": f"{question['imageId']}.jpg", "balanced": question.get("isBalanced", True) is not False,
                "structural": types.get("structural"), "semantic": types.get("semantic"),
                "entailed": [str(e) for e in entailed if str(e) != str(qid)],
            })
        except BadItem as bad:
            loaded.bad.append(bad)
    return loaded


def as_submitted(prediction: str) -> str:
    """A prediction as LLaVA submits it to GQA's evaluation: trailing periods stripped, lowercased."""
    return prediction.rstrip(".").lower()


def metrics(items: Sequence[dict[str, Any]], lines: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """GQA's ``eval.py`` metrics over the balanced questions, as fractions (``eval.py`` prints percentages)."""
    right = {str(item["id"]): float(as_submitted(str(line["prediction"])) == item["answer"])
             for item, line in zip(items, lines, strict=True)}
    balanced = [item for item in items if item.get("balanced", True)]
    groups: dict[str, list[float]] = {"accuracy": [], "binary": [], "open": []}
    consistency = []
    for item in balanced:
        score = right[str(item["id"])]
        groups["accuracy"].append(score)
        groups["open" if item.get("structural") == "query" else "binary"].append(score)
        for kind in ("structural", "semantic"):
            if item.get(kind) is not None:
                groups.setdefault(f"accuracy_{kind}_{item[kind]}", []).append(score)
        entailed = [right[e] for e in item.get("entailed", []) if e in right]
        if score and entailed:
            consistency.append(mean(entailed))
    found = {name: mean(groups.pop(name)) for name in ("accuracy", "binary", "open")}
    found["consistency"] = mean(consistency)
    return found | {name: mean(groups[name]) for name in sorted(groups)}


GQA = Benchmark("gqa", "short_answer", "reasoning", files=("questions", "image_root"), layout=LAYOUT, reader=read,
                metrics=metrics)
