"""``backbone-swap compare``: the numbers of each task against independent computations, and the report
of a real comparison of two models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from backbone_swap.evaluate.suite import Task
from backbone_swap.verdict.compare import task_statistics
from backbone_swap.verdict.report import validate_report


def _write(folder, name, correct, confidence, ids):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.jsonl", "w") as f:
        for i, c, p in zip(ids, correct, confidence, strict=True):
            # the answer "y" is right, "x" wrong, as the tasks' data below say: compare scores them again
            f.write(json.dumps({"id": i, "prediction": "y" if c else "x", "reference": "y", "correct": bool(c),
                                "confidence": float(p)}) + "\n")


def test_task_statistics_on_constructed_predictions(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    ids = [f"q{i}" for i in range(n)]
    a = rng.random(n) < 0.5
    b = a.copy()
    flip = rng.choice(n, 60, replace=False)
    b[flip[:45]] = True  # B gains on 45 items (some already right)
    b[flip[45:]] = False
    conf_a, conf_b = rng.random(n), rng.random(n)
    _write(tmp_path / "a", "t", a, conf_a, ids)
    _write(tmp_path / "b", "t", b, conf_b, ids)
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps({"id": i, "image": f"{i}.png", "question": "q", "answer": "y"}) + "\n"
                            for i in ids))
    task = Task(name="t", type="short_answer", needs="reasoning", data=data, image_root=tmp_path)
    s = task_statistics(task, tmp_path / "a", tmp_path / "b", n_resamples=2000, seed=0)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    assert s["overlap"] == {"both": int(np.sum(a & b)), "only_a": only_a, "only_b": only_b,
                            "neither": int(np.sum(~a & ~b))}
    assert s["accuracy_a"] == pytest.approx(a.mean()) and s["diff"] == pytest.approx(b.mean() - a.mean())
    assert s["mcnemar_p"] == pytest.approx(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)
    assert s["phi"] == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert s["diff_ci"][0] < s["diff"] < s["diff_ci"][1]
    assert s["brier_a"] == pytest.approx(np.mean((conf_a - a) ** 2))
    assert s["oracle"] == pytest.approx(np.mean(a | b))
    assert s["cka_a"] is None and s["valid_rate_a"] is None


def test_examples_show_questions_each_model_alone_solves_and_neither_does(tmp_path):
    from backbone_swap.verdict.report import write_report

    ids = [f"q{i}" for i in range(10)]
    a = [True, True, True, False, False, False, False, True, False, True]
    b = [True, False, False, True, True, True, False, True, False, False]
    _write(tmp_path / "eval" / "a", "t", a, [0.5] * 10, ids)
    _write(tmp_path / "eval" / "b", "t", b, [0.5] * 10, ids)
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps({"id": i, "image": f"{i}.png", "question": f"what is {i}?", "answer": "y"})
                            + "\n" for i in ids))
    task = Task(name="t", type="short_answer", needs="reasoning", data=data, image_root=tmp_path)
    s = task_statistics(task, tmp_path / "eval" / "a", tmp_path / "eval" / "b", n_resamples=200, seed=0)
    by_kind = {who: [e["id"] for e in s["examples"] if e["solved_by"] == who] for who in ("A", "B", "neither")}
    only_a = [i for i, x, y in zip(ids, a, b, strict=True) if x and not y]
    only_b = [i for i, x, y in zip(ids, a, b, strict=True) if y and not x]
    neither = [i for i, x, y in zip(ids, a, b, strict=True) if not x and not y]
    assert len(by_kind["A"]) == 2 and set(by_kind["A"]) <= set(only_a)
    assert len(by_kind["B"]) == 2 and set(by_kind["B"]) <= set(only_b)
    assert sorted(by_kind["neither"]) == neither  # only two: both shown
    first = s["examples"][0]
    assert (first["question"], first["a"], first["b"], first["reference"]) == (f"what is {first['id']}?", "y", "x", "y")
    paths = write_report(tmp_path / "compare", {**_comparison_around(s)})
    text = paths["markdown"].read_text()
    assert f"| A | what is {first['id']}? | y | x | y |" in text
    assert "Every answer: [A](../eval/a/t.jsonl), [B](../eval/b/t.jsonl)." in text


def _comparison_around(record):
    from backbone_swap.verdict.compare import conclude

    return conclude([dict(record)], {"model_a": "a", "model_b": "b", "suite": "s", "baseline": "as-is"}, [],
                    alpha=0.05, min_gain=0.02, weights=None, n_resamples=200, seed=0)


def test_different_items_are_refused(tmp_path):
    from backbone_swap.errors import BackboneSwapError

    _write(tmp_path / "a", "t", [True, False], [0.5, 0.5], ["1", "2"])
    _write(tmp_path / "b", "t", [True, False], [0.5, 0.5], ["1", "3"])
    data = tmp_path / "t.jsonl"
    data.write_text("".join(f'{{"id": "{i}", "question": "q", "answer": "a"}}\n' for i in "123"))
    task = Task(name="t", type="short_answer", needs="reasoning", data=data, image_root=tmp_path)
    with pytest.raises(BackboneSwapError, match="different items"):
        task_statistics(task, tmp_path / "a", tmp_path / "b", n_resamples=100, seed=0)


def test_a_task_without_items_is_an_error_not_a_traceback(tmp_path):
    from backbone_swap.errors import BackboneSwapError

    _write(tmp_path / "a", "t", [], [], [])
    _write(tmp_path / "b", "t", [], [], [])
    data = tmp_path / "t.jsonl"
    data.write_text("")
    task = Task(name="t", type="short_answer", needs="reasoning", data=data, image_root=tmp_path)
    with pytest.raises(BackboneSwapError, match="no records"):
        task_statistics(task, tmp_path / "a", tmp_path / "b", n_resamples=100, seed=0)


def test_questions_all_on_one_image_give_no_interval_and_no_verdict_from_it(tmp_path):
    from backbone_swap.verdict.decision import task_verdict
    from backbone_swap.verdict.report import to_jsonable

    ids = [f"q{i}" for i in range(40)]
    _write(tmp_path / "a", "t", [i % 8 == 1 for i in range(40)], [0.5] * 40, ids)
    _write(tmp_path / "b", "t", [i % 2 == 0 for i in range(40)], [0.5] * 40, ids)
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps({"id": i, "image": "one.png", "question": "q", "answer": "y"}) + "\n"
                            for i in ids))
    task = Task(name="t", type="short_answer", needs="reasoning", data=data, image_root=tmp_path)
    s = task_statistics(task, tmp_path / "a", tmp_path / "b", n_resamples=500, seed=0)
    assert s["diff"] == pytest.approx(0.375) and s["mcnemar_p"] < 0.05
    assert to_jsonable(s["diff_ci"]) == [None, None]
    verdict, _ = task_verdict(s)
    assert verdict != "upgrade"


def test_answers_to_items_no_longer_in_the_task_are_left_out(tmp_path):
    # Both folders answered q0..q9; the task's data has since dropped q8 and q9 (say, bad references),
    # and B alone was evaluated again into a fresh folder on the 8 items left.
    ids = [f"q{i}" for i in range(10)]
    a = [True, True, False, False, True, False, True, False, True, True]
    b = [True, True, True, False, True, True, True, False]
    _write(tmp_path / "a", "t", a, [0.5] * 10, ids)
    _write(tmp_path / "b", "t", b, [0.5] * 8, ids[:8])
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps({"id": i, "image": f"{i}.png", "question": "q", "answer": "y"}) + "\n"
                            for i in ids[:8]))
    task = Task(name="t", type="short_answer", needs="reasoning", data=data, image_root=tmp_path)
    s = task_statistics(task, tmp_path / "a", tmp_path / "b", n_resamples=200, seed=0)
    assert s["n"] == 8
    assert s["accuracy_a"] == pytest.approx(4 / 8) and s["accuracy_b"] == pytest.approx(6 / 8)
    assert s["overlap"] == {"both": 4, "only_a": 0, "only_b": 2, "neither": 2}


@pytest.mark.slow
def test_compare_two_models_end_to_end(cli, transplanted, suite_file, tmp_path):
    out = tmp_path / "cmp"
    result = cli("compare", transplanted["mistral"], transplanted["qwen2"], "--suite", suite_file, "-o", out,
                 "--resamples", "500", "--batch-size", "4", "--weights", "colour=2,choice=1,where=1")
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert validate_report(report) == []
    assert [t["name"] for t in report["tasks"]] == ["colour", "choice", "where"]
    assert report["overall"]["weights"]["colour"] == 2
    for task in report["tasks"]:
        lines_a = (out / "eval" / "a" / f"{task['name']}.jsonl").read_text().splitlines()
        correct = [json.loads(line)["correct"] for line in lines_a]
        assert task["accuracy_a"] == pytest.approx(sum(correct) / len(correct))
        assert task["cka_a"] is not None and -1e-6 <= task["cka_a"] <= 1 + 1e-6
    where = report["tasks"][2]
    assert where["valid_rate_a"] is not None
    for name in ("report.md", "report.html", "accuracy.png", "overlap.png", "reliability.png"):
        assert (out / name).stat().st_size > 500, name
    assert "colour" in result.out and "overall:" in result.out
    bad = cli("compare", transplanted["mistral"], transplanted["qwen2"], "--suite", suite_file, "-o", out,
              "--weights", "nothing=1")
    assert bad.code == 1 and "nothing" in bad.err


def test_confounds_are_warned_about(tmp_path):
    from backbone_swap.verdict.compare import confounds

    def make(name, kind, recipe, max_length, data):
        transplant_dir = tmp_path / f"{name}-transplant"
        transplant_dir.mkdir()
        (transplant_dir / "manifest.json").write_text(json.dumps({"step": "transplant", "llm": {"kind": kind}}))
        run = tmp_path / f"{name}-run"
        merged = run / "final" / "merged"
        merged.mkdir(parents=True)
        (merged / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 4096}}))
        (run / "manifest.json").write_text(json.dumps({
            "step": "train", "recipe_hash": recipe, "recipe": {"max_length": max_length},
            "inputs": {"model": str(transplant_dir), "data_sha256": data}}))
        return merged

    same = confounds(make("a", "instruct", "h1", 2048, "d"), make("b", "instruct", "h1", 2048, "d"))
    assert same == []
    warned = " ".join(confounds(make("c", "base", "h1", 2048, "d"), make("d", "instruct", "h2", 4096, "e")))
    for words in ("different recipes", "different max lengths (2048 vs 4096)", "different data", "base model"):
        assert words in warned
    untrained = tmp_path / "plain"
    untrained.mkdir()
    assert "not trained here" in " ".join(confounds(untrained, make("e", "base", "h1", 2048, "d")))


def test_vqa_partial_credit_counts_in_accuracy_and_full_credit_in_every_paired_statistic(tmp_path):
    """Ten annotators: 3 said "red", 7 "blue". By the VQA formula (mean over the ten leave-one-out subsets of
    min(1, matches / 3)), "red" earns (3 x 2/3 + 7 x 1) / 10 = 0.9, "blue" 1.0 and "green" 0.

    Accuracy, its difference and calibration count the credit; the overlap, McNemar, phi, kappa, the oracle and
    complementarity count a question solved only at full credit (one binarisation: before, the oracle took the
    better credit while the overlap counted full credit)."""
    from backbone_swap.evaluate.tasks import score_item

    references = ["red"] * 3 + ["blue"] * 7
    items = [{"id": f"q{i}", "image": f"{i}.png", "question": "colour?", "answer": references} for i in range(4)]
    data = tmp_path / "vqa.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    task = Task(name="vqa", type="short_answer", needs="perception", data=data, image_root=tmp_path)
    answers = {"a": ["red", "red", "blue", "green"], "b": ["blue", "red", "green", "green"]}
    for side, predictions in answers.items():
        (tmp_path / side).mkdir()
        with open(tmp_path / side / "vqa.jsonl", "w") as f:
            for item, prediction in zip(items, predictions, strict=True):
                f.write(json.dumps(score_item(task, item, prediction, 0.8)) + "\n")
    s = task_statistics(task, tmp_path / "a", tmp_path / "b", n_resamples=300, seed=0)
    credit_a, credit_b = [0.9, 0.9, 1.0, 0.0], [1.0, 0.9, 0.0, 0.0]
    assert s["accuracy_a"] == pytest.approx(np.mean(credit_a)) and s["accuracy_b"] == pytest.approx(np.mean(credit_b))
    assert s["diff"] == pytest.approx(np.mean(credit_b) - np.mean(credit_a))
    solved_a, solved_b = np.array([0, 0, 1, 0]), np.array([1, 0, 0, 0])  # full credit: "blue" only
    assert s["overlap"] == {"both": 0, "only_a": 1, "only_b": 1, "neither": 2}
    assert s["mcnemar_p"] == pytest.approx(binomtest(1, 2, 0.5).pvalue)
    assert s["phi"] == pytest.approx(np.corrcoef(solved_a, solved_b)[0, 1])
    # oracle: a question is solved when either model solves it, 2 of 4; each model alone solves 1 of 4
    assert s["oracle"] == pytest.approx(np.mean(solved_a | solved_b)) == pytest.approx(0.5)
    assert s["complementarity"] == pytest.approx(0.5 - 0.25)
    # kappa: po = 2/4, pe = (1 * 1 + 3 * 3) / 16 = 10/16, kappa = (8/16 - 10/16) / (6/16) = -1/3
    assert s["kappa"] == pytest.approx(-1 / 3)
    assert s["solved_when"].startswith("its VQA accuracy is 1 (at least 4 of 10 annotators gave the answer")
    # calibration against the credit: every confidence 0.8, one bin, |mean credit - 0.8|
    assert s["ece_a"] == pytest.approx(abs(np.mean(credit_a) - 0.8))
    assert s["brier_b"] == pytest.approx(np.mean((0.8 - np.array(credit_b)) ** 2))


def test_answers_are_scored_again_against_the_current_references(tmp_path):
    """A reference corrected after evaluation: compare scores the kept raw outputs again, and says so."""
    from backbone_swap.errors import BackboneSwapError

    ids = ["q0", "q1", "q2", "q3"]
    _write(tmp_path / "a", "t", [True, True, False, False], [0.9] * 4, ids)  # "y", "y", "x", "x"
    _write(tmp_path / "b", "t", [True, False, False, True], [0.9] * 4, ids)  # "y", "x", "x", "y"
    data = tmp_path / "t.jsonl"
    answers = {"q0": "y", "q1": "y", "q2": "x", "q3": "y"}  # q2's reference was "y" when both were evaluated
    data.write_text("".join(json.dumps({"id": i, "image": f"{i}.png", "question": "q", "answer": answers[i]}) + "\n"
                            for i in ids))
    task = Task(name="t", type="short_answer", needs="reasoning", data=data, image_root=tmp_path)
    s = task_statistics(task, tmp_path / "a", tmp_path / "b", n_resamples=200, seed=0)
    assert s["accuracy_a"] == pytest.approx(3 / 4) and s["accuracy_b"] == pytest.approx(3 / 4)
    assert s["overlap"] == {"both": 2, "only_a": 1, "only_b": 1, "neither": 0}
    assert s["rescored"] == {"a": 1, "b": 1}
    lines = (tmp_path / "b" / "t.jsonl").read_text().splitlines()
    (tmp_path / "b" / "t.jsonl").write_text("\n".join([lines[0].replace('"confidence": 0.9', '"confidence": null'),
                                                      *lines[1:]]) + "\n")
    with pytest.raises(BackboneSwapError, match="item 'q0' lacks a text prediction or a finite confidence"):
        task_statistics(task, tmp_path / "a", tmp_path / "b", n_resamples=200, seed=0)


def test_a_weight_decay_difference_is_named(tmp_path):
    from backbone_swap.verdict.compare import confounds

    def make(name, decay):
        run = tmp_path / name
        merged = run / "final" / "merged"
        merged.mkdir(parents=True)
        stages = {"stage1": {"weight_decay": 0.0}, "stage2": {"weight_decay": decay}}
        (run / "manifest.json").write_text(json.dumps({
            "step": "train", "recipe_hash": f"h-{decay}", "recipe": {"max_length": 2048, "stages": stages},
            "inputs": {"model": str(tmp_path / "none"), "data_sha256": "d"}}))
        return merged

    warned = " ".join(confounds(make("a", 0.0), make("b", 0.1)))
    assert "different weight decay (stage1 0, stage2 0 vs stage1 0, stage2 0.1)" in warned, warned
    assert "weight decay" not in " ".join(confounds(make("c", 0.0), make("d", 0.0)))


def test_a_folder_of_other_files_is_never_written_into(cli, transplanted, suite_file, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my notes")
    result = cli("compare", transplanted["mistral"], transplanted["qwen2"], "--suite", suite_file, "-o", out)
    assert result.code == 1 and "holds other files, not a comparison" in result.err
    assert [p.name for p in out.iterdir()] == ["report.md"] and (out / "report.md").read_text() == "my notes"


def test_comparing_a_model_with_a_copy_of_itself_warns_before_evaluating(cli, transplanted, suite_file, copy_of,
                                                                        tmp_path):
    model = transplanted["mistral"]
    copy = copy_of(model, "copy")
    result = cli("compare", model, copy, "--suite", suite_file, "-o", tmp_path / "cmp", "--resamples", "100")
    assert result.code == 0, result.err
    assert "warning: A and B hold the same weights" in result.err
    assert result.err.index("warning: A and B hold the same weights") < result.err.index("eval ")  # before evaluating
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert report["warnings"][0].startswith("A and B hold the same weights (identical weight files)")
    from backbone_swap.verdict.compare import same_weights

    assert not same_weights(model, transplanted["qwen2"])
