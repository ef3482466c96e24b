"""MME read from MME_Benchmark_release_version as released (both folder layouts), scored as calculation.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from release_files import answers, image, suite

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.benchmarks import BENCHMARKS
from backbone_swap.evaluate.suite import load_items, load_suite
from backbone_swap.evaluate.tasks import TYPES
from backbone_swap.verdict.schema import validate_report

# subtask -> image -> its two lines as released; existence and code_reasoning keep each image's .txt beside it,
# artwork keeps images/ and questions_answers_YN/
RELEASE = {
    "existence": {"000000006040.jpg": ["Is there a train in this image? Please answer yes or no.\tYes",
                                       "Is there a bed in this image? Please answer yes or no.\tNo"],
                  "000000018150.jpg": ["Is there a bus in this image? Please answer yes or no.\tYes",
                                       "Is there a cat in this image? Please answer yes or no.\tNo"]},
    "artwork": {"10002.jpg": ["Is this artwork created by Giotto? Please answer yes or no.\tYes",
                              "Is this artwork created by Monet? Please answer yes or no.\tNo"]},
    "code_reasoning": {"0020.png": ["Is a c++ code shown in the picture? Please answer yes or no.\tNo",
                                    "Is a python code shown in the picture? Please answer yes or no.\tYes"]},
}
SAID = ["Yes",                 # existence image 1: right
        "No, there is not.",   # right ("no" in the first 4 characters): both of image 1 right
        "Yes.",                # existence image 2: right
        "There is none",       # "ther": other, never right
        "Not at all",          # artwork, a Yes: "not " holds "no": no, wrong (POPE's rule would say yes)
        "no",                  # right
        "No",                  # code_reasoning: right
        "yes"]                 # right: both of its image right
HAND = {"perception": 175.0, "cognition": 200.0, "existence_acc": 0.75, "existence_acc_plus": 0.5, "artwork_acc": 0.5,
        "artwork_acc_plus": 0.0, "code_reasoning_acc": 1.0, "code_reasoning_acc_plus": 1.0}


@pytest.fixture
def mme(tmp_path: Path) -> Path:
    root = tmp_path / "MME_Benchmark_release_version"
    for k, (subtask, images) in enumerate(RELEASE.items()):
        for name, lines in images.items():
            stem = Path(name).stem
            if subtask == "artwork":
                image(root / subtask / "images" / name, (40 * k, 90, 200))
                (root / subtask / "questions_answers_YN").mkdir(parents=True, exist_ok=True)
                (root / subtask / "questions_answers_YN" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
            else:
                image(root / subtask / name, (40 * k, 90, 200))
                (root / subtask / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    return suite(tmp_path, "{name: mme, benchmark: mme, root: MME_Benchmark_release_version}")


def test_mme_items_say_their_subtask_and_image_in_their_ids(mme):
    task = load_suite(mme).task("mme")
    root = mme.parent / "MME_Benchmark_release_version"
    assert (task.type, task.needs, task.root, task.image_root) == ("yes_no", "perception", root, root)
    loaded = load_items(task)
    assert [item["id"] for item in loaded.items] == [
        "existence/000000006040.jpg#1", "existence/000000006040.jpg#2", "existence/000000018150.jpg#1",
        "existence/000000018150.jpg#2", "artwork/10002.jpg#1", "artwork/10002.jpg#2", "code_reasoning/0020.png#1",
        "code_reasoning/0020.png#2"]
    assert loaded.items[4] == {"id": "artwork/10002.jpg#1", "answer": "Yes", "subtask": "artwork",
                               "question": "Is this artwork created by Giotto? Please answer yes or no.",
                               "image": "artwork/images/10002.jpg"}
    assert "11 of its 14 subtasks are not in" in loaded.notes[0] and "OCR" in loaded.notes[0]


def test_mme_official_scores_are_calculation_py_on_a_hand_worked_example(mme):
    task = load_suite(mme).task("mme")
    items = load_items(task).items
    lines = [TYPES["yes_no"].score(task, item, text, 0.5) for item, text in zip(items, SAID, strict=True)]
    assert [line["parsed"] for line in lines] == ["yes", "no", "yes", "other", "no", "no", "no", "yes"]
    # by hand: existence acc 3/4, acc+ 1/2 (image 1 only): 100 x 1.25 = 125; artwork acc 1/2, acc+ 0: 50;
    # perception 125 + 50 = 175; code_reasoning acc 1, acc+ 1: 200 = cognition
    assert BENCHMARKS["mme"].official(items, lines) == pytest.approx(HAND)


def test_mmes_rule_is_kept_apart_from_popes(mme):
    task = load_suite(mme).task("mme")
    item = load_items(task).items[0]
    assert TYPES["yes_no"].score(task, item, "y", 0.5)["parsed"] == "other"  # lmms-eval would say yes; MME does not
    assert TYPES["yes_no"].score(task, item, "Yes, there is", 0.5)["correct"] is True


def test_a_missing_mme_image_or_a_line_without_its_answer_is_one_line(mme):
    root = mme.parent / "MME_Benchmark_release_version"
    (root / "existence" / "000000018150.jpg").unlink()
    txt = root / "artwork" / "questions_answers_YN" / "10002.txt"
    txt.write_text("Is this artwork created by Giotto? Please answer yes or no.\tYes\nIs this by Monet? Maybe\n")
    task = load_suite(mme).task("mme")
    with pytest.raises(BackboneSwapError) as caught:
        load_items(task)
    assert (f"{root / 'existence' / '000000018150.txt'}, existence/000000018150: its image 000000018150.jpg or .png "
            f"is missing from {root / 'existence'} (and 1 more)") in caught.value.message
    loaded = load_items(task, on_bad_sample="skip")
    assert len(loaded.items) == 5
    assert loaded.bad[1].describe() == f"{txt}, artwork/10002.jpg#2: line 2 is not 'question<TAB>Yes|No'"


def test_a_folder_in_another_layout_is_refused_in_one_line(mme, tmp_path):
    pope = tmp_path / "pope"
    image(pope / "val2014" / "COCO_val2014_000000310196.jpg")
    (pope / "coco_pope_random.json").write_text('{"question_id": 1}\n')
    with pytest.raises(BackboneSwapError, match=r"pope is not in MME's layout \(no subtask folder such as existence"):
        load_items(load_suite(suite(tmp_path, "{name: m, benchmark: mme, root: pope}")).task("m"))
    with pytest.raises(BackboneSwapError, match=r"coco_pope_random.json is not a folder \(MME: "):
        load_items(load_suite(suite(tmp_path, "{name: m, benchmark: mme, root: pope/coco_pope_random.json}"))
                   .task("m"))
    (tmp_path / "flat" / "existence").mkdir(parents=True)
    image(tmp_path / "flat" / "existence" / "1.jpg")
    with pytest.raises(BackboneSwapError, match=r"existence is not in MME's layout \(no .txt files of questions\)"):
        load_items(load_suite(suite(tmp_path, "{name: m, benchmark: mme, root: flat}")).task("m"))


@pytest.mark.slow
def test_compare_reports_mmes_scores_from_the_answers_written(cli, transplanted, mme, tmp_path):
    out = tmp_path / "cmp"
    for side, model in (("a", transplanted["mistral"]), ("b", transplanted["qwen2"])):
        evaluated = cli("eval", model, "--suite", mme, "-o", out / "eval" / side, "--batch-size", "4")
        assert evaluated.code == 0, evaluated.err
    # A's answers set to the hand-worked example's (compare reads the raw answers again); B's as the model gave them
    ids = [item["id"] for item in load_items(load_suite(mme).task("mme")).items]
    written = {line["id"]: line for line in answers(out / "eval" / "a", "mme")}
    (out / "eval" / "a" / "mme.jsonl").write_text("".join(json.dumps(written[i] | {"prediction": text}) + "\n"
                                                          for i, text in zip(ids, SAID, strict=True)))
    result = cli("compare", transplanted["mistral"], transplanted["qwen2"], "--suite", mme, "-o", out,
                 "--resamples", "200")
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert validate_report(report) == []
    (task,) = report["tasks"]
    assert (task["type"], task["n"]) == ("yes_no", 8)
    assert {metric: pair["a"] for metric, pair in task["official"].items()} == pytest.approx(HAND)
    for side in ("a", "b"):
        lines = answers(out / "eval" / side, "mme")
        references = {f"{subtask}/{name}#{k}": text.split("\t")[1].lower() for subtask, images in RELEASE.items()
                      for name, texts in images.items() for k, text in enumerate(texts, start=1)}

        def reading(text: str) -> str:  # calculation.py's parse_pred_ans, written out again
            text = text.lower()
            return text if text in ("yes", "no") else "yes" if "yes" in text[:4] else "no" if "no" in text[:4] \
                else "other"

        right = {line["id"]: reading(line["prediction"]) == references[line["id"]] for line in lines}
        scores = {}
        for subtask, images in RELEASE.items():
            ids = [[f"{subtask}/{name}#1", f"{subtask}/{name}#2"] for name in images]
            acc = sum(right[i] for pair in ids for i in pair) / (2 * len(ids))
            acc_plus = sum(all(right[i] for i in pair) for pair in ids) / len(ids)
            assert task["official"][f"{subtask}_acc"][side] == pytest.approx(acc)
            assert task["official"][f"{subtask}_acc_plus"][side] == pytest.approx(acc_plus)
            scores[subtask] = 100 * (acc + acc_plus)
        assert task["official"]["perception"][side] == pytest.approx(scores["existence"] + scores["artwork"])
        assert task["official"]["cognition"][side] == pytest.approx(scores["code_reasoning"])
        assert task[f"accuracy_{side}"] == pytest.approx(sum(right.values()) / 8)


def test_an_image_root_is_no_key_of_mme(tmp_path):
    with pytest.raises(BackboneSwapError) as caught:
        load_suite(suite(tmp_path, "{name: m, benchmark: mme, root: MME, image_root: images}"))
    assert "tasks[0].image_root is not a key of mme (its keys: root)" in caught.value.message
