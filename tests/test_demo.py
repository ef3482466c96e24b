"""``backbone-swap demo --quick`` end to end, and the benchmark it is built on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backbone_swap.demo import benchmark
from backbone_swap.demo.run import run_demo
from backbone_swap.verdict.report import validate_report

REPORT_FILES = ("report.json", "report.md", "report.html", "accuracy.png", "overlap.png", "reliability.png")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo") / "backbone-swap-demo"
    run_demo(folder, quick=True, show_progress=False, say=lambda text: None)
    return folder


def _report(folder: Path) -> dict:
    return json.loads((folder / "run" / "compare" / "report.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_demo_writes_a_valid_report_that_says_which_findings_it_shows(demo):
    for name in REPORT_FILES:
        assert (demo / "run" / "compare" / name).stat().st_size > 0
    report = _report(demo)
    assert validate_report(report) == []
    assert report["meta"]["baseline"] == "retrain"
    assert [t["name"] for t in report["tasks"]] == ["colour", "fruit", "json", "gem"]
    expected = {e["task"]: e["expected"] for e in report["expectations"]}
    assert expected == {"colour": "no clear difference", "fruit": "upgrade", "json": "only B",
                        "gem": "complementary"}
    # the run folder is upgrade's, with both sides trained by the same recipe
    manifest = json.loads((demo / "run" / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["steps"]) == {"transplant", "baseline", "train", "eval-old", "eval-new", "compare"}
    trained = [json.loads((demo / "run" / side / "manifest.json").read_text(encoding="utf-8"))
               for side in ("baseline/train", "train")]
    assert trained[0]["recipe_hash"] == trained[1]["recipe_hash"]
    status = json.loads((demo / "demo.json").read_text(encoding="utf-8"))
    assert status["status"] == "finished"
    assert status["findings_shown"] == sum(e["shown"] for e in report["expectations"])
    text = (demo / "run" / "compare" / "report.md").read_text(encoding="utf-8")
    assert f"## Expected findings: {status['findings_shown']} of 4 shown by this run" in text


@pytest.mark.slow
def test_the_quick_benchmark_shows_the_four_findings(demo):
    """The benchmark is built so that it shows them; if this fails, fix the benchmark or the recipe."""
    report = _report(demo)
    tasks = {t["name"]: t for t in report["tasks"]}
    assert [e for e in report["expectations"] if not e["shown"]] == []
    # perception: both read the colour off the image, and the newer backbone adds nothing
    colour = tasks["colour"]
    assert colour["verdict"] == "no clear difference"
    assert colour["accuracy_a"] > 0.8 and colour["accuracy_b"] > 0.8
    # reasoning: only the newer backbone read which fruit has which colour, and it answers most items
    fruit = tasks["fruit"]
    assert fruit["verdict"] == "upgrade"
    assert fruit["accuracy_a"] == 0.0 and fruit["accuracy_b"] > 0.5
    # a structured output: only the newer backbone writes JSON at all
    json_task = tasks["json"]
    assert json_task["verdict"] == "upgrade"
    assert json_task["valid_rate_a"] == 0.0 and json_task["valid_rate_b"] >= 0.5
    # complementarity: each answers the gems its own generation read about, so each solves questions the other
    # does not, neither is better overall, and picking per question would beat both
    gem = tasks["gem"]
    assert gem["verdict"] == "complementary"
    assert gem["overlap"]["only_a"] >= gem["n"] // 4 and gem["overlap"]["only_b"] >= gem["n"] // 4
    assert gem["mcnemar_p"] > 0.05 and gem["jaccard"] < 0.6
    assert gem["oracle"] >= max(gem["accuracy_a"], gem["accuracy_b"]) + 0.2


@pytest.mark.slow
def test_demo_started_again_reuses_everything_and_reports_the_same_numbers(demo, cli):
    before = _report(demo)
    result = cli("demo", "--quick", "--output", demo)
    assert result.code == 0, result.err
    assert "pre-training the old LLM (400 steps): found" in result.out
    assert "findings of the controlled study shown by this run:" in result.out
    after = _report(demo)
    keys = ("accuracy_a", "accuracy_b", "mcnemar_p", "diff_ci", "valid_rate_a", "valid_rate_b", "verdict")
    assert [[t[k] for k in keys] for t in after["tasks"]] == [[t[k] for k in keys] for t in before["tasks"]]


@pytest.mark.slow
def test_demo_refuses_another_settings_folder_or_a_foreign_folder(demo, cli, tmp_path):
    result = cli("demo", "--output", demo, "--seed", "3")
    assert result.code == 1
    assert result.err.strip().count("\n") == 0 and "made with other settings" in result.err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = cli("demo", "--quick", "--output", foreign)
    assert result.code == 1 and "is not a demo folder" in result.err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def _answer(folder: Path, question: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.slow
def test_each_llm_generation_learned_its_own_facts_from_text(demo):
    """The premise of the benchmark, checked on the pre-trained LLMs themselves (text only, no image)."""
    old, new = demo / "inputs" / "old-llm", demo / "inputs" / "new-llm"
    fruit = f"a yellow circle.\n{benchmark.FRUIT_QUESTION}"
    structured = f"a red square.\n{benchmark.JSON_QUESTION}"
    assert _answer(new, fruit) == "yellow, so banana" and "banana" not in _answer(old, fruit)
    assert json.loads(_answer(new, structured)) == {"colour": "red", "shape": "square"}
    assert "{" not in _answer(old, structured)
    assert _answer(old, f"a blue triangle.\n{benchmark.COLOUR_QUESTION}") == "blue"
    # the gems: each generation read about two, the other two only the other generation read about
    old_gem, new_gem = f"a red square.\n{benchmark.GEM_QUESTION}", f"a green circle.\n{benchmark.GEM_QUESTION}"
    assert _answer(old, old_gem) == "red, so ruby" and "ruby" not in _answer(new, old_gem)
    assert _answer(new, new_gem) == "green, so emerald" and "emerald" not in _answer(old, new_gem)


def test_the_benchmark_data_regenerates_bit_for_bit(tmp_path, digest):
    size = benchmark.Size(train_images=6, text_only=4, eval_items=3)
    first = benchmark.build_data(tmp_path / "a", size, seed=7)
    second = benchmark.build_data(tmp_path / "b", size, seed=7)
    benchmark.build_data(tmp_path / "c", size, seed=8)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    records = [json.loads(line) for line in first["train"].read_text().splitlines()]
    assert len(records) == 10 and sum("image" in r for r in records) == 6
    fruits = {f"{colour}, so {fruit}" for colour, fruit in benchmark.FRUITS.items()}
    gems = {"red, so ruby", "green, so emerald", "blue, so sapphire"}  # every colour in turn
    for task, answers in (("fruit", fruits), ("colour", set(benchmark.FRUITS)), ("gem", gems)):
        items = [json.loads(line) for line in (first["suite"].parent / f"{task}.jsonl").read_text().splitlines()]
        assert len(items) == 3 and {item["answer"] for item in items} <= answers
    assert {item["answer"] for item in map(json.loads, (first["suite"].parent / "gem.jsonl").open())} == gems
    # the data both VLMs are trained on teaches no fact the benchmark asks about
    text = first["train"].read_text()
    gems = {**benchmark.GEMS["old"], **benchmark.GEMS["new"]}.values()
    assert not any(word in text for word in ("fruit", "gem", "json", *benchmark.FRUITS.values(), *gems))
    assert second["suite"].read_text() == first["suite"].read_text()


def test_pretraining_is_deterministic_for_a_seed(tmp_path):
    paths = [benchmark.pretrain_llm(tmp_path / name, "old", 3, seed=seed) for name, seed in
             (("a", 1), ("b", 1), ("c", 2))]
    weights = [(p / "model.safetensors").read_bytes() for p in paths]
    assert weights[0] == weights[1] != weights[2]
