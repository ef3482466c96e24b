"""GQA read from its release questions file; the metrics of GQA's eval.py on LLaVA's submitted form, by hand."""

from __future__ import annotations

import json

import pytest
import release_layouts

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.benchmarks import BENCHMARKS
from backbone_swap.evaluate.suite import load_items, load_suite
from backbone_swap.evaluate.tasks import TYPES


@pytest.fixture
def suite_path(tmp_path):
    return release_layouts.suite(tmp_path, release_layouts.gqa(tmp_path))


def test_items_are_the_questions_by_their_ids_with_one_answer(suite_path):
    task = load_suite(suite_path).task("gqa")
    assert (task.type, task.needs) == ("short_answer", "reasoning")
    items = load_items(task).items
    assert [item["id"] for item in items] == ["201", "202", "203", "204", "205"]
    assert (items[0]["image"], items[0]["answer"], items[0]["question"]) == ("n1.jpg", "yes", "Is the ball red?")
    assert items[4]["entailed"] == ["201", "202"]  # a question's own id among its entailed ones is left out


def test_official_metrics_are_eval_py_on_the_balanced_questions(suite_path):
    task = load_suite(suite_path).task("gqa")
    items = load_items(task).items
    predictions = ["Yes.", "the red", "left", "no", "Ball"]
    lines = [TYPES["short_answer"].score(task, item, prediction, 0.5)
             for item, prediction in zip(items, predictions, strict=True)]
    # the item's score forgives the article ("the red" is "red" after VQA normalisation); the official reading
    # (periods stripped, lowercased, compared exactly) does not
    assert [line["correct"] for line in lines] == [True] * 5
    official = BENCHMARKS["gqa"].official(items, lines)
    # by hand, over the balanced 201, 202, 203, 205 (204 is not balanced): right 201, 203, 205;
    # binary (not "query"): 201, 203; open: 202 (wrong), 205;
    # consistency: 201 is right and entails 202 (wrong): 0; 205 is right and entails 201, 202: 1/2; 203 entails
    # nothing; 202 is wrong: mean(0, 1/2)
    assert official == {
        "accuracy": 0.75, "binary": 1.0, "open": 0.5, "consistency": 0.25,
        "accuracy_semantic_attr": 0.5, "accuracy_semantic_obj": 1.0, "accuracy_semantic_rel": 1.0,
        "accuracy_structural_choose": 1.0, "accuracy_structural_query": 0.5, "accuracy_structural_verify": 1.0,
    }


def test_questions_without_an_answer_or_image_are_one_line_or_skipped(suite_path):
    questions = suite_path.parent / "testdev_balanced_questions.json"
    data = json.loads(questions.read_text())
    del data["202"]["answer"]
    questions.write_text(json.dumps(data))
    (suite_path.parent / "images" / "n2.jpg").unlink()
    task = load_suite(suite_path).task("gqa")
    with pytest.raises(BackboneSwapError) as caught:
        load_items(task)
    assert f"{questions}, question 202: has no answer" in caught.value.message
    assert "(and 2 more)" in caught.value.message
    loaded = load_items(task, on_bad_sample="skip")
    assert [item["id"] for item in loaded.items] == ["201", "205"]
    assert [bad.item for bad in loaded.bad] == ["question 202", "item '203'", "item '204'"]
    assert "image n2.jpg is missing" in loaded.bad[1].describe()


def test_a_file_of_another_benchmark_is_refused(suite_path):
    vqav2 = {"data_subtype": "val2014", "questions": [{"image_id": 1, "question": "q", "question_id": 10}]}
    (suite_path.parent / "testdev_balanced_questions.json").write_text(json.dumps(vqav2))
    with pytest.raises(BackboneSwapError, match=r"is not in GQA's layout \(no question id -> \{imageId"):
        load_items(load_suite(suite_path).task("gqa"))
