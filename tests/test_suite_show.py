"""``backbone-swap suite show``: each task's source, counts and notes, counting bad items instead of stopping."""

from __future__ import annotations

import json

import pytest
import release_layouts


@pytest.fixture
def suite_path(tmp_path):
    """The four benchmarks' files, a data file of our own with one image missing, and a SEED-Bench task whose
    file repeats a question id."""
    (tmp_path / "bad").mkdir()
    tasks = [release_layouts.textvqa(tmp_path), release_layouts.gqa(tmp_path), release_layouts.scienceqa(tmp_path),
             release_layouts.seedbench(tmp_path),
             release_layouts.seedbench(tmp_path / "bad", "seed2").replace("SEED-Bench", "bad/SEED-Bench"),
             "{name: own, type: short_answer, needs: format, data: own.jsonl, image_root: train_images}"]
    data = json.loads((tmp_path / "bad" / "SEED-Bench.json").read_text())
    data["questions"][2]["question_id"] = "102"
    (tmp_path / "bad" / "SEED-Bench.json").write_text(json.dumps(data))
    (tmp_path / "own.jsonl").write_text("".join(json.dumps(record) + "\n" for record in [
        {"id": "a", "image": "0054c91397f2fe05.jpg", "question": "q", "answer": "x"},
        {"id": "b", "image": "gone.jpg", "question": "q", "answer": "x"},
        {"id": "c", "image": None, "question": "q", "answer": "x"},
    ]))
    return release_layouts.suite(tmp_path, *tasks)


def test_json_counts_every_task_and_never_stops_at_bad_items(cli, suite_path):
    result = cli("suite", "show", suite_path, "--json")
    assert result.code == 0, result.err
    tasks = {task["name"]: task for task in json.loads(result.out)["tasks"]}
    assert list(tasks) == ["text", "gqa", "sqa", "seed", "seed2", "own"]
    counts = {name: (t["n"], t["images_found"], t["images_missing"], t["without_image"], t["bad"])
              for name, t in tasks.items()}
    assert counts == {"text": (3, 3, 0, 0, 0), "gqa": (5, 5, 0, 0, 0), "sqa": (2, 2, 0, 0, 0),
                      "seed": (3, 3, 0, 0, 0), "seed2": (2, 2, 0, 0, 1), "own": (3, 1, 1, 1, 0)}
    sqa = tasks["sqa"]
    assert (sqa["benchmark"], sqa["type"], sqa["needs"]) == ("scienceqa", "multiple_choice", "reasoning")
    assert sqa["files"]["problems"] == str(suite_path.parent / "problems.json")
    assert sqa["notes"] == ["ScienceQA: 2 of 4 test questions have an image; the others are left out "
                            "(include_text_only: true takes them too)"]
    assert tasks["seed2"]["bad_examples"] == [
        f"{suite_path.parent / 'bad' / 'SEED-Bench.json'}, item '102': repeats an id of an earlier item"]
    assert tasks["own"]["benchmark"] is None and tasks["own"]["files"]["data"] == str(suite_path.parent / "own.jsonl")
    assert all(task["error"] is None for task in tasks.values())


def test_the_table_names_each_task_and_its_notes(cli, suite_path):
    result = cli("suite", "show", suite_path)
    assert result.code == 0, result.err
    rows = {line.split()[0]: line.split() for line in result.out.splitlines() if line.strip()}
    assert rows["sqa"] == ["sqa", "scienceqa", "multiple_choice", "reasoning", "2", "2", "0", "0"]
    assert rows["seed2"][-4:] == ["2", "2", "0", "1"]
    assert rows["own"] == ["own", "own.jsonl", "short_answer", "format", "3", "1", "1", "0"]
    text = " ".join(result.out.split())
    for words in ("sqa: ScienceQA: 2 of 4 test questions have an image; the others are left out",
                  "seed: SEED-Bench: 3 of 4 questions are on an image",
                  "seed2: bad:", "item '102': repeats an id of an earlier item",
                  "own: asked without an image: 1 of its 3 items"):
        assert words in text, words


def test_a_task_whose_files_cannot_be_read_is_shown_with_its_error_and_fails_the_command(cli, suite_path):
    (suite_path.parent / "testdev_balanced_questions.json").write_text(json.dumps({"questions": []}))
    result = cli("suite", "show", suite_path, "--json")
    assert result.code == 1
    tasks = {task["name"]: task for task in json.loads(result.out)["tasks"]}
    assert "is not in GQA's layout" in tasks["gqa"]["error"] and tasks["text"]["n"] == 3
    assert result.err.startswith("error: task gqa: ") and "is not in GQA's layout" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_help_names_the_command_and_its_option(cli):
    assert "show" in cli("suite", "--help").out
    result = cli("suite", "show", "--help")
    assert result.code == 0 and "--json" in result.out
