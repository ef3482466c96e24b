"""``compare`` on other tools' outputs: lmms-eval's --log_samples folders, written here in lmms-eval's exact layout
(file names, keys, both versions of ``filtered_resps``), and the answer files of LLaVA's evaluation scripts; the
statistics checked against scipy and hand counts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from test_benchmarks import vqav2  # noqa: F401  (the VQAv2 release files in miniature)

from backbone_swap.verdict.schema import validate_report

RESAMPLES, SEED = 1500, 11


def _doc_hash(doc: dict) -> str:
    """As lmms-eval hashes a document: sha256 of ``json.dumps(doc, indent=2, ensure_ascii=False)``."""
    return hashlib.sha256(json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")).hexdigest()


def _sample(doc_id: int, doc: dict, target: str, answer: str, metrics: dict, *, flattened: bool) -> dict:
    """One line of ``<date>_samples_<task>.jsonl`` as lmms-eval's ``save_results_samples`` leaves it: ``doc`` and
    ``arguments`` popped, ``resps`` popped when it equals ``filtered_resps``, ``target`` as text, the metrics'
    per-sample entries after ``doc_hash``, ``input`` last. Since 0.7 a single answer is written bare
    (``flattened``), before as ``["answer"]``."""
    record = {"doc_id": doc_id, "target": str(target), "filtered_resps": answer if flattened else [answer]}
    if flattened:
        record["token_counts"] = [None]
    record["doc_hash"] = _doc_hash(doc)
    return {**record, **metrics, "input": f"{doc.get('question', '')}\nAnswer the question using a single word."}


def _write(folder: Path, date: str, task: str, samples: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{date}_samples_{task}.jsonl"
    with open(path, "a", encoding="utf-8") as f:  # lmms-eval appends one dump per sample
        for sample in samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")
    return path


def _results(folder: Path, date: str, results: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{date}_results.json").write_text(json.dumps({"results": results, "lmms_eval_version": "0.4.1"}))


POPE_KEYS = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio")


def _pope(correct: np.ndarray, flattened: bool) -> list[dict]:
    samples = []
    for i, right in enumerate(correct):
        doc = {"question_id": str(i), "question": f"Is there a cup in the image {i}?",
               "answer": "yes" if i % 2 else "no", "image_source": f"COCO_val2014_{i // 3:012d}"}
        answer = doc["answer"] if right else ("no" if doc["answer"] == "yes" else "yes")
        entry = {"question_id": doc["question_id"], "score": float(right), "prediction": answer,
                 "ground_truth": doc["answer"]}
        samples.append(_sample(i, doc, doc["answer"], answer, {key: dict(entry) for key in POPE_KEYS},
                               flattened=flattened))
    return samples


def _textvqa(credit: np.ndarray, flattened: bool) -> list[dict]:
    return [_sample(i, {"question_id": 34602 + i, "question": f"what is written on sign {i}?"}, f"word{i}",
                    f"answer {i}", {"exact_match": float(c), "submission": {"question_id": 34602 + i,
                                                                          "answer": f"answer {i}"}},
                    flattened=flattened) for i, c in enumerate(credit)]


def _mme(correct: np.ndarray, flattened: bool) -> list[dict]:
    samples = []
    for i, right in enumerate(correct):
        category = "color" if i < 14 else "code_reasoning"  # perception, then cognition
        key = "mme_perception_score" if category == "color" else "mme_cognition_score"
        doc = {"question_id": f"{category}/{i:03d}.png", "question": "Is the car red?", "answer": "Yes",
               "category": category}
        samples.append(_sample(i, doc, "Yes", "Yes" if right else "No",
                               {key: {"question_id": doc["question_id"], "category": category,
                                      "score": float(right)}}, flattened=flattened))
    return samples


def _mmbench(flattened: bool) -> list[dict]:
    return [_sample(i, {"index": i, "question": "Which one?"}, "A", "A",
                    {"gpt_eval_score": {"index": i, "question": "Which one?", "answer": "A", "prediction": "A"},
                     "submission": {"index": i, "prediction": "A"}}, flattened=flattened) for i in range(5)]


@pytest.fixture
def runs(tmp_path: Path) -> dict:
    """Two lmms-eval runs: A as lmms-eval 0.4 writes into OUT/<model>/ (and an earlier run of POPE beside it), B as
    0.7 writes with the files directly in OUT (no model name)."""
    rng = np.random.default_rng(3)
    pope_a = rng.random(60) < 0.7
    pope_b = pope_a.copy()
    flips = rng.choice(60, 24, replace=False)
    pope_b[flips[:17]] = True
    pope_b[flips[17:]] = False
    credits = np.array([0.0, 0.3, 0.6, 0.9, 1.0])
    text_a, text_b = rng.choice(credits, 50, p=[.3, .1, .1, .1, .4]), rng.choice(credits, 50, p=[.2, .1, .1, .1, .5])
    mme_a, mme_b = rng.random(20) < 0.6, rng.random(20) < 0.8
    folder_a = tmp_path / "logs-a" / "lmms-lab__llava-v1.5-7b"
    _write(folder_a, "20250228_090000", "pope", _pope(~pope_a, flattened=False))  # an earlier run: not read
    for task, samples in {"pope": _pope(pope_a, False), "textvqa_val": _textvqa(text_a, False),
                          "mme": _mme(mme_a, False), "mmbench_en_dev": _mmbench(False),
                          "gqa": _textvqa(text_a[:3], False)}.items():
        _write(folder_a, "20250301_101500", task, samples)
    _results(folder_a, "20250301_101500", {
        "pope": {"alias": "pope", "pope_accuracy,none": float(pope_a.mean()), "pope_accuracy_stderr,none": "N/A",
                 "pope_f1_score,none": 0.71},
        "mme": {"alias": "mme", "mme_perception_score,none": 1510.72, "mme_cognition_score,none": 357.86}})
    folder_b = tmp_path / "logs-b"
    for task, samples in {"pope": _pope(pope_b, True), "textvqa_val": _textvqa(text_b, True),
                          "mme": _mme(mme_b, True), "mmbench_en_dev": _mmbench(True)}.items():
        _write(folder_b, "20250302_111500", task, samples)
    _results(folder_b, "20250302_111500", {
        "pope": {"alias": "pope", "pope_accuracy,none": float(pope_b.mean()), "pope_f1_score,none": 0.8},
        "mme": {"alias": "mme", "mme_perception_score,none": 1621.3, "mme_cognition_score,none": 298.2}})
    return {"a": tmp_path / "logs-a", "b": folder_b, "folder_a": folder_a, "pope": (pope_a, pope_b),
            "textvqa": (text_a, text_b), "mme": (mme_a, mme_b), "root": tmp_path}


def _scipy_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The BCa interval of mean(b) - mean(a) as scipy computes it, with the generator compare uses."""
    found = sps.bootstrap((a.astype(float), b.astype(float)),
                          lambda x, y, axis=-1: np.mean(y, axis=axis) - np.mean(x, axis=axis), paired=True,
                          vectorized=True, method="BCa", n_resamples=RESAMPLES, batch=max(1, 2_000_000 // a.size),
                          rng=np.random.default_rng(SEED)).confidence_interval
    return found.low, found.high


def test_two_lmms_eval_runs_are_compared_with_the_usual_statistics(cli, runs):
    out = runs["root"] / "cmp"
    result = cli("compare", runs["a"], runs["b"], "-o", out, "--resamples", RESAMPLES, "--seed", SEED)
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert validate_report(report) == []
    assert report["meta"]["source"] == "lmms-eval" and report["meta"]["model_a"] == str(runs["folder_a"])
    tasks = {task["name"]: task for task in report["tasks"]}
    assert list(tasks) == ["mme", "pope", "textvqa_val"]

    pope_a, pope_b = runs["pope"]
    pope = tasks["pope"]
    only_a, only_b = int(np.sum(pope_a & ~pope_b)), int(np.sum(~pope_a & pope_b))
    both, neither = int(np.sum(pope_a & pope_b)), int(np.sum(~pope_a & ~pope_b))
    assert pope["overlap"] == {"both": both, "only_a": only_a, "only_b": only_b, "neither": neither}
    assert pope["mcnemar_p"] == pytest.approx(sps.binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)
    assert pope["accuracy_a"] == pytest.approx(pope_a.mean()) and pope["accuracy_b"] == pytest.approx(pope_b.mean())
    assert pope["diff"] == pytest.approx(pope_b.mean() - pope_a.mean())
    assert pope["diff_ci"] == pytest.approx(list(_scipy_interval(pope_a, pope_b)), abs=1e-9)
    assert pope["phi"] == pytest.approx(np.corrcoef(pope_a, pope_b)[0, 1])
    n = pope_a.size
    po, pe = (both + neither) / n, ((both + only_a) * (both + only_b) + (only_b + neither) * (only_a + neither)) / n**2
    assert pope["kappa"] == pytest.approx((po - pe) / (1 - pe))
    assert pope["metric"] == "pope_accuracy" and pope["scored_by"] == "lmms-eval" and pope["needs"] == "perception"
    assert pope["files"]["a"].endswith("lmms-lab__llava-v1.5-7b/20250301_101500_samples_pope.jsonl")
    assert pope["official"] == {"pope_accuracy": {"a": pytest.approx(pope_a.mean()), "b": pytest.approx(pope_b.mean())},
                                "pope_f1_score": {"a": 0.71, "b": 0.8}}

    # partial credit (TextVQA's VQA accuracy): accuracy and its interval on the credit, the paired table on full credit
    text_a, text_b = runs["textvqa"]
    textvqa = tasks["textvqa_val"]
    assert textvqa["accuracy_a"] == pytest.approx(text_a.mean()) and textvqa["diff"] == pytest.approx(
        text_b.mean() - text_a.mean())
    assert textvqa["diff_ci"] == pytest.approx(list(_scipy_interval(text_a, text_b)), abs=1e-9)
    solved_a, solved_b = text_a == 1.0, text_b == 1.0
    assert textvqa["overlap"]["only_a"] == int(np.sum(solved_a & ~solved_b))
    assert textvqa["oracle"] == pytest.approx(np.mean(solved_a | solved_b))
    assert textvqa["solved_when"].startswith("lmms-eval's per-sample exact_match is 1;")

    mme = tasks["mme"]
    assert mme["metric"] == "mme_perception_score / mme_cognition_score"
    assert mme["accuracy_b"] == pytest.approx(runs["mme"][1].mean())
    for task in tasks.values():  # no confidences, no hidden states
        assert task["ece_a"] is None and task["brier_b"] is None and task["cka_a"] is None
        assert task["reliability_a"] == []
        assert task["unavailable"]["calibration"] == "the logs hold no confidences"

    warnings = " | ".join(report["warnings"])
    assert ("A holds 2 logs of task pope (dates 20250228_090000, 20250301_101500); using the newest, "
            "20250301_101500_samples_pope.jsonl") in warnings
    assert "task gqa is only in A's logs" in warnings
    assert "task mmbench_en_dev: its logs hold no per-sample score in [0, 1] (their entries: gpt_eval_score, " \
           "submission); left out" in warnings
    assert "warning: task gqa is only in A's logs" in result.err

    text = (out / "report.md").read_text()
    assert "Calibration: not available: the logs hold no confidences." in text
    assert "Stability: not available: the logs hold no hidden states." in text
    assert "| mme_perception_score | 1510.7 | 1621.3 |" in text
    assert "Scored by lmms-eval: per-sample pope_accuracy" in text
    assert "Solved when lmms-eval's per-sample pope_accuracy is 1" in text
    assert "not available: the logs hold no confidences" in (out / "report.html").read_text()


def test_documents_that_differ_between_the_runs_are_refused_in_one_line(cli, runs):
    path = runs["b"] / "20250302_111500_samples_pope.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[3])
    record["doc_hash"] = _doc_hash({"question": "another document"})
    path.write_text("\n".join([*lines[:3], json.dumps(record), *lines[4:]]) + "\n")
    result = cli("compare", runs["a"], runs["b"], "-o", runs["root"] / "cmp")
    assert result.code == 1
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert "task pope, doc_id 3: the two runs saw different documents (doc_hash" in result.err
    path.write_text("\n".join(lines[:-1]) + "\n")  # B's run stopped one document short
    result = cli("compare", runs["a"], runs["b"], "-o", runs["root"] / "cmp")
    assert result.code == 1 and "task pope: the two runs logged different documents" in result.err
    assert "lacks 1 doc_ids" in result.err and "(e.g. 59)" in result.err


def test_an_ambiguous_score_is_refused_naming_the_candidates_and_chosen_with_metric(cli, runs):
    strict_a, strict_b = np.array([1, 0, 1, 0, 1, 1, 0, 0]), np.array([1, 1, 1, 0, 0, 1, 1, 0])
    lenient_a, lenient_b = np.array([1, 1, 1, 0, 1, 1, 1, 0]), np.array([1, 1, 1, 1, 0, 1, 1, 1])
    for folder, strict, lenient, flattened in ((runs["folder_a"], strict_a, lenient_a, False),
                                               (runs["b"], strict_b, lenient_b, True)):
        _write(folder, "20250303_080000", "chartqa", [
            _sample(i, {"question": f"q{i}"}, "12", "12", {"relaxed_overall": float(lenient[i]),
                                                           "exact_overall": float(strict[i])}, flattened=flattened)
            for i in range(8)])
    result = cli("compare", runs["a"], runs["b"], "-o", runs["root"] / "cmp")
    assert result.code == 1 and result.err.count("\n") == 1
    assert "lmms-eval task chartqa has several per-sample scores that disagree" in result.err
    assert "relaxed_overall 1, exact_overall 0" in result.err
    assert "--metric chartqa=KEY, one of relaxed_overall, exact_overall" in result.err

    out = runs["root"] / "cmp"
    result = cli("compare", runs["a"], runs["b"], "-o", out, "--metric", "chartqa=exact_overall", "--resamples", 200)
    assert result.code == 0, result.err
    chartqa = next(t for t in json.loads((out / "report.json").read_text())["tasks"] if t["name"] == "chartqa")
    assert chartqa["metric"] == "exact_overall" and chartqa["needs"] == "reasoning"
    assert chartqa["accuracy_a"] == pytest.approx(0.5) and chartqa["accuracy_b"] == pytest.approx(5 / 8)
    assert chartqa["overlap"] == {"both": 3, "only_a": 1, "only_b": 2, "neither": 2}

    bad = cli("compare", runs["a"], runs["b"], "-o", runs["root"] / "cmp2", "--metric", "chartqa=input")
    assert bad.code == 1 and "its input is" in bad.err and "not a score in [0, 1]" in bad.err
    bad = cli("compare", runs["a"], runs["b"], "-o", runs["root"] / "cmp2", "--metric", "nothing=score")
    assert bad.code == 1 and "--metric names task nothing, which neither log folder holds" in bad.err


@pytest.mark.parametrize("damage, words", [
    (lambda text: text.replace("}\n", "\n", 1), "line 1 is not JSON"),
    (lambda text: text.replace('"doc_id": 0,', '"id": 0,', 1), "line 1 has no doc_id"),
    (lambda text: text.replace('"doc_id": 1,', '"doc_id": 0,', 1), "line 2: doc_id 0 appears twice (line 1 too)"),
])
def test_a_broken_log_is_one_line_naming_the_file_and_the_line(cli, runs, damage, words):
    path = runs["b"] / "20250302_111500_samples_textvqa_val.jsonl"
    path.write_text(damage(path.read_text()))
    result = cli("compare", runs["a"], runs["b"], "-o", runs["root"] / "cmp")
    assert result.code == 1 and result.err.count("\n") == 1
    assert f"{path} {words}" in result.err


def test_inputs_of_different_kinds_or_misplaced_options_are_refused(cli, runs, kit, tmp_path):
    out = tmp_path / "cmp"
    mixed = cli("compare", runs["a"], kit.vlm, "-o", out)
    assert mixed.code == 1 and "is an lmms-eval log folder and B" in mixed.err and "a model folder" in mixed.err
    assert cli("compare", runs["a"], runs["b"], "-o", out, "--suite", "shapes").err.startswith(
        "error: --suite is not used with lmms-eval logs")
    assert "needs --suite" in cli("compare", kit.vlm, kit.vlm, "-o", out).err
    (tmp_path / "both").mkdir()
    for name in ("x__one", "x__two"):
        _write(tmp_path / "both" / name, "20250301_101500", "pope", _pope(np.array([True, False]), True))
    several = cli("compare", tmp_path / "both", runs["b"], "-o", out)
    assert several.code == 1 and "holds the lmms-eval logs of several models (x__one, x__two)" in several.err
    only_results = tmp_path / "aggregated"
    _results(only_results, "20250301_101500", {})
    assert "no per-sample logs" in cli("compare", only_results, runs["b"], "-o", out).err
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# LLaVA's answer files
# --------------------------------------------------------------------------------------------------


def _answers(path: Path, answers: dict) -> Path:
    """An answer file as llava.eval.model_vqa_loader writes it."""
    with open(path, "w") as f:
        for i, (qid, text) in enumerate(answers.items()):
            f.write(json.dumps({"question_id": qid, "prompt": "What colour?\nAnswer the question using a single word "
                                "or phrase.", "text": text, "answer_id": f"ans{i:04d}", "model_id": "llava-v1.5-7b",
                                "metadata": {}}) + "\n")
    return path


def test_llava_answer_files_are_paired_with_a_task_of_a_suite(cli, tmp_path):
    rng = np.random.default_rng(4)
    n = 40
    colours = ["red", "green", "blue", "yellow"]
    truth = rng.choice(len(colours), n)
    items = [{"id": f"q{i}", "image": f"img{i}.png", "question": "What colour is the shape?",
              "answer": colours[t], "choices": colours} for i, t in enumerate(truth)]
    (tmp_path / "pick.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    (tmp_path / "name.jsonl").write_text("".join(json.dumps({k: v for k, v in item.items() if k != "choices"}) + "\n"
                                                 for item in items))
    (tmp_path / "suite.yaml").write_text(
        "name: mine\ntasks:\n  - {name: pick, type: multiple_choice, needs: perception, data: pick.jsonl}\n"
        "  - {name: name, type: short_answer, needs: perception, data: name.jsonl}\n")
    right_a, right_b = rng.random(n) < 0.5, rng.random(n) < 0.75
    letters = "ABCD"

    def letter(i: int, right: bool) -> str:  # LLaVA's prompts ask for the option's letter
        return letters[truth[i]] if right else letters[(truth[i] + 1) % 4]

    a = _answers(tmp_path / "a.jsonl", {f"q{i}": letter(i, r) for i, r in enumerate(right_a)})
    b = _answers(tmp_path / "b.jsonl", {f"q{i}": f"{letter(i, r)}. {colours[0]}" for i, r in enumerate(right_b)})
    out = tmp_path / "cmp"
    needs_task = cli("compare", a, b, "--suite", tmp_path / "suite.yaml", "-o", out)
    assert needs_task.code == 1 and "Name it with --task, one of pick, name" in needs_task.err
    result = cli("compare", a, b, "--suite", tmp_path / "suite.yaml", "--task", "pick", "-o", out,
                 "--resamples", RESAMPLES, "--seed", SEED)
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert validate_report(report) == [] and report["meta"]["source"] == "llava-answers"
    (pick,) = report["tasks"]
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    assert pick["overlap"]["only_a"] == only_a and pick["overlap"]["only_b"] == only_b
    assert pick["accuracy_a"] == pytest.approx(right_a.mean()) and pick["accuracy_b"] == pytest.approx(right_b.mean())
    assert pick["mcnemar_p"] == pytest.approx(sps.binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)
    # one image per question, so the items are resampled one by one: scipy's BCa interval, in the ids' order
    order = np.argsort([f"q{i}" for i in range(n)])
    assert pick["diff_ci"] == pytest.approx(list(_scipy_interval(right_a[order], right_b[order])), abs=1e-9)
    assert pick["ece_a"] is None and pick["unavailable"]["calibration"] == "the answer files hold no confidences"
    assert pick["solved_when"] == "it picks the right option (no partial credit)"

    _answers(b, {f"q{i}": "A" for i in range(n - 2)})
    missing = cli("compare", a, b, "--suite", tmp_path / "suite.yaml", "--task", "name", "-o", tmp_path / "c2")
    assert missing.code == 1 and f"{b} has no answer for 2 of task name's 40 items" in missing.err


