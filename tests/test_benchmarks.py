"""Benchmarks read from files in their official release layouts, built here in miniature."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.benchmarks import BENCHMARKS
from backbone_swap.evaluate.suite import load_items, load_suite
from backbone_swap.evaluate.tasks import TYPES


def _image(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), colour).save(path)


def _suite(folder: Path, task: str) -> Path:
    (folder / "suite.yaml").write_text(f"tasks:\n  - {task}\n")
    return folder / "suite.yaml"


@pytest.fixture
def vqav2(tmp_path: Path) -> Path:
    """Three questions on two COCO images, as VQAv2's val2014 files lay them out."""
    questions = {"data_subtype": "val2014", "task_type": "OpenEnded", "questions": [
        {"image_id": 42, "question": "What colour is it?", "question_id": 420},
        {"image_id": 42, "question": "How many shapes?", "question_id": 421},
        {"image_id": 7, "question": "Is it round?", "question_id": 70},
    ]}
    answers = {420: ["red"] * 9 + ["dark red"], 421: ["1"] * 2 + ["one shape"] * 8, 70: ["no"] * 10}
    kinds = {420: "other", 421: "number", 70: "yes/no"}
    annotations = {"annotations": [
        {"question_id": qid, "image_id": 42 if qid != 70 else 7, "answer_type": kinds[qid],
         "multiple_choice_answer": words[0],
         "answers": [{"answer": word, "answer_confidence": "yes", "answer_id": i + 1} for i, word in enumerate(words)]}
        for qid, words in answers.items()]}
    (tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(questions))
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(annotations))
    for image_id in (42, 7):
        _image(tmp_path / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    return _suite(tmp_path, "{name: vqa, benchmark: vqav2, questions: v2_OpenEnded_mscoco_val2014_questions.json, "
                            "annotations: v2_mscoco_val2014_annotations.json, image_root: val2014}")


def test_vqav2_items_keep_the_question_ids_images_and_ten_answers(vqav2):
    task = load_suite(vqav2).task("vqa")
    assert (task.type, task.needs, task.image_root) == ("short_answer", "perception", vqav2.parent / "val2014")
    items = load_items(task).items
    assert [item["id"] for item in items] == ["420", "421", "70"]
    assert items[0]["image"] == "COCO_val2014_000000000042.jpg" and len(items[0]["answer"]) == 10
    assert items[2]["answer_type"] == "yes/no"


def test_vqav2_official_accuracy_is_the_vqa_score_overall_and_per_answer_type(vqav2):
    task = load_suite(vqav2).task("vqa")
    items = load_items(task).items
    lines = [TYPES["short_answer"].score(task, item, prediction, 0.5)
             for item, prediction in zip(items, ["Red.", "1", "yes"], strict=True)]
    # by hand: "red" matches 9 of 10 annotators: every leave-one-out subset keeps >= 3 matches: 1.0; "1" matches 2:
    # the 8 subsets leaving out another answer keep 2 matches (2/3), the 2 leaving out a "1" keep 1 (1/3): 0.6
    assert [line["score"] for line in lines] == [1.0, pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10), 0.0]
    official = BENCHMARKS["vqav2"].official(items, lines)
    assert official == {"accuracy": pytest.approx(1.6 / 3), "accuracy_yes/no": 0.0,
                        "accuracy_number": pytest.approx(0.6), "accuracy_other": 1.0}


def test_vqav2_bad_items_are_one_line_or_skipped_and_counted(vqav2):
    annotations = vqav2.parent / "v2_mscoco_val2014_annotations.json"
    data = json.loads(annotations.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["question_id"] != 421]
    annotations.write_text(json.dumps(data))
    (vqav2.parent / "val2014" / "COCO_val2014_000000000007.jpg").unlink()
    task = load_suite(vqav2).task("vqa")
    with pytest.raises(BackboneSwapError) as caught:
        load_items(task)
    assert str(annotations) in caught.value.message and "question 421" in caught.value.message
    assert "has no annotation" in caught.value.message and "(and 1 more)" in caught.value.message
    loaded = load_items(task, on_bad_sample="skip")
    assert [item["id"] for item in loaded.items] == ["420"]
    assert [bad.item for bad in loaded.bad] == ["question 421", "item '70'"]
    assert "image COCO_val2014_000000000007.jpg is missing" in loaded.bad[1].describe()


def test_a_file_in_another_layout_is_refused_in_one_line(vqav2):
    questions = vqav2.parent / "v2_OpenEnded_mscoco_val2014_questions.json"
    questions.write_text(json.dumps({"20240001": {"imageId": "n1", "question": "q", "answer": "a"}}))  # GQA's
    with pytest.raises(BackboneSwapError, match=r"is not in VQAv2's layout \(no questions\[\] list\)"):
        load_items(load_suite(vqav2).task("vqa"))


@pytest.mark.parametrize(("task", "words"), [
    ("{name: v, benchmark: vqav2, questions: q.json, image_root: i}", "tasks[0].annotations is missing"),
    ("{name: v, benchmark: vqav2, questions: q.json, annotations: a.json, image_root: i, split: test}",
     "tasks[0].split is not a key of vqav2"),
    ("{name: v, benchmark: vqav2, questions: q.json, annotations: a.json, image_root: i, type: description}",
     "tasks[0].type is short_answer for vqav2"),
    ("{name: v, type: short_answer, needs: perception, data: x.jsonl, questions: q.json}",
     "tasks[0].questions is a key of benchmark tasks"),
    ("{name: v, benchmark: vqa2, questions: q.json}", "tasks[0].benchmark must be one of vqav2"),
])
def test_benchmark_keys_are_checked_with_the_suite(tmp_path, task, words):
    with pytest.raises(BackboneSwapError) as caught:
        load_suite(_suite(tmp_path, task))
    assert words in caught.value.message
