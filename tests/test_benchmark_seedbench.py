"""SEED-Bench read from its release file: image questions only; accuracy overall and per dimension, by hand."""

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
    return release_layouts.suite(tmp_path, release_layouts.seedbench(tmp_path))


def test_image_questions_with_their_four_choices_and_a_note_on_the_video_ones(suite_path):
    task = load_suite(suite_path).task("seed")
    assert (task.type, task.needs) == ("multiple_choice", "perception")
    loaded = load_items(task)
    assert [item["id"] for item in loaded.items] == ["101669", "102", "103"]
    first = loaded.items[0]
    assert first["question"] == ("How many towels are in the image?\nA. One\nB. Two\nC. Three\nD. Four\n"
                                 "Answer with the option's letter from the given choices directly.")
    assert (first["choices"], first["answer"], first["options"]) == (["A", "B", "C", "D"], "A",
                                                                     ["One", "Two", "Three", "Four"])
    # released images are named by data_id; one saved with .jpg added is found too
    assert [item["image"] for item in loaded.items] == ["1454426_2591111986", "img2.jpg", "img2.jpg"]
    assert loaded.notes == ["SEED-Bench: 3 of 4 questions are on an image; the others (video) are left out"]


def test_official_accuracy_overall_and_per_question_type(suite_path):
    task = load_suite(suite_path).task("seed")
    items = load_items(task).items
    # a letter (what the likelihood of the options writes), a generated "C. ..." (its first letter), and a wrong
    # letter in lower case (lmms-eval compares case-insensitively)
    lines = [TYPES["multiple_choice"].score(task, item, prediction, 0.5)
             for item, prediction in zip(items, ["A", "C. a park", "a"], strict=True)]
    assert BENCHMARKS["seedbench"].official(items, lines) == {
        "accuracy": pytest.approx(2 / 3), "accuracy_Instances Counting": 1.0, "accuracy_Scene Understanding": 0.5}


def test_bad_questions_are_one_line_or_skipped(suite_path):
    data_file = suite_path.parent / "SEED-Bench.json"
    data = json.loads(data_file.read_text())
    data["questions"][1]["answer"] = "E"
    data["questions"][2]["question_id"] = "101669"
    data_file.write_text(json.dumps(data))
    task = load_suite(suite_path).task("seed")
    with pytest.raises(BackboneSwapError) as caught:
        load_items(task)
    assert f"{data_file}, question 102: needs answer, one of A, B, C, D (and 1 more)" in caught.value.message
    loaded = load_items(task, on_bad_sample="skip")
    assert [item["id"] for item in loaded.items] == ["101669"]
    assert loaded.bad[1].describe() == f"{data_file}, item '101669': repeats an id of an earlier item"


def test_a_file_of_another_benchmark_is_refused(suite_path):
    vqav2 = {"data_subtype": "val2014", "questions": [{"image_id": 1, "question": "q", "question_id": 10}]}
    (suite_path.parent / "SEED-Bench.json").write_text(json.dumps(vqav2))
    with pytest.raises(BackboneSwapError, match=r"is not in SEED-Bench's layout \(no questions\[\] with choice_a"):
        load_items(load_suite(suite_path).task("seed"))
