"""Questions about one image share the computation of the conversation up to the image, and a multiple-choice
prompt is run once for all its options: answers, confidences and option scores equal those of running every
prompt whole, and the answer files read as before."""

from __future__ import annotations

import json

import pytest

from backbone_swap.demo import scenes
from backbone_swap.evaluate.evaluator import Evaluator
from backbone_swap.evaluate.runner import _load_image, evaluate_task
from backbone_swap.evaluate.suite import load_suite, read_items, without_image

WORDINGS = ("what colour is the shape?", "colour?", "name the colour of the shape in the picture",
            "answer with one word: which colour does the shape in the picture have, red, green, blue or yellow?")


@pytest.fixture(scope="module")
def many_per_image(tmp_path_factory):
    """Five images with several questions each (of different lengths, so suffixes need padding), a multiple-choice
    task asking twice about each image with the options rotated, and a question without an image."""
    root = tmp_path_factory.mktemp("shared")
    short, choice = [], []
    for n, item in enumerate(scenes.colour_items(root / "images", 5, seed=7)):
        for k in range(2 + n % 3):
            short.append({**item, "id": f"{item['id']}-{k}", "question": WORDINGS[(n + k) % len(WORDINGS)]})
        colours = list(scenes.COLOURS)
        for k in range(2):
            rotated = colours[k:] + colours[:k]
            choice.append({**item, "id": f"m{item['id']}-{k}", "question": f"{WORDINGS[n % 2]} ({', '.join(rotated)})",
                           "choices": rotated})
    short.append({"id": "text", "image": None, "question": "Which is wet, rain or sand?", "answer": "rain"})
    scenes.write_jsonl(short, root / "short.jsonl")
    scenes.write_jsonl(choice, root / "choice.jsonl")
    (root / "suite.yaml").write_text(
        "name: shared\nprobes: 3\ntasks:\n"
        "  - {name: short, type: short_answer, needs: perception, data: short.jsonl, image_root: images,"
        " max_new_tokens: 5}\n"
        "  - {name: choice, type: multiple_choice, needs: perception, data: choice.jsonl, image_root: images}\n"
    )
    return load_suite(root / "suite.yaml")


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("llm", ["mistral", "qwen2"])
@pytest.mark.parametrize("batch_size", [4, 16])
def test_shared_prefixes_give_the_answers_of_whole_prompts(transplanted, many_per_image, llm, batch_size, tmp_path):
    """Same lines in the same order; the confidences and option probabilities within float tolerance. Batch 4
    splits the questions about one image over two batches; batch 16 holds several images' questions."""
    files = {}
    for shared in (True, False):
        evaluator = Evaluator(transplanted[llm], batch_size=batch_size, share_prefixes=shared)
        out = tmp_path / str(shared)
        out.mkdir()
        for task in many_per_image.tasks:
            evaluate_task(evaluator, task, out)
        files[shared] = {task.name: _lines(out / f"{task.name}.jsonl") for task in many_per_image.tasks}
    for name, lines in files[True].items():
        whole = files[False][name]
        # the order of the file is the one batches were formed in before: with an image first, short questions first
        order = sorted(read_items(many_per_image.task(name)),
                       key=lambda it: (without_image(it), len(it["question"]), str(it["id"])))
        assert [line["id"] for line in lines] == [line["id"] for line in whole] == [str(it["id"]) for it in order]
        for line, alone in zip(lines, whole, strict=True):
            assert {k: v for k, v in line.items() if k not in ("confidence", "probabilities")} == {
                k: v for k, v in alone.items() if k not in ("confidence", "probabilities")}
            assert line["confidence"] == pytest.approx(alone["confidence"], rel=1e-4, abs=1e-6)
            assert line.get("probabilities", []) == pytest.approx(alone.get("probabilities", []), rel=1e-4, abs=1e-6)


def test_a_resumed_file_ends_in_the_order_of_an_uninterrupted_run(transplanted, many_per_image, tmp_path):
    """Answers are computed image by image and a stopped run leaves some of them: the remaining ones are appended,
    then the file is put back in the items' order, line for line that of a run never stopped."""
    task = many_per_image.task("short")
    evaluator = Evaluator(transplanted["mistral"], batch_size=4)
    (tmp_path / "full").mkdir()
    full = (evaluate_task(evaluator, task, tmp_path / "full")).read_text().splitlines()
    (tmp_path / "resumed").mkdir()
    (tmp_path / "resumed" / "short.jsonl").write_text("\n".join([full[7], full[2], full[-1], full[3]]) + "\n")
    answered = []
    evaluate_task(evaluator, task, tmp_path / "resumed", on_items=answered.append)
    assert sum(answered) == len(full) - 4
    resumed = (tmp_path / "resumed" / "short.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in resumed] == [json.loads(line)["id"] for line in full]
    assert [line for line in resumed if line in full] == [line for line in full if line in resumed]


def test_generated_answers_of_shared_prefixes_equal_generate_alone(transplanted, many_per_image):
    """One batch mixing images, one image's questions apart, and a question asked of an image the previous call
    ended with: each answer and confidence as when the question is generated alone."""
    task = many_per_image.task("short")
    items = [item for item in read_items(task) if item["image"]]
    images = {item["image"]: _load_image(task, item) for item in items}
    shared = Evaluator(transplanted["mistral"], share_prefixes=True)
    alone = Evaluator(transplanted["mistral"], share_prefixes=False)
    batches = [items[:3] + items[5:7] + items[3:5], items[7:9], items[9:]]
    for batch in batches:
        got = shared.generate([images[i["image"]] for i in batch], [i["question"] for i in batch], task)
        assert shared._last_prefix is not None and alone._last_prefix is None, "only one ran image prefixes"
        for item, (text, confidence) in zip(batch, got, strict=True):
            [(expected, expected_confidence)] = alone.generate([images[item["image"]]], [item["question"]], task)
            assert text == expected
            assert confidence == pytest.approx(expected_confidence, rel=1e-4, abs=1e-6)


def test_option_scores_of_a_shared_prefix_equal_whole_prompts(transplanted, many_per_image):
    task = many_per_image.task("choice")
    items = read_items(task)
    images = {item["image"]: _load_image(task, item) for item in items}
    shared = Evaluator(transplanted["qwen2"], share_prefixes=True)
    alone = Evaluator(transplanted["qwen2"], share_prefixes=False)
    for item in items:  # the rotations of one question follow each other: the image's prefix is reused
        image = images[item["image"]]
        got = shared.option_logprobs(image, item["question"], item["choices"], task)
        expected = alone.option_logprobs(image, item["question"], item["choices"], task)
        assert shared._last_prefix.image is image and alone._last_prefix is None
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-4)
