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


def _train_args(model, data, image_root, out, cache):
    return ["train", model, "--recipe", "tiny-cpu", "--data", data, "--image-root", image_root, "-o", out,
            "--set", "stage1.max_steps=1", "--set", "stage2.max_steps=1", "--feature-cache", cache]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.write_bytes(b"\xff\xfe\x00{}\n"), "is not UTF-8 text"),
        (lambda p: p.mkdir(), "is a folder"),
    ],
)
def test_unreadable_data_files_are_one_line(cli, transplanted, colour_data, tmp_path, make, words):
    data = tmp_path / "data.jsonl"
    make(data)
    result = cli(*_train_args(transplanted["mistral"], data, colour_data["root"], tmp_path / "run", tmp_path / "c"))
    assert result.code == 1 and words in result.err, result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert not (tmp_path / "run").exists()


def test_a_mistake_in_the_data_leaves_no_run_behind(cli, transplanted, colour_data, tmp_path):
    records = colour_data["train"].read_text().splitlines()[:8]
    broken = json.loads(records[0]) | {"id": "lost", "image": "no-such-image.png"}
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(records + [json.dumps(broken)]) + "\n")
    args = _train_args(transplanted["mistral"], data, colour_data["root"], tmp_path / "run", tmp_path / "c")
    failed = cli(*args)
    assert failed.code == 1 and "'lost'" in failed.err and "not found" in failed.err
    assert not (tmp_path / "run").exists()
    data.write_text("\n".join(records) + "\n")  # fixed: the same command now simply runs
    assert cli(*args).code == 0


def test_train_never_writes_into_a_folder_of_other_files(cli, transplanted, colour_data, tmp_path, digest):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("my notes")
    args = _train_args(transplanted["mistral"], colour_data["train"], colour_data["root"], out, tmp_path / "c")
    for extra in ([], ["--resume"]):
        result = cli(*args, *extra)
        assert result.code == 1 and "holds other files, not a training run" in result.err, result.err
        assert "--resume" not in result.err
        assert sorted(p.name for p in out.iterdir()) == ["todo.txt"]
    model = transplanted["mistral"]
    before = digest(model)
    for inside in (model, model / "run"):
        result = cli(*_train_args(model, colour_data["train"], colour_data["root"], inside, tmp_path / "c"),
                     "--resume")
        assert result.code == 1 and "overlaps the model folder" in result.err, result.err
    assert digest(model) == before
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = cli(*_train_args(model, colour_data["train"], colour_data["root"], a_file, tmp_path / "c"))
    assert result.code == 1 and "is not a folder" in result.err and "Traceback" not in result.err


