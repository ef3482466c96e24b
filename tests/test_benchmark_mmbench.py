"""MMBench read from its released TSV (base64 images), asked as multiple choice, with CircularEval."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import pytest
from release_files import answers, png_base64, suite

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.benchmarks import BENCHMARKS
from backbone_swap.evaluate.suite import load_items, load_suite
from backbone_swap.evaluate.tasks import TYPES
from backbone_swap.verdict.compare import task_statistics
from backbone_swap.verdict.schema import validate_report

COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image", "split"]
FINE, COARSE = "finegrained_perception (instance-level)", "coarse_perception"
INSTRUCTION = "Answer with the option's letter from the given choices directly."


def _rows() -> list[list[str]]:
    """Three questions: 4 options, 2 options with a hint, and 3 options whose image is row 0's (named by index)."""
    return [
        ["0", "What colour is the circle?", "", "red", "blue", "green", "yellow", "B", "attribute_recognition", FINE,
         png_base64((30, 60, 220)), "dev"],
        ["1", "Which shape is drawn?", "The picture shows one shape.", "circle", "square", "", "", "A",
         "image_topic", COARSE, png_base64((200, 40, 40)), "dev"],
        ["2", "How many circles are there?", "", "one", "two", "three", "", "A", "attribute_recognition", FINE,
         "0", "dev"],
    ]


def _tsv(path: Path, rows: list[list[str]], columns: list[str] = COLUMNS) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def _suite(folder: Path, circular: bool) -> Path:
    flag = "true" if circular else "false"
    return suite(folder, f"{{name: mmb, benchmark: mmbench, data: MMBench_DEV_EN.tsv, circular: {flag}}}")


@pytest.fixture
def mmbench(tmp_path: Path) -> Path:
    _tsv(tmp_path / "MMBench_DEV_EN.tsv", _rows())
    return tmp_path


def test_mmbench_questions_are_llavas_prompt_over_the_options_present(mmbench):
    task = load_suite(_suite(mmbench, circular=False)).task("mmb")
    assert (task.type, task.needs) == ("multiple_choice", "reasoning")
    items = load_items(task).items
    assert [item["id"] for item in items] == ["0", "1", "2"]
    assert [item["choices"] for item in items] == [["A", "B", "C", "D"], ["A", "B"], ["A", "B", "C"]]
    assert items[1]["question"] == ("The picture shows one shape.\nWhich shape is drawn?\nA. circle\nB. square\n"
                                    + INSTRUCTION)
    assert items[0]["question"] == f"What colour is the circle?\nA. red\nB. blue\nC. green\nD. yellow\n{INSTRUCTION}"
    assert items[2]["image_data"] == items[0]["image_data"] and "group" not in items[0]
    assert (items[0]["category"], items[1]["l2-category"]) == ("attribute_recognition", COARSE)


def test_the_runner_opens_the_base64_image_which_has_no_file(mmbench):
    from backbone_swap.evaluate.runner import _load_image

    task = load_suite(_suite(mmbench, circular=False)).task("mmb")
    items = load_items(task).items
    picture = _load_image(task, items[2])  # row 0's image, named by its index
    assert (picture.mode, picture.size, picture.getpixel((14, 14))) == ("RGB", (28, 28), (30, 60, 220))
    truncated = items[1] | {"image_data": items[1]["image_data"][:120]}  # valid base64 of a cut PNG
    with pytest.raises(BackboneSwapError) as caught:
        _load_image(task, truncated)
    assert caught.value.message.startswith("task mmb, item '1': image 'MMBench_DEV_EN.tsv (base64)' cannot be read")


def test_circular_asks_every_rotation_with_ids_that_keep_the_index(mmbench):
    items = load_items(load_suite(_suite(mmbench, circular=True)).task("mmb")).items
    assert [(item["id"], item["group"]) for item in items] == [
        ("0", "0"), ("1000000", "0"), ("2000000", "0"), ("3000000", "0"), ("1", "1"), ("1000001", "1"),
        ("2", "2"), ("1000002", "2"), ("2000002", "2")]
    # question 0 (blue is B): shifted left by k, as LLaVA's --all-rounds: blue is then A, D, C
    rotations = {item["id"]: item for item in items}
    assert [rotations[i]["answer"] for i in ("0", "1000000", "2000000", "3000000")] == ["B", "A", "D", "C"]
    assert rotations["2000000"]["question"] == (f"What colour is the circle?\nA. green\nB. yellow\nC. red\n"
                                                f"D. blue\n{INSTRUCTION}")
    assert rotations["1000001"]["question"].endswith(f"A. square\nB. circle\n{INSTRUCTION}")
    assert rotations["1000001"]["answer"] == "B"


