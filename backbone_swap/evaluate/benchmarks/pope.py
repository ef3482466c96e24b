"""POPE as released: ``coco_pope_{random,popular,adversarial}.json``, one JSON object per line despite the name
(``question_id``, ``image``, ``text``, ``label`` yes/no), the images COCO val2014's.

One file is one of POPE's three negative-sampling settings, and POPE reports each setting on its own: give each file
its own task. The question is the file's ``text`` as released (LLaVA's evaluation appends "Answer the question
using a single word or phrase."; a task's ``instruction`` adds such a sentence).

Answers are read as yes or no by LLaVA's ``eval_pope.py`` rule (``yes_no.pope_answer``), and the official metrics
are that script's: accuracy, and precision, recall and F1 of "yes" as the positive class, and the share of answers
read as yes. Where that script would divide by zero (no answer read as yes: no precision) the metric is None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backbone_swap.evaluate.benchmarks.base import BadItem, Benchmark, Loaded, layout_error, read_json_lines
from backbone_swap.evaluate.yes_no import pope_answer

LAYOUT = "coco_pope_<setting>.json: one JSON object per line with question_id, image, text and label (yes/no)"
_KEYS = ("question_id", "image", "text", "label")


def read(task: Any) -> Loaded:
    records = read_json_lines(task.data, "POPE", LAYOUT)
    if records and not (isinstance(records[0][1], dict) and {"question_id", "text"} <= set(records[0][1])):
        found = "a JSON list" if isinstance(records[0][1], list) else "no question_id and text on its first line"
        raise layout_error(task.data, "POPE", LAYOUT, found)
    loaded = Loaded([])
    for number, record in records:
        missing = [key for key in _KEYS if not isinstance(record, dict) or key not in record]
        if missing:
            qid = record.get("question_id") if isinstance(record, dict) else None
            where = f"question {qid}" if qid is not None else f"line {number}"
            loaded.bad.append(BadItem(task.data, where, f"has no {', '.join(missing)}"))
            continue
        loaded.items.append({"id": str(record["question_id"]), "question": record["text"],
                             "answer": record["label"], "image": record["image"]})
    return loaded


def metrics(items: Sequence[dict[str, Any]], lines: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """eval_pope.py's numbers from the raw answers: a label other than "no" counts as yes, as it does there."""
    tp = fp = tn = fn = 0
    for item, line in zip(items, lines, strict=True):
        said_yes = pope_answer(str(line["prediction"])) == "yes"
        is_yes = str(item["answer"]).strip().lower() != "no"
        tp, fp = tp + (said_yes and is_yes), fp + (said_yes and not is_yes)
        tn, fn = tn + (not said_yes and not is_yes), fn + (not said_yes and is_yes)
    total = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall else None)
    return {"accuracy": (tp + tn) / total if total else None, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / total if total else None}


POPE = Benchmark("pope", "yes_no", "perception", files=("data", "image_root"), layout=LAYOUT, reader=read,
                 metrics=metrics, read_yes_no=pope_answer)