def test_llava_answers_to_vqav2_are_scored_as_vqav2_scores_them(cli, vqav2, tmp_path):  # noqa: F811
    # question 420: nine say "red", one "dark red"; 421: two "1", eight "one shape"; 70: ten "no".
    # A: red 1.0, "1" (2 of 10 annotators) 0.6, no 1.0; B: "dark red" (1 of 10) 0.3, "one shape" 1.0, yes 0.
    a = _answers(tmp_path / "a.jsonl", {420: "Red", 421: "1", 70: "No"})
    b = _answers(tmp_path / "b.jsonl", {70: "yes", 421: "one shape", 420: "dark red", 999: "not asked"})
    out = tmp_path / "cmp"
    result = cli("compare", a, b, "--suite", vqav2, "-o", out, "--resamples", 300)
    assert result.code == 0, result.err
    (vqa,) = json.loads((out / "report.json").read_text())["tasks"]
    assert vqa["accuracy_a"] == pytest.approx(2.6 / 3) and vqa["accuracy_b"] == pytest.approx(1.3 / 3)
    assert vqa["overlap"] == {"both": 0, "only_a": 2, "only_b": 1, "neither": 0}
    assert vqa["official"]["accuracy_number"] == {"a": pytest.approx(0.6), "b": pytest.approx(1.0)}
    assert vqa["official"]["accuracy_yes/no"] == {"a": 1.0, "b": 0.0}
    assert "| accuracy_other | 100.0% | 30.0% |" in (out / "report.md").read_text()


