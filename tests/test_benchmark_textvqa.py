"""TextVQA read from its release file; its official accuracy as the m4c evaluator computes it, worked by hand."""

from __future__ import annotations

import json

import pytest
import release_layouts

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.benchmarks import BENCHMARKS
from backbone_swap.evaluate.benchmarks.answers import evalai_normalize, vqa_accuracy
from backbone_swap.evaluate.suite import load_items, load_suite
from backbone_swap.evaluate.tasks import TYPES


@pytest.fixture
def suite_path(tmp_path):
    return release_layouts.suite(tmp_path, release_layouts.textvqa(tmp_path))


def test_items_keep_the_question_ids_images_and_ten_answers(suite_path):
    task = load_suite(suite_path).task("text")
    assert (task.type, task.needs) == ("short_answer", "perception")
    items = load_items(task).items
    assert [item["id"] for item in items] == ["34602", "34603", "34604"]
    assert items[0]["image"] == "0054c91397f2fe05.jpg" and items[0]["answer"] == ["stop"] * 2 + ["stop sign"] * 8


@pytest.mark.parametrize(("raw", "expected"), [
    ("STOP.", "stop"), ("red,white", "redwhite"), ("Is it?", "is it"), ("nokia's", "nokia 's"),
    ("Two dogs", "2 dogs"), ("a t-shirt", "t shirt"),
])
def test_the_evalai_processor_drops_commas_and_question_marks_and_splits_s(raw, expected):
    assert evalai_normalize(raw) == expected


def test_official_accuracy_is_the_m4c_soft_score_of_the_raw_predictions(suite_path):
    task = load_suite(suite_path).task("text")
    items = load_items(task).items
    lines = [TYPES["short_answer"].score(task, item, prediction, 0.5)
             for item, prediction in zip(items, ["STOP.", "Nokia", "red,white"], strict=True)]
    # by hand: "stop" is 2 of 10 answers: 8 leave-one-out subsets keep 2 (2/3), 2 keep 1 (1/3): 0.6; "nokia" 1.0;
    # "red,white" is "redwhite" to the EvalAI processor, no answer: 0, although the item's VQAv2 score, which
    # reads it as "red white" (4 of 10 answers), is 1
    assert [line["score"] for line in lines] == [pytest.approx(0.6), 1.0, 1.0]
    assert vqa_accuracy("red,white", items[2]["answer"]) == 0.0
    assert BENCHMARKS["textvqa"].official(items, lines) == {"accuracy": pytest.approx((0.6 + 1.0 + 0.0) / 3)}


def test_bad_questions_are_one_line_or_skipped(suite_path):
    data_file = suite_path.parent / "TextVQA_0.5.1_val.json"
    data = json.loads(data_file.read_text())
    data["data"][1]["answers"] = ["nokia"] * 9
    del data["data"][2]["answers"]
    data_file.write_text(json.dumps(data))
    task = load_suite(suite_path).task("text")
    with pytest.raises(BackboneSwapError) as caught:
        load_items(task)
    assert f"{data_file}, question 34603: needs answers[] of 10 strings" in caught.value.message
    assert "(and 1 more)" in caught.value.message
    loaded = load_items(task, on_bad_sample="skip")
    assert [item["id"] for item in loaded.items] == ["34602"]
    assert "those of the test split are not released" in loaded.bad[1].describe()


def test_a_file_of_another_benchmark_is_refused(suite_path):
    gqa = {"201": {"imageId": "n1", "question": "q", "answer": "a"}}
    (suite_path.parent / "TextVQA_0.5.1_val.json").write_text(json.dumps(gqa))
    with pytest.raises(BackboneSwapError, match=r"is not in TextVQA's layout \(no data\[\] list\)"):
        load_items(load_suite(suite_path).task("text"))
