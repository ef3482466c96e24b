"""Every shipped suite loads, its data is valid, and the example data regenerates from its seed."""

from __future__ import annotations

from PIL import Image, ImageChops

from backbone_swap.demo.scenes import example_suite
from backbone_swap.evaluate.scoring import score_description
from backbone_swap.evaluate.suite import load_suite, read_items, shipped_suites
from backbone_swap.training.data import open_image, resolve_image


def test_every_shipped_suite_loads_with_valid_items():
    suites = shipped_suites()
    assert "shapes" in suites
    for name in suites:
        suite = load_suite(name)
        for task in suite.tasks:
            items = read_items(task)
            assert items, task.name
            for item in items:
                open_image(resolve_image(item["image"], task.image_root))


def test_the_example_suite_regenerates_from_its_seed(tmp_path):
    shipped = shipped_suites()["shapes"].parent / "shapes"
    fresh = example_suite(tmp_path / "shapes")
    for task in ("colour", "pick", "describe", "where"):
        assert (fresh / f"{task}.jsonl").read_text() == (shipped / f"{task}.jsonl").read_text()
    for image in sorted((shipped / "images").glob("*.png")):
        with Image.open(image) as a, Image.open(fresh / "images" / image.name) as b:
            assert ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox() is None


def test_the_shipped_suite_evaluates_every_task_type(cli, transplanted, tmp_path):
    import json

    result = cli("eval", transplanted["mistral"], "--suite", "shapes", "-o", tmp_path / "ev", "--batch-size", "6")
    assert result.code == 0, result.err
    for task in ("colour", "pick", "describe", "where"):
        lines = [json.loads(x) for x in (tmp_path / "ev" / f"{task}.jsonl").read_text().splitlines()]
        assert len(lines) == 12 and all(0 <= line["confidence"] <= 1 for line in lines)
    describe = [json.loads(x) for x in (tmp_path / "ev" / "describe.jsonl").read_text().splitlines()]
    assert all(line["score"] == score_description(line["prediction"], line["reference"]) for line in describe)


def test_the_llava15_example_names_the_usual_evaluation_set_with_keys_its_benchmarks_take():
    """Shipped in a subfolder (no data beside it, so the test above does not load it); its tasks validate."""
    import yaml

    from backbone_swap.evaluate.benchmarks import BENCHMARKS
    from backbone_swap.evaluate.suite import suite_from_dict

    path = shipped_suites()["shapes"].parent / "llava15" / "suite.yaml"
    assert "llava15" not in shipped_suites()
    data = yaml.safe_load(path.read_text())
    assert [task["benchmark"] for task in data["tasks"]] == [
        "vqav2", "gqa", "scienceqa", "textvqa", "pope", "pope", "pope", "mme", "mmbench", "seedbench"]
    known = [task for task in data["tasks"] if task["benchmark"] in BENCHMARKS]  # every one, once all are registered
    suite = suite_from_dict({**data, "tasks": known}, path)
    root = path.parent.resolve()
    assert suite.task("scienceqa-img").problems == root / "scienceqa" / "problems.json"
    assert suite.task("textvqa").image_root == root / "textvqa" / "train_images"