def test_rotations_in_the_file_are_asked_as_released(mmbench):
    rows = _rows()
    # as VLMEvalKit's files: question 1's rotation as a row of its own, its image named by index
    rows.append(["1000001", "Which shape is drawn?", "The picture shows one shape.", "a square", "a circle", "", "",
                 "B", "image_topic", COARSE, "1", "dev"])
    _tsv(mmbench / "MMBench_DEV_EN.tsv", rows)
    circular = load_items(load_suite(_suite(mmbench, circular=True)).task("mmb")).items
    assert [item["id"] for item in circular] == ["0", "1000000", "2000000", "3000000", "1", "1000001", "2",
                                                 "1000002", "2000002"]
    released = circular[5]
    assert released["question"].endswith(f"A. a square\nB. a circle\n{INSTRUCTION}") and released["group"] == "1"
    assert released["image_data"] == circular[4]["image_data"]
    loaded = load_items(load_suite(_suite(mmbench, circular=False)).task("mmb"))
    assert [item["id"] for item in loaded.items] == ["0", "1", "2"]
    assert "1 rotations (index >= 1000000) in MMBench_DEV_EN.tsv left out" in loaded.notes[0]


def _answered(items: list[dict], wrong: set[str], confidence: dict[str, float] | None = None) -> list[dict]:
    """Answer lines choosing each item's answer, or another letter for the ids in ``wrong``."""
    lines = []
    for item in items:
        letter = item["answer"] if item["id"] not in wrong else next(c for c in item["choices"] if c != item["answer"])
        lines.append({"id": item["id"], "prediction": letter, "reference": item["answer"], "correct": None,
                      "confidence": (confidence or {}).get(item["id"], 0.5)})
    return lines


def test_circular_eval_counts_a_question_right_only_if_every_rotation_is(mmbench):
    task = load_suite(_suite(mmbench, circular=True)).task("mmb")
    items = load_items(task).items
    lines = [TYPES["multiple_choice"].rescore(task, item, line)
             for item, line in zip(items, _answered(items, wrong={"1000001"}), strict=True)]
    # by hand: question 0 right 4 of 4, question 1 right 1 of 2 (so wrong), question 2 right 3 of 3: 2 of 3 questions;
    # attribute_recognition holds 0 and 2 (both right), image_topic 1; the l2-categories likewise
    assert BENCHMARKS["mmbench"].official(items, lines) == {
        "accuracy": pytest.approx(2 / 3), "category/attribute_recognition": 1.0, "category/image_topic": 0.0,
        f"l2-category/{COARSE}": 0.0, f"l2-category/{FINE}": 1.0}
    plain = load_items(load_suite(_suite(mmbench, circular=False)).task("mmb")).items  # each question asked once
    once = [TYPES["multiple_choice"].rescore(task, item, line) for item, line in zip(plain, _answered(plain, {"1"}),
                                                                                      strict=True)]
    assert BENCHMARKS["mmbench"].official(plain, once)["accuracy"] == pytest.approx(2 / 3)