def test_a_template_without_a_special_end_of_turn_is_refused(cli, kit, colour_data, suite_file, tmp_path):
    # a LLaVA-1.5 style template written for Llama 2 ('</s>' after each reply), given to an LLM whose
    # vocabulary has no '</s>': the separator is plain text, and nothing would teach the model to stop
    template = tmp_path / "vicuna.jinja"
    template.write_text("{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
                        "{% else %}ASSISTANT: {{ m['content'] }}</s>{% endif %}{% endfor %}"
                        "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    model = tmp_path / "model"
    made = cli("transplant", "--vlm", kit.vlm, "--llm", kit.qwen2, "-o", model, "--chat-template", template)
    assert made.code == 0, made.err
    result = cli(*_train_args(model, colour_data["train"], colour_data["root"], tmp_path / "run", tmp_path / "c"))
    assert result.code == 1 and "no special end-of-turn token" in result.err, result.err
    assert "'<|endoftext|>'" in result.err and result.err.count("\n") == 1
    assert not (tmp_path / "run").exists()
    # upgrade finds it in its plan, before the transplant
    upgraded = cli("upgrade", "--vlm", kit.vlm, "--llm", kit.qwen2, "--chat-template", template, "--recipe",
                   "tiny-cpu", "--data", colour_data["train"], "--image-root", colour_data["root"], "--suite",
                   suite_file, "-o", tmp_path / "up", "--dry-run")
    assert upgraded.code == 1 and "no special end-of-turn token" in upgraded.err, upgraded.err
    assert "Pass --chat-template FILE, a template that ends each reply" in upgraded.err
    assert not (tmp_path / "up").exists()


def test_resume_accepts_the_same_model_written_another_way(cli, transplanted, colour_data, tmp_path, monkeypatch):
    model = transplanted["mistral"]
    monkeypatch.chdir(model.parent)
    args = _train_args(model.name, colour_data["train"], colour_data["root"], tmp_path / "run", tmp_path / "c")
    assert cli(*args).code == 0
    again = _train_args(model, colour_data["train"], colour_data["root"], tmp_path / "run", tmp_path / "c")
    result = cli(*again, "--resume")
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["inputs"]["model"] == str(model.resolve())


@pytest.mark.parametrize("targets", ["[query_key_value]", "[q_proj, lm_head]", "[linear_1]"])
def test_lora_targets_outside_the_language_model_are_refused_before_training(cli, transplanted, colour_data, tmp_path,
                                                                              targets):
    result = cli(*_train_args(transplanted["mistral"], colour_data["train"], colour_data["root"], tmp_path / "run",
                              tmp_path / "c"), "--set", f"stage2.lora.targets={targets}")
    assert result.code == 1 and "is no layer of the language model" in result.err, result.err
    assert "q_proj" in result.err and "Traceback" not in result.err and result.err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("remove", [("tokenizer.json", "tokenizer_config.json"), ("processor_config.json",)])
def test_a_model_folder_without_its_processor_is_one_line(cli, transplanted, colour_data, copy_of, tmp_path, remove):
    model = copy_of(transplanted["mistral"], "model")
    for name in remove:
        (model / name).unlink()
    result = cli(*_train_args(model, colour_data["train"], colour_data["root"], tmp_path / "run", tmp_path / "c"))
    assert result.code == 1 and "could not be loaded" in result.err, result.err
    assert "Traceback" not in result.err and result.err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_model_without_a_pad_token_is_refused_before_training(cli, transplanted, colour_data, copy_of, tmp_path):
    model = copy_of(transplanted["mistral"], "model")
    config = json.loads((model / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    result = cli(*_train_args(model, colour_data["train"], colour_data["root"], tmp_path / "run", tmp_path / "c"))
    assert result.code == 1 and "has no pad token" in result.err, result.err
    assert "Traceback" not in result.err and result.err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_train_from_inside_the_model_folder_writes_beside_it(cli, transplanted, colour_data, copy_of, tmp_path,
                                                            monkeypatch):
    model = copy_of(transplanted["mistral"], "model")
    monkeypatch.chdir(model)
    result = cli("train", ".", "--recipe", "tiny-cpu", "--data", colour_data["train"], "--image-root",
                 colour_data["root"], "--set", "stage1.max_steps=1", "--set", "stage2.max_steps=1",
                 "--feature-cache", tmp_path / "c")
    assert result.code == 0, result.err
    assert (tmp_path / "model-trained" / "final" / "merged" / "config.json").is_file()
    adapter = json.loads((tmp_path / "model-trained" / "final" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(model.resolve())  # loadable from any working directory


def test_a_full_disk_stops_training_in_one_line_and_the_run_resumes(cli, transplanted, colour_data, tmp_path,
                                                                     monkeypatch):
    import safetensors.torch

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(args[1]))

    args = _train_args(transplanted["mistral"], colour_data["train"], colour_data["root"], tmp_path / "run",
                       tmp_path / "c")
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    failed = cli(*args)
    assert failed.code == 1 and "no space left on the disk" in failed.err and "--resume" in failed.err, failed.err
    # the progress shown before stays; the error is one last line
    assert failed.err.strip().splitlines()[-1].startswith("error: training stopped")
    assert failed.err.count("error:") == 1 and "Traceback" not in failed.err
    monkeypatch.undo()
    resumed = cli(*args, "--resume")
    assert resumed.code == 0, resumed.err
    assert (tmp_path / "run" / "final" / "merged" / "config.json").is_file()


@pytest.mark.parametrize("command", ["inspect", "transplant", "train", "eval", "compare", "upgrade", "demo"])
def test_every_command_help_ends_with_an_example(cli, command):
    result = cli(command, "--help")
    lines = [line.strip() for line in result.out.strip().splitlines() if line.strip()]
    example = next(i for i, line in enumerate(lines) if line.startswith("Example: backbone-swap "))
    assert example >= len(lines) - 3 and f"backbone-swap {command}" in " ".join(lines[example:]), lines[-4:]


@pytest.mark.parametrize(("command", "usage"), [
    (["inspect"], " inspect [OPTIONS] PATH"),
    (["train"], " train [OPTIONS] MODEL"),
    (["eval"], " eval [OPTIONS] MODEL"),
    (["compare"], " compare [OPTIONS] A B"),
    (["suite", "show"], " suite show [OPTIONS] SUITE"),
])
def test_usage_lines_name_the_arguments_as_usage_lines_do(cli, command, usage):
    line = cli(*command, "--help").out.splitlines()[0]
    assert line.startswith("Usage: ") and line.endswith(usage), line  # the program's name as it was run


def test_save_every_has_one_default_and_takes_no_negative_number(cli, transplanted, tmp_path):
    helps = [" ".join(cli(command, "--help").out.split()) for command in ("train", "upgrade")]
    described = "only at the end of each stage. Default: 50 (under DeepSpeed"
    assert all("--save-every N Checkpoint training every N optimizer steps" in h and described in h for h in helps)
    result = cli("train", transplanted["mistral"], "--recipe", "tiny-cpu", "--data", tmp_path / "d.jsonl",
                 "-o", tmp_path / "run", "--save-every", "-1")
    assert result.code == 1 and "--save-every" in result.err and not (tmp_path / "run").exists()


def test_help_lists_the_shipped_recipes_and_suites_and_the_upgrade_takes_its_steps_options(cli):
    from backbone_swap.evaluate.suite import shipped_suites
    from backbone_swap.training.recipe import shipped_recipes

    train = " ".join(cli("train", "--help").out.split())
    assert all(name in train for name in shipped_recipes())
    evaluate = " ".join(cli("eval", "--help").out.split())
    assert all(name in evaluate for name in shipped_suites())
    upgrade = " ".join(cli("upgrade", "--help").out.split())
    for option in ("--device", "--allow-pickle", "--trust-remote-code", "--vision-tower", "--min-gain"):
        assert option in upgrade, option
    assert "in percentage points" in upgrade


@pytest.mark.parametrize("value", ["-1", "150"])
def test_min_gain_is_in_points_and_checked(cli, transplanted, suite_file, tmp_path, value):
    result = cli("compare", transplanted["mistral"], transplanted["qwen2"], "--suite", suite_file, "-o",
                 tmp_path / "cmp", "--min-gain", value)
    assert result.code == 1 and "--min-gain is in percentage points, from 0 to 100" in result.err
    assert not (tmp_path / "cmp").exists()
