"""VQAv2 as released: a questions file and an annotations file (10 answers a question), COCO images.

Scored as the official ``vqaEval.py`` scores a prediction already normalised by the EvalAI answer processor (as
LLaVA's and lmms-eval's pipelines submit them): the mean over the ten leave-one-annotator-out subsets of
min(1, matches / 3). The official metrics are that accuracy overall and per answer type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backbone_swap.evaluate.benchmarks.base import BadItem, Benchmark, Loaded, layout_error, read_json

LAYOUT = ("v2_OpenEnded_mscoco_<subtype>_questions.json (questions[]: image_id, question, question_id) and "
          "v2_mscoco_<subtype>_annotations.json (annotations[]: question_id, answers[10], answer_type)")


def read(task: Any) -> Loaded:
    questions = read_json(task.questions, "VQAv2", LAYOUT)
    annotations = read_json(task.annotations, "VQAv2", LAYOUT)
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise layout_error(task.questions, "VQAv2", LAYOUT, "no questions[] list")
    if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
        raise layout_error(task.annotations, "VQAv2", LAYOUT, "no annotations[] list")
    subtype = questions.get("data_subtype")
    if not isinstance(subtype, str) or not subtype:
        raise layout_error(task.questions, "VQAv2", LAYOUT, "no data_subtype naming the images, e.g. val2014")
    by_id = {}
    for annotation in annotations["annotations"]:
        if isinstance(annotation, dict) and "question_id" in annotation:
            by_id[str(annotation["question_id"])] = annotation
    loaded = Loaded([])
    for number, question in enumerate(questions["questions"], start=1):
        try:
            if not isinstance(question, dict) or not {"question_id", "question", "image_id"} <= set(question):
                raise BadItem(task.questions, f"question number {number}", "needs question_id, question and image_id")
            qid = str(question["question_id"])
            annotation = by_id.get(qid)
            if annotation is None:
                raise BadItem(task.annotations, f"question {qid}", "has no annotation (are both files of one split?)")
            answers = [a.get("answer") for a in annotation.get("answers") or [] if isinstance(a, dict)]
            if not answers or not all(isinstance(a, str) for a in answers):
                raise BadItem(task.annotations, f"question {qid}", "has no answers[] with an answer each")
            loaded.items.append({
                "id": qid, "question": question["question"], "answer": answers,
                "image": f"COCO_{subtype}_{int(question['image_id']):012d}.jpg",
                "answer_type": annotation.get("answer_type", "other"),
            })
        except BadItem as bad:
            loaded.bad.append(bad)
    return loaded


def metrics(items: Sequence[dict[str, Any]], lines: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Accuracy overall and per answer type (yes/no, number, other), as fractions."""
    scores: dict[str, list[float]] = {}
    for item, line in zip(items, lines, strict=True):
        scores.setdefault(str(item.get("answer_type", "other")), []).append(float(line["score"]))
    every = [s for group in scores.values() for s in group]
    found = {"accuracy": sum(every) / len(every) if every else None}
    for kind in ("yes/no", "number", "other"):
        group = scores.get(kind, [])
        found[f"accuracy_{kind}"] = sum(group) / len(group) if group else None
    return found


VQAV2 = Benchmark("vqav2", "short_answer", "perception", files=("questions", "annotations", "image_root"),
                  layout=LAYOUT, reader=read, metrics=metrics)
