"""``backbone-swap compare``: the numbers of each task against independent computations, and the report
of a real comparison of two models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from backbone_swap.compare import task_statistics
from backbone_swap.evaluate.suite import Task
from backbone_swap.report import validate_report


def _write(folder, name, correct, confidence, ids):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.jsonl", "w") as f:
        for i, c, p in zip(ids, correct, confidence, strict=True):
            f.write(json.dumps({"id": i, "prediction": "x", "reference": "y", "correct": bool(c),
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


def test_different_items_are_refused(tmp_path):
    from backbone_swap.errors import BackboneSwapError

    _write(tmp_path / "a", "t", [True, False], [0.5, 0.5], ["1", "2"])
    _write(tmp_path / "b", "t", [True, False], [0.5, 0.5], ["1", "3"])
    data = tmp_path / "t.jsonl"
    data.write_text('{"id": "1", "question": "q", "answer": "a"}\n')
    task = Task(name="t", type="short_answer", needs="reasoning", data=data, image_root=tmp_path)
    with pytest.raises(BackboneSwapError, match="different items"):
        task_statistics(task, tmp_path / "a", tmp_path / "b", n_resamples=100, seed=0)


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
    from backbone_swap.compare import confounds

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


def test_a_weight_decay_difference_is_named(tmp_path):
    from backbone_swap.compare import confounds

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