def _write(folder: Path, lines: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mmb.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_compare_pairs_questions_not_rotations(mmbench):
    task = load_suite(_suite(mmbench, circular=True)).task("mmb")
    items = load_items(task).items
    conf_a = {"0": 0.9, "1000000": 0.7, "2000000": 0.8, "3000000": 0.6, "1": 0.5, "1000001": 0.3, "2": 0.6,
              "1000002": 0.6, "2000002": 0.9}
    _write(mmbench / "a", _answered(items, wrong={"1000001"}, confidence=conf_a))  # right: questions 0 and 2
    _write(mmbench / "b", _answered(items, wrong={"2000002"}))  # right: questions 0 and 1
    s = task_statistics(task, mmbench / "a", mmbench / "b", n_resamples=200, seed=0)
    assert s["n"] == 3 and s["overlap"] == {"both": 1, "only_a": 1, "only_b": 1, "neither": 0}
    assert s["accuracy_a"] == pytest.approx(2 / 3) == s["official"]["accuracy"]["a"]
    # each question's confidence is the mean of its rotations': 0.75 (right), 0.4 (wrong), 0.7 (right)
    assert s["brier_a"] == pytest.approx(((1 - 0.75) ** 2 + 0.4**2 + (1 - 0.7) ** 2) / 3)
    assert s["official"]["category/image_topic"] == {"a": 0.0, "b": 1.0}


@pytest.mark.parametrize(("edit", "item", "words"), [
    (lambda rows: rows.append(list(rows[1])), "index 1", "repeats the index of an earlier row"),
    (lambda rows: rows[1].__setitem__(10, "iVBORw0KGgo*not-base64" * 5), "item '1'",
     "its base64 image does not decode"),
    (lambda rows: rows[1].__setitem__(10, base64.b64encode(b"plain text, no picture at all " * 4).decode()),
     "item '1'", "its base64 image decodes to no image format PIL reads"),
    (lambda rows: rows[1].__setitem__(10, "7"), "index 1", "has no base64 image (its image is '7')"),
    (lambda rows: rows[1].__setitem__(7, "C"), "index 1", "answer 'C' is not one of its options' letters (A, B)"),
    (lambda rows: rows[1].__setitem__(4, ""), "index 1", "has fewer than 2 options"),
    (lambda rows: rows.append(["1000005", "q", "", "a", "b", "", "", "A", "c", "c", "0", "dev"]), "index 1000005",
     "is a rotation of question 5, which the file does not hold"),
])
def test_bad_rows_are_one_line_naming_the_file_and_the_row(mmbench, edit, item, words):
    rows = _rows()
    edit(rows)
    path = _tsv(mmbench / "MMBench_DEV_EN.tsv", rows)
    task = load_suite(_suite(mmbench, circular=True)).task("mmb")
    with pytest.raises(BackboneSwapError) as caught:
        load_items(task)
    assert f"{path}, {item}: {words}" in caught.value.message and "\n" not in str(caught.value)
    loaded = load_items(task, on_bad_sample="skip")
    assert {i["group"] for i in loaded.items} >= {"0", "2"} and loaded.bad


@pytest.mark.parametrize(("content", "words"), [
    ('{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "yes"}\n',  # POPE's
     "is not in MMBench's layout (no column index, question, A, B, image)"),
    (None, "is not in MMBench's layout (no answer column: a test split"),
])
def test_a_file_in_another_layout_or_the_test_split_is_refused_in_one_line(mmbench, content, words):
    path = mmbench / "MMBench_DEV_EN.tsv"
    if content is None:  # the test split as released: no answers
        _tsv(path, [row[:7] + row[8:] for row in _rows()], [c for c in COLUMNS if c != "answer"])
    else:
        path.write_text(content)
    with pytest.raises(BackboneSwapError) as caught:
        load_items(load_suite(_suite(mmbench, circular=False)).task("mmb"))
    assert str(path) in caught.value.message and words in caught.value.message


@pytest.mark.slow
def test_eval_and_compare_report_circular_eval_from_the_answers_written(cli, transplanted, mmbench):
    out, suite_file = mmbench / "cmp", _suite(mmbench, circular=True)
    for side, model in (("a", transplanted["mistral"]), ("b", transplanted["qwen2"])):
        evaluated = cli("eval", model, "--suite", suite_file, "-o", out / "eval" / side, "--batch-size", "4")
        assert evaluated.code == 0, evaluated.err
    written = answers(out / "eval" / "a", "mmb")
    assert sorted(line["id"] for line in written) == ["0", "1", "1000000", "1000001", "1000002", "2", "2000000",
                                                     "2000002", "3000000"]
    assert all(line["prediction"] in "ABCD" and len(line["probabilities"]) >= 2 for line in written)
    # A's answers set by hand (compare scores the raw answers again): question 1 fails one rotation
    items = {item["id"]: item for item in load_items(load_suite(suite_file).task("mmb")).items}
    edited = {line["id"]: line["prediction"] for line in _answered(list(items.values()), wrong={"1000001"})}
    _write(out / "eval" / "a", [line | {"prediction": edited[line["id"]]} for line in written])
    result = cli("compare", transplanted["mistral"], transplanted["qwen2"], "--suite", suite_file, "-o", out,
                 "--resamples", "200")
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert validate_report(report) == []
    (task,) = report["tasks"]
    assert (task["type"], task["n"]) == ("multiple_choice", 3)
    assert task["official"]["accuracy"]["a"] == pytest.approx(2 / 3) == task["accuracy_a"]
    assert task["official"]["category/image_topic"]["a"] == 0.0
    # B as the model answered, grouped again here by index % 1000000 (CircularEval)
    right: dict[int, bool] = {}
    for line in answers(out / "eval" / "b", "mmb"):
        question = int(line["id"]) % 1_000_000
        right[question] = right.get(question, True) and line["prediction"] == items[line["id"]]["answer"]
    assert task["official"]["accuracy"]["b"] == pytest.approx(sum(right.values()) / 3) == task["accuracy_b"]
    assert task["official"][f"l2-category/{FINE}"]["b"] == pytest.approx((right[0] + right[2]) / 2)
