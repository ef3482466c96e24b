"""ScienceQA read from problems.json and pid_splits.json: the image subset by default, every question with
include_text_only; evaluate_acc.py's accuracies worked by hand."""

from __future__ import annotations

import json

import pytest
import release_layouts

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.benchmarks import BENCHMARKS
from backbone_swap.evaluate.suite import load_items, load_suite
from backbone_swap.evaluate.tasks import TYPES

LETTER = "Answer with the option's letter from the given choices directly."


def _task(tmp_path, **options):
    return load_suite(release_layouts.suite(tmp_path, release_layouts.scienceqa(tmp_path, **options))).task("sqa")


def test_the_image_questions_of_the_test_split_by_default_with_a_note(tmp_path):
    task = _task(tmp_path)
    assert (task.type, task.needs, task.option("split"), task.option("include_text_only")) == (
        "multiple_choice", "reasoning", "test", False)
    loaded = load_items(task)
    assert [item["id"] for item in loaded.items] == ["1", "2"]
    assert loaded.notes == ["ScienceQA: 2 of 4 test questions have an image; the others are left out "
                            "(include_text_only: true takes them too)"]
    first, second = loaded.items
    assert first["question"] == ("Context: Select the best answer.\nWhich is a mammal?\nA. frog\nB. dog\nC. trout"
                                 f"\n{LETTER}")
    assert second["question"] == f"Which word is a noun?\nA. run\nB. table\n{LETTER}"  # no hint: no context line
    # the options are the letters (as for MMBench), the choices' texts kept
    assert (first["choices"], first["answer"], first["options"], first["image"]) == (
        ["A", "B", "C"], "B", ["frog", "dog", "trout"], "test/1/image.png")


def test_include_text_only_takes_every_question_of_the_split_those_without_an_image_as_text(tmp_path):
    loaded = load_items(_task(tmp_path, include_text_only=True))
    assert [item["id"] for item in loaded.items] == ["1", "2", "3", "4"]
    assert [item["image"] for item in loaded.items] == ["test/1/image.png", "test/2/image.png", None, None]
    assert loaded.notes == ["ScienceQA: all 4 test questions, 2 of them with an image"]


def test_another_split_is_read_and_an_unknown_one_named(tmp_path):
    release_layouts.scienceqa(tmp_path)
    (tmp_path / "suite.yaml").write_text("tasks:\n  - {name: sqa, benchmark: scienceqa, problems: problems.json, "
                                         "splits: pid_splits.json, image_root: images, split: train}\n")
    assert [item["image"] for item in load_items(load_suite(tmp_path / "suite.yaml").task("sqa")).items] == [
        "train/5/image.png"]
    (tmp_path / "suite.yaml").write_text((tmp_path / "suite.yaml").read_text().replace("train}", "minitest}"))
    with pytest.raises(BackboneSwapError, match="has no split 'minitest'.*split: train | val | test"):
        load_items(load_suite(tmp_path / "suite.yaml").task("sqa"))


def test_official_accuracies_by_subject_context_and_grade(tmp_path):
    task = _task(tmp_path, include_text_only=True)
    items = load_items(task).items
    # a letter (right; what the likelihood of the options writes), LLaVA's "X. ..." naming a wrong option, "The
    # answer is A." (right), and an answer naming no option: the option's text, which LLaVA's script reads as none
    predictions = ["B", "A. run", "The answer is A.", "milk"]
    lines = [TYPES["multiple_choice"].score(task, item, prediction, 0.5)
             for item, prediction in zip(items, predictions, strict=True)]
    # by hand: 1 (natural, hint + image, grade 2) right; 2 (language, image, grade 8) wrong; 3 (social, hint,
    # grade 5) right; 4 (natural, no context, grade 10) wrong
    assert BENCHMARKS["scienceqa"].official(items, lines) == {
        "accuracy": 0.5, "accuracy_natural": 0.5, "accuracy_social": 1.0, "accuracy_language": 0.0,
        "accuracy_has_text": 1.0, "accuracy_has_image": 0.5, "accuracy_no_context": 0.0,
        "accuracy_grade_1_6": 1.0, "accuracy_grade_7_12": 0.0,
    }
    on_images = BENCHMARKS["scienceqa"].official(items[:2], lines[:2])
    assert on_images["accuracy"] == on_images["accuracy_has_image"] == 0.5
    assert on_images["accuracy_no_context"] is None and on_images["accuracy_social"] is None  # no such questions


def test_bad_problems_are_one_line_or_skipped(tmp_path):
    task = _task(tmp_path)
    problems = json.loads(task.problems.read_text())
    problems["2"]["answer"] = 2
    task.problems.write_text(json.dumps(problems))
    task.splits.write_text(json.dumps({"test": ["1", "2", "1", "9"]}))
    with pytest.raises(BackboneSwapError) as caught:
        load_items(task)
    assert (f"{task.problems}, question 2: needs answer, the index of the right one of its 2 choices (and 2 more)"
            in caught.value.message)
    loaded = load_items(task, on_bad_sample="skip")
    assert [item["id"] for item in loaded.items] == ["1"]
    assert [bad.describe() for bad in loaded.bad[1:]] == [
        f"{task.problems}, question 9: is in the test split but not in this file",
        f"{task.problems}, item '1': repeats an id of an earlier item"]


def test_files_of_another_layout_are_refused(tmp_path):
    task = _task(tmp_path)
    task.splits.write_text(json.dumps(["1", "2"]))
    with pytest.raises(BackboneSwapError, match=r"pid_splits.json is not in ScienceQA's layout \(no split -> "):
        load_items(task)
    task.problems.write_text(json.dumps({"questions": []}))
    with pytest.raises(BackboneSwapError, match=r"problems.json is not in ScienceQA's layout"):
        load_items(task)
