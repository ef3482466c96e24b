"""Benchmark release files through the commands: ``suite show``, ``eval`` and ``compare`` on the tiny transplanted
models, and report.json's ``tasks[].official`` against the benchmarks' metrics worked out by hand from the answer
lines the evaluations wrote."""

from __future__ import annotations

import json
from statistics import mean

import pytest
import release_layouts

from backbone_swap.verdict.schema import validate_report


def _lines(folder, task):
    return {line["id"]: line for line in map(json.loads, (folder / f"{task}.jsonl").read_text().splitlines())}


def _textvqa_by_hand(folder, a, b):
    """Give the questions answers built from the two models' raw predictions (their outputs are noise), so the
    soft accuracy of each side is known without normalising anything: 2 of 10 annotators agreeing earn 0.6, 3
    earn 0.9 (7 leave-one-out subsets keep 3 matches, 3 keep 2), 4 or more earn 1."""
    pa, pb = (side["34602"]["prediction"] for side in (a, b))
    qa = a["34603"]["prediction"]
    qb = b["34604"]["prediction"]
    assert len({pa.lower(), pb.lower(), "zzz"}) == 3 and qa.lower() not in ("zzz", b["34603"]["prediction"].lower())
    answers = {"34602": [pa] * 2 + [pb] * 3 + ["zzz"] * 5, "34603": [qa] * 10, "34604": [qb] * 4 + ["zzz"] * 6}
    path = folder / "TextVQA_0.5.1_val.json"
    data = json.loads(path.read_text())
    for record in data["data"]:
        record["answers"] = answers[str(record["question_id"])]
    path.write_text(json.dumps(data))
    assert a["34604"]["prediction"].lower() not in (qb.lower(), "zzz")
    return {"accuracy": ((0.6 + 1.0 + 0.0) / 3, (0.9 + 0.0 + 1.0) / 3)}


def _gqa_by_hand(folder, a, b):
    """Question 201's answer becomes what A said and 205's what B said, as LLaVA submits answers (trailing periods
    stripped, lowercased); GQA's eval.py then compares exactly, over the balanced questions (not 204)."""
    path = folder / "testdev_balanced_questions.json"
    data = json.loads(path.read_text())
    data["201"]["answer"] = a["201"]["prediction"].rstrip(".").lower()
    data["205"]["answer"] = b["205"]["prediction"].rstrip(".").lower()
    path.write_text(json.dumps(data))
    found = {}
    for side in (a, b):
        right = {q: float(side[q]["prediction"].rstrip(".").lower() == data[q]["answer"]) for q in data}
        entails = {"201": ["202"], "202": ["201"], "205": ["201", "202"]}
        values = {
            "accuracy": mean(right[q] for q in ("201", "202", "203", "205")),
            "binary": mean([right["201"], right["203"]]), "open": mean([right["202"], right["205"]]),
            # A answers 201 right, B 205: each side has a right question with entailed ones
            "consistency": mean([mean(right[e] for e in entails[q]) for q in entails if right[q]]),
            "accuracy_structural_verify": right["201"], "accuracy_structural_query": mean([right["202"], right["205"]]),
            "accuracy_structural_choose": right["203"], "accuracy_semantic_attr": mean([right["201"], right["202"]]),
            "accuracy_semantic_rel": right["203"], "accuracy_semantic_obj": right["205"],
        }
        for metric, value in values.items():
            found.setdefault(metric, []).append(value)
    assert found["accuracy"][0] >= 0.25 and found["accuracy"][1] >= 0.25  # 201 for A and 205 for B are right
    return {metric: tuple(values) for metric, values in found.items()}


def _choices_by_hand(folder, task, a, b):
    """Multiple choice: the chosen letter against the released answer (ScienceQA's an index), grouped as the
    fixture's questions are (ScienceQA: subject, context, grade; SEED-Bench: question type)."""
    if task == "sqa":
        problems = json.loads((folder / "problems.json").read_text())
        right = [{q: float(side[q]["prediction"] == "ABCDE"[problems[q]["answer"]]) for q in ("1", "2", "3", "4")}
                 for side in (a, b)]
        groups = {"accuracy": "1234", "accuracy_natural": "14", "accuracy_social": "3", "accuracy_language": "2",
                  "accuracy_has_text": "13", "accuracy_has_image": "12", "accuracy_no_context": "4",
                  "accuracy_grade_1_6": "13", "accuracy_grade_7_12": "24"}
    else:
        questions = {q["question_id"]: q for q in json.loads((folder / "SEED-Bench.json").read_text())["questions"]}
        right = [{q: float(side[q]["prediction"] == questions[q]["answer"]) for q in ("101669", "102", "103")}
                 for side in (a, b)]
        groups = {"accuracy": ["101669", "102", "103"], "accuracy_Instances Counting": ["101669"],
                  "accuracy_Scene Understanding": ["102", "103"]}
    return {metric: tuple(mean(side[q] for q in members) for side in right) for metric, members in groups.items()}


def test_suite_show_eval_and_compare_on_release_files(cli, transplanted, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    layouts = release_layouts
    suite = layouts.suite(data, layouts.textvqa(data), layouts.gqa(data),
                          layouts.scienceqa(data, include_text_only=True), layouts.seedbench(data))
    shown = cli("suite", "show", suite, "--json")
    assert shown.code == 0, shown.err
    assert [(t["name"], t["n"], t["without_image"]) for t in json.loads(shown.out)["tasks"]] == [
        ("text", 3, 0), ("gqa", 5, 0), ("sqa", 4, 2), ("seed", 3, 0)]

    out = tmp_path / "cmp"
    for side, model in (("a", "mistral"), ("b", "qwen2")):
        result = cli("eval", transplanted[model], "--suite", suite, "-o", out / "eval" / side, "--batch-size", "4")
        assert result.code == 0, result.err
    a, b = ({task: _lines(out / "eval" / side, task) for task in ("text", "gqa", "sqa", "seed")} for side in "ab")
    assert set(a["sqa"]) == {"1", "2", "3", "4"}  # the text-only questions were answered too
    expected = {"text": _textvqa_by_hand(data, a["text"], b["text"]), "gqa": _gqa_by_hand(data, a["gqa"], b["gqa"]),
                "sqa": _choices_by_hand(data, "sqa", a["sqa"], b["sqa"]),
                "seed": _choices_by_hand(data, "seed", a["seed"], b["seed"])}

    # compare reuses the two evaluations and scores their raw answers again against the edited answers
    result = cli("compare", transplanted["mistral"], transplanted["qwen2"], "--suite", suite, "-o", out,
                 "--resamples", "200")
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    validate_report(report)
    tasks = {task["name"]: task for task in report["tasks"]}
    for name, metrics in expected.items():
        official = tasks[name]["official"]
        assert set(official) == set(metrics), name
        for metric, (value_a, value_b) in metrics.items():
            assert official[metric] == {"a": pytest.approx(value_a), "b": pytest.approx(value_b)}, (name, metric)
    assert tasks["sqa"]["n"] == 4 and tasks["text"]["n"] == 3