def test_a_run_of_lmms_eval_before_0_3_is_read_too(cli, runs):
    """lmms-eval 0.2 wrote OUT/<date>_<suffix>_<model>_model_args_<hash>/ with results.json and <task>.json holding
    {args, model_configs, logs: [samples sorted by doc_id, doc and arguments kept], time}."""
    pope_a, pope_b = runs["pope"]
    folder = runs["root"] / "old-lmms-eval" / "0301_1015_llava_v1.5_llava_model_args_2f1a3c"
    folder.mkdir(parents=True)
    logs = []
    for sample in _pope(pope_a, flattened=False):
        doc = {"question_id": str(sample["doc_id"]), "answer": "yes" if sample["doc_id"] % 2 else "no"}
        answer = sample["filtered_resps"][0]
        logs.append({"doc_id": sample["doc_id"], "doc": doc, "target": sample["target"],
                     "arguments": {"0": "max_new_tokens"}, "resps": [[answer]], "filtered_resps": [answer],
                     "doc_hash": sample["doc_hash"], "prompt_hash": "p", "target_hash": "t",
                     **{key: sample[key] for key in POPE_KEYS}})
    (folder / "pope.json").write_text(json.dumps({"args": {}, "model_configs": {"task": "pope"}, "logs": logs,
                                                  "time": "0301_1015"}, indent=4))
    (folder / "results.json").write_text(json.dumps({"results": {"pope": {"pope_accuracy,none": 0.5}},
                                                     "configs": {"pope": {"task": "pope"}, "mme": {"task": "mme"}}}))
    out = runs["root"] / "cmp"
    result = cli("compare", folder, runs["b"], "-o", out, "--resamples", 200)
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    (pope,) = report["tasks"]
    assert pope["accuracy_a"] == pytest.approx(pope_a.mean()) and pope["accuracy_b"] == pytest.approx(pope_b.mean())
    assert pope["official"]["pope_accuracy"] == {"a": 0.5, "b": pytest.approx(pope_b.mean())}
    assert pope["files"]["a"] == str(folder / "pope.json")
    logs[4]["doc_id"] = 3
    (folder / "pope.json").write_text(json.dumps({"logs": logs}))
    bad = cli("compare", folder, runs["b"], "-o", runs["root"] / "cmp2")
    assert bad.code == 1 and f"{folder / 'pope.json'} logs[4]: doc_id 3 appears twice (logs[3] too)" in bad.err
