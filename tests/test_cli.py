"""The commands as a user types them: help texts, a short train and eval, and their user errors."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("inspect", ["--llm", "--json", "--allow-pickle"]),
        ("transplant", ["--vlm", "--llm", "--output", "--seed", "--projector", "--chat-template", "--overwrite"]),
        ("train", ["--recipe", "--data", "--image-root", "--set", "--on-bad-sample", "--save-every", "--resume"]),
        ("eval", ["--suite", "--output", "--batch-size", "--probes"]),
        ("compare", ["--suite", "--min-gain", "--weights", "--alpha", "--resamples"]),
    ],
)
def test_help_names_every_option(cli, command, words):
    result = cli(command, "--help")
    assert result.code == 0
    text = " ".join(result.out.split())
    for word in words:
        assert word in text, word


def test_train_then_eval_from_the_command_line(cli, transplanted, colour_data, tmp_path):
    out = tmp_path / "run"
    args = ["train", transplanted["mistral"], "--recipe", "tiny-cpu", "--data", colour_data["train"], "--image-root",
            colour_data["root"], "-o", out, "--set", "stage1.max_steps=1", "--set", "stage2.max_steps=2",
            "--feature-cache", tmp_path / "cache"]
    result = cli(*args)
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["stages"]["stage2"]["max_steps"] == 2
    assert manifest["stages"]["stage1"]["steps"] == 1 and manifest["stages"]["stage2"]["steps"] == 2
    again = cli(*args)
    assert again.code == 1 and "--resume" in again.err
    assert cli(*args, "--resume").code == 0  # finished: nothing to do

    suite = tmp_path / "suite.yaml"
    heldout = colour_data["heldout"]
    items = [json.loads(line) for line in heldout.read_text().splitlines()]
    (tmp_path / "items.jsonl").write_text("".join(
        json.dumps({"id": r["id"], "image": r["image"], "question": "what colour is the shape?",
                    "answer": r["answer"]}) + "\n" for r in items[:4]))
    suite.write_text(f"tasks:\n  - {{name: colour, type: short_answer, needs: perception, data: items.jsonl, "
                     f"image_root: {colour_data['root']}}}\n")
    result = cli("eval", out / "final" / "merged", "--suite", suite, "-o", tmp_path / "eval", "--batch-size", "2")
    assert result.code == 0, result.err
    assert len((tmp_path / "eval" / "colour.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--set", "stage2.lr=-1"], "stages.stage2.lr"),
        (["--set", "stage2.colour=1"], "colour"),
        (["--on-bad-sample", "ignore"], "--on-bad-sample"),
    ],
)
def test_train_user_errors(cli, transplanted, colour_data, tmp_path, extra, words):
    result = cli("train", transplanted["mistral"], "--recipe", "tiny-cpu", "--data", colour_data["train"],
                 "--image-root", colour_data["root"], "-o", tmp_path / "run", *extra)
    assert result.code == 1 and words in result.err and "Traceback" not in result.err
