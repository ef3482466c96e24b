"""TextVQA as released: one JSON file (``TextVQA_0.5.1_val.json``) and the images named by their id.

TextVQA is the suite's OCR task: its questions can only be answered by reading text in the image. The suite's
``needs`` has no OCR value, so it defaults to perception.

Every question has ten annotators' answers. The official accuracy is the m4c evaluator's (LLaVA's
``m4c_evaluator.py``, the same as lmms-eval's ``textvqa_val``): prediction and answers through the EvalAI answer
processor, then the mean over the ten leave-one-annotator-out subsets of min(1, matches / 3). The processor also
drops commas and question marks and splits off "'s", which the item's VQAv2 score does not, so the two can differ
on answers such as "coca-cola's". The released val images sit in ``train_images/`` (val is part of the train
images); the test split's answers are not released, so its questions cannot be scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backbone_swap.evaluate.benchmarks.answers import mean, vqa_accuracy
from backbone_swap.evaluate.benchmarks.base import BadItem, Benchmark, Loaded, layout_error, read_json

LAYOUT = "TextVQA_0.5.1_<split>.json (data[]: question_id, question, image_id, answers[10]), images <image_id>.jpg"
ANSWERS = 10


def read(task: Any) -> Loaded:
    released = read_json(task.data, "TextVQA", LAYOUT)
    if not isinstance(released, dict) or not isinstance(released.get("data"), list):
        raise layout_error(task.data, "TextVQA", LAYOUT, "no data[] list")
    loaded = Loaded([])
    for number, record in enumerate(released["data"], start=1):
        try:
            if not isinstance(record, dict) or not {"question_id", "question", "image_id"} <= set(record):
                raise BadItem(task.data, f"record number {number}", "needs question_id, question and image_id")
            qid = str(record["question_id"])
            answers = record.get("answers")
            if answers is None:
                raise BadItem(task.data, f"question {qid}", "has no answers (those of the test split are not "
                                                            "released)")
            if not isinstance(answers, list) or len(answers) != ANSWERS or not all(isinstance(a, str) for a in answers):
                raise BadItem(task.data, f"question {qid}", f"needs answers[] of {ANSWERS} strings, as TextVQA "
                                                            "releases them")
            loaded.items.append({"id": qid, "question": record["question"], "answer": answers,
                                 "image": f"{record['image_id']}.jpg"})
        except BadItem as bad:
            loaded.bad.append(bad)
    return loaded


def metrics(items: Sequence[dict[str, Any]], lines: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Accuracy as the m4c evaluator computes it from the raw predictions, as a fraction."""
    return {"accuracy": mean([vqa_accuracy(str(line["prediction"]), item["answer"])
                              for item, line in zip(items, lines, strict=True)])}


TEXTVQA = Benchmark("textvqa", "short_answer", "perception", files=("data", "image_root"), layout=LAYOUT,
                    reader=read, metrics=metrics)
