"""POPE read from coco_pope_<setting>.json as released (JSON lines), answered yes/no, scored as eval_pope.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from release_files import answers, image, json_lines, suite

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.benchmarks import BENCHMARKS
from backbone_swap.evaluate.suite import load_items, load_suite
from backbone_swap.evaluate.tasks import TYPES
from backbone_swap.verdict.schema import validate_report

LABELS = ["yes", "yes", "yes", "no", "no", "no"]
IMAGES = ["COCO_val2014_000000310196.jpg", "COCO_val2014_000000310196.jpg", "COCO_val2014_000000210789.jpg",
          "COCO_val2014_000000210789.jpg", "COCO_val2014_000000429109.jpg", "COCO_val2014_000000429109.jpg"]
OBJECTS = ["snowboard", "person", "dog", "cat", "car", "bird"]
SAID = ["Yes, there is a snowboard.",  # yes for a yes: TP
        "No.",                         # no for a yes: FN
        "Not really",                  # "Not" is none of No/no/not: read as yes, for a yes: TP
        "There is no cat.",            # no for a no: TN
        "Yes",                         # FP
        "Yes. No, it is not."]         # only the first sentence counts: yes for a no: FP


@pytest.fixture
def pope(tmp_path: Path) -> Path:
    """Six questions on three COCO images, as coco_pope_random.json lays them out."""
    json_lines(tmp_path / "coco_pope_random.json", [
        {"question_id": qid, "image": name, "text": f"Is there a {thing} in the image?", "label": label}
        for qid, (name, thing, label) in enumerate(zip(IMAGES, OBJECTS, LABELS, strict=True), start=1)])
    for k, name in enumerate(sorted(set(IMAGES))):
        image(tmp_path / "val2014" / name, (60 * k, 200 - 50 * k, 90))
    return suite(tmp_path, "{name: pope_random, benchmark: pope, data: coco_pope_random.json, image_root: val2014}")


def test_pope_items_keep_the_question_ids_and_images(pope):
    task = load_suite(pope).task("pope_random")
    assert (task.type, task.needs, task.image_root) == ("yes_no", "perception", pope.parent / "val2014")
    items = load_items(task).items
    assert [item["id"] for item in items] == ["1", "2", "3", "4", "5", "6"]
    assert items[0] == {"id": "1", "question": "Is there a snowboard in the image?", "answer": "yes",
                        "image": "COCO_val2014_000000310196.jpg"}
    overridden = suite(pope.parent, "{name: p, benchmark: pope, data: coco_pope_random.json, image_root: val2014, "
                                    "needs: reasoning}")
    assert load_suite(overridden).task("p").needs == "reasoning"  # a task may say otherwise than the benchmark


def test_pope_official_metrics_are_eval_pope_on_a_hand_worked_example(pope):
    task = load_suite(pope).task("pope_random")
    items = load_items(task).items
    lines = [TYPES["yes_no"].score(task, item, text, 0.5) for item, text in zip(items, SAID, strict=True)]
    assert [line["parsed"] for line in lines] == ["yes", "no", "yes", "no", "yes", "yes"]
    assert [line["correct"] for line in lines] == [True, False, True, True, False, False]
    # by hand: TP 2, FN 1, TN 1, FP 2; precision 2/4, recall 2/3, F1 = 2PR/(P+R) = (2/3)/(7/6) = 4/7
    assert BENCHMARKS["pope"].official(items, lines) == {
        "accuracy": pytest.approx(3 / 6), "precision": pytest.approx(0.5), "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(4 / 7), "yes_ratio": pytest.approx(4 / 6)}


def test_pope_metrics_the_script_cannot_divide_for_are_none(pope):
    task = load_suite(pope).task("pope_random")
    items = load_items(task).items
    lines = [TYPES["yes_no"].score(task, item, "No", 0.5) for item in items]  # never yes: no precision
    assert BENCHMARKS["pope"].official(items, lines) == {
        "accuracy": 0.5, "precision": None, "recall": 0.0, "f1": None, "yes_ratio": 0.0}


def test_a_suite_of_our_own_data_can_ask_yes_no_questions(tmp_path):
    image(tmp_path / "a.png")
    json_lines(tmp_path / "own.jsonl", [{"id": "q1", "image": "a.png", "question": "Is it red?", "answer": "Yes"},
                                        {"id": "q2", "image": "a.png", "question": "Is it blue?", "answer": "no"}])
    task = load_suite(suite(tmp_path, "{name: own, type: yes_no, needs: perception, data: own.jsonl}")).task("own")
    items = load_items(task).items
    lines = [TYPES["yes_no"].score(task, item, "yes, it is", 0.9) for item in items]
    assert [(line["parsed"], line["correct"]) for line in lines] == [("yes", True), ("yes", False)]
    json_lines(tmp_path / "own.jsonl", [{"id": "q1", "image": "a.png", "question": "Is it red?", "answer": "red"}])
    with pytest.raises(BackboneSwapError, match=r"own.jsonl, item 'q1': needs an answer of yes or no"):
        load_items(task)


def _rewrite(pope: Path, change) -> Path:
    path = pope.parent / "coco_pope_random.json"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    change(records)
    return json_lines(path, records)


@pytest.mark.parametrize(("change", "item", "words"), [
    (lambda r: r[2].update(question_id=2), "item '2'", "repeats an id of an earlier item"),
    (lambda r: r[3].pop("label"), "question 4", "has no label"),
    (lambda r: r[4].update(label="maybe"), "item '5'", "needs an answer of yes or no"),
])
def test_bad_pope_records_are_one_line_naming_the_file_and_the_item(pope, change, item, words):
    path = _rewrite(pope, change)
    with pytest.raises(BackboneSwapError) as caught:
        load_items(load_suite(pope).task("pope_random"))
    assert f"{path}, {item}: {words}" in caught.value.message
    assert "\n" not in str(caught.value)
    loaded = load_items(load_suite(pope).task("pope_random"), on_bad_sample="skip")
    assert len(loaded.items) == 5 and len(loaded.bad) == 1


def test_a_missing_pope_image_names_the_image_root_and_the_item(pope):
    (pope.parent / "val2014" / "COCO_val2014_000000429109.jpg").unlink()
    with pytest.raises(BackboneSwapError) as caught:
        load_items(load_suite(pope).task("pope_random"))
    assert (f"{pope.parent / 'val2014'}, item '5': image COCO_val2014_000000429109.jpg is missing (and 1 more)"
            in caught.value.message)
    assert [item["id"] for item in load_items(load_suite(pope).task("pope_random"), "skip").items] == list("1234")


@pytest.mark.parametrize(("content", "words"), [
    (json.dumps({"questions": [{"question_id": 1, "question": "q", "image_id": 1}]}),
     "is not in POPE's layout (no question_id and text on its first line)"),  # VQAv2's questions file
    ("index\tquestion\tA\tB\tanswer\timage\n1\tq\ta\tb\tA\tiVBOR\n", "line 1 is not JSON"),  # MMBench's TSV
    (json.dumps([{"question_id": 1, "text": "q"}]), "is not in POPE's layout (a JSON list)"),
])
def test_a_file_in_another_layout_is_refused_in_one_line(pope, content, words):
    (pope.parent / "coco_pope_random.json").write_text(content)
    with pytest.raises(BackboneSwapError) as caught:
        load_items(load_suite(pope).task("pope_random"))
    assert str(pope.parent / "coco_pope_random.json") in caught.value.message and words in caught.value.message


def test_the_cli_refuses_a_bad_pope_file_in_one_line(cli, transplanted, pope, tmp_path):
    _rewrite(pope, lambda r: r[1].update(question_id=1))
    result = cli("eval", transplanted["mistral"], "--suite", pope, "-o", tmp_path / "ev")
    assert result.code == 1 and result.err.count("\n") == 1
    assert "coco_pope_random.json, item '1': repeats an id of an earlier item" in result.err
    assert "--on-bad-sample skip" in result.err and not (tmp_path / "ev").exists()


@pytest.mark.slow
def test_eval_and_compare_report_eval_popes_numbers_from_the_answers_written(cli, transplanted, pope, tmp_path):
    out = tmp_path / "cmp"
    for side, model in (("a", transplanted["mistral"]), ("b", transplanted["qwen2"])):
        evaluated = cli("eval", model, "--suite", pope, "-o", out / "eval" / side, "--batch-size", "3")
        assert evaluated.code == 0, evaluated.err
    # A's answers set to the hand-worked example's (compare reads the raw answers again); B's as the model gave them
    written = {line["id"]: line for line in answers(out / "eval" / "a", "pope_random")}
    json_lines(out / "eval" / "a" / "pope_random.jsonl",
               [written[str(qid)] | {"prediction": text} for qid, text in enumerate(SAID, start=1)])
    result = cli("compare", transplanted["mistral"], transplanted["qwen2"], "--suite", pope, "-o", out,
                 "--resamples", "200")
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert validate_report(report) == []
    (task,) = report["tasks"]
    assert (task["name"], task["type"], task["n"]) == ("pope_random", "yes_no", 6)
    assert {metric: pair["a"] for metric, pair in task["official"].items()} == {
        "accuracy": pytest.approx(3 / 6), "precision": pytest.approx(0.5), "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(4 / 7), "yes_ratio": pytest.approx(4 / 6)}
    assert task["accuracy_a"] == pytest.approx(0.5)
    labels = dict(zip([str(i) for i in range(1, 7)], LABELS, strict=True))
    lines = answers(out / "eval" / "b", "pope_random")
    # eval_pope.py's reading, written out again: the first sentence, commas dropped, a no-word -> no
    said = {line["id"]: "no" if {"No", "no", "not"} & set(line["prediction"].split(".")[0].replace(",", "")
                                                          .split(" ")) else "yes" for line in lines}
    assert {line["id"]: line["parsed"] for line in lines} == said
    tp = sum(said[i] == "yes" and labels[i] == "yes" for i in labels)
    fp = sum(said[i] == "yes" and labels[i] == "no" for i in labels)
    tn = sum(said[i] == "no" and labels[i] == "no" for i in labels)
    official = {metric: pair["b"] for metric, pair in task["official"].items()}
    assert official["accuracy"] == pytest.approx((tp + tn) / 6) == task["accuracy_b"]
    assert official["yes_ratio"] == pytest.approx((tp + fp) / 6)
    assert official["precision"] == (pytest.approx(tp / (tp + fp)) if tp + fp else None)
    assert official["recall"] == pytest.approx(tp / 3)
