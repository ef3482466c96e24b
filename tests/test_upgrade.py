"""``backbone-swap upgrade``: the plan, the composed run, skipping finished steps, and surviving a kill."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys

import pytest
from processes import kill_once_written, run_whole

pytestmark = pytest.mark.slow

SHORT = ["--set", "stage1.max_steps=3", "--set", "stage2.max_steps=6"]


def _args(kit, colour_data, suite_file, out, cache):
    return ["upgrade", "--vlm", kit.vlm, "--llm", kit.mistral, "--recipe", "tiny-cpu", "--data", colour_data["train"],
            "--image-root", colour_data["root"], "--suite", suite_file, "-o", out, "--feature-cache", cache,
            "--resamples", "300", "--batch-size", "6", *SHORT]


def _numbers(report_path):
    report = json.loads(report_path.read_text())
    keys = ("accuracy_a", "accuracy_b", "diff", "diff_ci", "mcnemar_p", "overlap", "ece_a", "ece_b", "cka_a", "cka_b")
    return [{k: t[k] for k in keys} for t in report["tasks"]], report["overall"]["verdict"]


def test_dry_run_prints_the_plan_and_writes_nothing(cli, kit, colour_data, suite_file, tmp_path):
    result = cli(*_args(kit, colour_data, suite_file, tmp_path / "run", tmp_path / "cache"), "--dry-run")
    assert result.code == 0, result.err
    text = " ".join(result.out.split())
    for words in ("steps: transplant, train, eval-old, eval-new, compare", "new projector 32 -> 40",
                  "LoRA r=8", "recipe tiny-cpu, hash", "128 records", "of accelerator memory", "of training compute"):
        assert words in text, words
    # a tiny model's figures in units that suit them, never "0.0 GB" or "9.2e-07 GPU-hours"
    assert re.search(r"about [1-9][\d.]* (KB|MB) of accelerator memory", text), text
    assert re.search(r"[1-9][\d.]* (MFLOP|GFLOP|TFLOP) of training compute \((under a second|about [\d.]+ "
                     r"seconds) on one A100", text), text
    # the time at this machine's measured speed in the recipe's precision (tiny-cpu: fp32, which warns of nothing)
    assert re.search(r"on this machine's CPU: [1-9][\d.]* (MFLOP|GFLOP|TFLOP)/s measured in fp32, so at least "
                     r"(under a second|[\d.]+ (seconds|minutes)) on one device", text), text
    assert "warning: this CPU" not in text
    assert "0.0 GB" not in text and "e-0" not in text
    assert not (tmp_path / "run").exists()


def test_the_plan_makes_every_data_check_of_training_before_anything_is_written(cli, kit, colour_data, suite_file,
                                                                                 tmp_path):
    args = _args(kit, colour_data, suite_file, tmp_path / "run", tmp_path / "cache")
    no_root = [a for i, a in enumerate(args) if "--image-root" not in (a, args[i - 1])]
    result = cli(*no_root)
    assert result.code == 1 and "Pass --image-root FOLDER" in result.err and "skip" not in result.err, result.err
    records = [json.loads(line) for line in colour_data["train"].read_text().splitlines()]
    records[5]["image"] = "gone.png"
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(json.dumps(r) + "\n" for r in records))
    with_broken = [str(broken) if a == colour_data["train"] else a for a in args]
    result = cli(*with_broken)
    assert result.code == 1 and "gone.png" in result.err and "line 6" in result.err, result.err
    assert not (tmp_path / "run").exists()
    result = cli(*with_broken, "--on-bad-sample", "skip", "--dry-run")
    assert result.code == 0 and "127 usable, 1 to be skipped" in " ".join(result.out.split()), result.out


@pytest.fixture(scope="module")
def finished(kit, colour_data, suite_file, tmp_path_factory):
    from backbone_swap.cli import main

    root = tmp_path_factory.mktemp("upgrade")
    args = [str(a) for a in _args(kit, colour_data, suite_file, root / "run", root / "cache")]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code in (0, None)
    return root, args


def test_the_run_folder_holds_every_step(finished, kit):
    root, _ = finished
    run = root / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert [s for s in manifest["steps"]] == ["transplant", "train", "eval-old", "eval-new", "compare"]
    assert all(step["status"] == "done" for step in manifest["steps"].values())
    assert manifest["identity"]["recipe_hash"] and manifest["plan"]["estimate"]["records"] == 128
    for path in ("transplant/model.safetensors", "train/final/merged/model.safetensors", "eval/old/colour.jsonl",
                 "eval/new/where.jsonl", "compare/report.json", "compare/report.html"):
        assert (run / path).is_file(), path
    report = json.loads((run / "compare" / "report.json").read_text())
    assert report["meta"]["baseline"] == "as-is"
    assert any("not trained here" in w for w in report["warnings"])
    # every path it used, absolute, whatever was typed
    inputs = manifest["inputs"]
    assert inputs["vlm"] == str(kit.vlm.resolve()) and inputs["output"] == str(run.resolve())
    assert inputs["old_llm"] is None and inputs["image_root"].startswith("/")
    assert manifest["steps"]["train"]["output"] == str(run.resolve() / "train" / "final" / "merged")


def test_a_run_of_relative_paths_records_them_resolved(cli, kit, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(kit.vlm, tmp_path / "old")
    shutil.copytree(kit.mistral, tmp_path / "new")
    monkeypatch.chdir(tmp_path)
    assert cli("transplant", "--vlm", "old", "--llm", "./new", "-o", "out/../made").code == 0
    manifest = json.loads((tmp_path / "made" / "manifest.json").read_text())
    assert manifest["inputs"]["vlm"]["path"] == str((tmp_path / "old").resolve())
    assert manifest["inputs"]["llm"]["path"] == str((tmp_path / "new").resolve())
    assert manifest["output"]["path"] == str((tmp_path / "made").resolve())


def test_the_report_names_the_models_by_what_they_are(finished, kit):
    root, _ = finished
    report = json.loads((root / "run" / "compare" / "report.json").read_text())
    assert report["meta"]["name_a"] == kit.vlm.name  # the old VLM as given
    assert report["meta"]["name_b"] == f"{kit.mistral.name} on {kit.vlm.name}'s vision side, trained here"
    assert report["meta"]["model_b"] == str(root / "run" / "train" / "final" / "merged")  # the path, in the settings
    text = (root / "run" / "compare" / "report.md").read_text()
    assert text.startswith(f"# Backbone swap: {kit.vlm.name} -> {kit.mistral.name} on {kit.vlm.name}'s vision side")


def test_the_report_shows_the_training_loss_of_the_side_trained_here(finished):
    root, _ = finished
    run = root / "run"
    report = json.loads((run / "compare" / "report.json").read_text())
    history = json.loads((run / "train" / "manifest.json").read_text())["history"]
    assert list(report["training_loss"]) == ["b"]  # the old VLM was taken as given: no curve of its own
    assert report["training_loss"]["b"] == [{"stage": h["stage"], "step": h["step"], "loss": h["loss"]}
                                            for h in history]
    assert (run / "compare" / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](training.png)" in (run / "compare" / "report.md").read_text()


def test_a_second_start_skips_finished_steps(finished):
    from backbone_swap.cli import main

    root, args = finished
    before = (root / "run" / "train" / "manifest.json").stat().st_mtime_ns
    report_before = _numbers(root / "run" / "compare" / "report.json")
    # a comparison stopped between writing its plots and report.json, as a full disk would leave it
    (root / "run" / "compare" / "report.json").rename(root / "run" / "compare.json")
    with pytest.raises(SystemExit) as ended:
        main(args)
    assert ended.value.code in (0, None)
    (root / "run" / "compare.json").unlink()
    assert (root / "run" / "train" / "manifest.json").stat().st_mtime_ns == before
    assert _numbers(root / "run" / "compare" / "report.json") == report_before


def test_changed_inputs_are_refused_and_restart_redoes_a_step(finished, cli, kit, colour_data, suite_file):
    root, args = finished
    changed = [a if a != "stage2.max_steps=6" else "stage2.max_steps=7" for a in args]
    refused = cli(*changed)
    assert refused.code == 1 and "recipe_hash" in refused.err
    redo = cli(*args, "--restart", "eval-new")
    assert redo.code == 0, redo.err
    steps = json.loads((root / "run" / "manifest.json").read_text())["steps"]
    assert steps["eval-new"]["status"] == "done"


def test_killed_during_training_finishes_with_the_same_report(finished, kit, colour_data, suite_file, tmp_path):
    root, _ = finished
    out = tmp_path / "run"
    args = [str(a) for a in _args(kit, colour_data, suite_file, out, root / "cache")] + ["--save-every", "2"]
    kill_once_written([sys.executable, "-m", "backbone_swap.cli", *args],
                      out / "train" / "stage2" / "checkpoint" / "state.json")
    assert not (out / "compare" / "report.json").exists()
    every_step = {**os.environ, "BACKBONE_SWAP_PROGRESS_EVERY": "0"}  # a log file: a plain line per update
    resumed = run_whole([sys.executable, "-m", "backbone_swap.cli", *args], env=every_step)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _numbers(out / "compare" / "report.json") == _numbers(root / "run" / "compare" / "report.json")
    # what the log of the second start says: which step, which side, what was reused, where training resumed
    log = resumed.stderr
    assert f"[new] transplant (step 1 of 5): done in an earlier start, reused from {out / 'transplant'}" in log
    assert "[new] train (step 2 of 5)" in log and "[old] eval-old (step 3 of 5)" in log
    assert "[new] stage2: resuming from step 2 of " in log
    assert re.search(r"\[new\] stage2: 3/\d+ steps \(\d+%\), loss \d\.\d{4}, lr [\d.]+e-\d\d, [\d.]+ samples/s", log)
    assert "\x1b[" not in log and "Loading weights" not in log


def test_retrain_baseline_needs_the_old_llm(cli, kit, colour_data, suite_file, tmp_path):
    result = cli(*_args(kit, colour_data, suite_file, tmp_path / "run", tmp_path / "cache"), "--baseline", "retrain")
    assert result.code == 1 and "--old-llm" in result.err


def test_retrain_baseline_trains_both_sides_the_same_way(cli, kit, colour_data, suite_file, tmp_path):
    out = tmp_path / "run"
    result = cli(*_args(kit, colour_data, suite_file, out, tmp_path / "cache"), "--baseline", "retrain",
                 "--old-llm", kit.llama48, "--old-llm-kind", "base", "--llm-kind", "instruct")
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["steps"]) == ["transplant", "baseline", "train", "eval-old", "eval-new", "compare"]
    old_run = json.loads((out / "baseline" / "train" / "manifest.json").read_text())
    new_run = json.loads((out / "train" / "manifest.json").read_text())
    assert old_run["recipe_hash"] == new_run["recipe_hash"]
    assert old_run["inputs"]["data_sha256"] == new_run["inputs"]["data_sha256"]
    report = json.loads((out / "compare" / "report.json").read_text())
    assert report["meta"]["baseline"] == "retrain"
    assert report["meta"]["model_a"] == str(out / "baseline" / "train" / "final" / "merged")
    assert not any("recipe" in w or "not trained here" in w for w in report["warnings"])
    assert "one LLM is a base model and the other instruction-tuned (A base, B instruct)" in report["warnings"]


def test_the_plan_counts_exactly_the_parameters_training_updates(finished, kit, colour_data, suite_file):
    from safetensors.torch import load_file

    root, _ = finished
    estimate = json.loads((root / "run" / "manifest.json").read_text())["plan"]["estimate"]
    trained = load_file(root / "run" / "train" / "stage2" / "trainable.safetensors")
    assert estimate["trainable_parameters"] == sum(t.numel() for t in trained.values())
    # the tokens the plan measured on a sample, against those training built
    built = json.loads((root / "run" / "train" / "manifest.json").read_text())["data"]["tokens"]
    assert estimate["tokens"] == pytest.approx(built, rel=0.1)
    assert estimate["memory_bytes"] == sum(estimate["memory"].values())


@pytest.mark.parametrize("manifest", [None, "not json", '{"step": "transplant"}'])
def test_a_folder_of_other_files_is_never_used_as_the_run_folder(cli, kit, colour_data, suite_file, tmp_path, digest,
                                                                 manifest):
    out = tmp_path / "mine"
    (out / "transplant").mkdir(parents=True)
    (out / "transplant" / "keep.txt").write_text("my own transplant notes")
    if manifest is not None:
        (out / "manifest.json").write_text(manifest)
    before = digest(out)
    result = cli(*_args(kit, colour_data, suite_file, out, tmp_path / "cache"))
    assert result.code == 1 and "holds other files, not an upgrade run" in result.err, result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert digest(out) == before


def test_base_against_instruct_is_warned_about_for_an_old_vlm_as_it_is(finished, cli):
    root, args = finished
    result = cli(*args, "--old-llm-kind", "base", "--llm-kind", "instruct", "--restart", "compare")
    assert result.code == 0, result.err
    warnings = json.loads((root / "run" / "compare" / "report.json").read_text())["warnings"]
    assert "one LLM is a base model and the other instruction-tuned (A base, B instruct)" in warnings
    assert cli(*args, "--old-llm-kind", "chat").code == 1


def test_an_llm_without_a_chat_template_takes_one_from_a_file(cli, kit, colour_data, suite_file, tmp_path):
    """A base LLM ships no chat template: upgrade asks for --chat-template (--old-chat-template for the
    baseline's LLM) before anything is written, and the transplant it makes carries the file's template."""
    from transformers import AutoTokenizer

    from backbone_swap.demo import tiny_models as tm

    base = tm.build_llm(tmp_path / "base", tm.mistral_spec(tokenizer=tm.TokenizerSpec(vocab_size=300), seed=4))
    template = tmp_path / "template.jinja"
    template.write_text(tm.MISTRAL_TEMPLATE)
    args = [a if a != kit.mistral else base for a in _args(kit, colour_data, suite_file, tmp_path / "run",
                                                           tmp_path / "cache")]
    refused = cli(*args, "--dry-run")
    assert refused.code == 1 and "has no chat template; pass --chat-template FILE" in refused.err
    retrain = ["--baseline", "retrain", "--old-llm", base, "--chat-template", template]
    refused = cli(*args, *retrain, "--dry-run")
    assert refused.code == 1 and "pass --old-chat-template FILE" in refused.err
    assert cli(*args, *retrain, "--old-chat-template", template, "--dry-run").code == 0
    assert not (tmp_path / "run").exists()
    done = cli(*[a if a != "stage2.max_steps=6" else "stage2.max_steps=1" for a in args], "--chat-template",
               template, "--resamples", "50")
    assert done.code == 0, done.err
    transplanted = AutoTokenizer.from_pretrained(tmp_path / "run" / "transplant")
    assert transplanted.chat_template.endswith(tm.MISTRAL_TEMPLATE)
    identity = json.loads((tmp_path / "run" / "manifest.json").read_text())["identity"]
    assert identity["chat_template"] == hashlib.sha256(template.read_bytes()).hexdigest()


def test_a_folder_another_upgrade_is_writing_is_refused(cli, kit, colour_data, suite_file, tmp_path):
    from processes import folder_held_elsewhere

    run = tmp_path / "run"
    with folder_held_elsewhere(run, "upgrade run") as holder:
        result = cli(*_args(kit, colour_data, suite_file, run, tmp_path / "cache"))
    assert result.code == 1
    assert f"{run} is being written by another upgrade run (process {holder.pid} on" in result.err
    assert [p.name for p in run.iterdir()] == [".lock"]  # no step started


def test_the_plan_says_what_the_run_and_the_cache_write_on_disk(finished, colour_data):
    from safetensors import safe_open

    root, _ = finished
    run = root / "run"
    disk = json.loads((run / "manifest.json").read_text())["plan"]["estimate"]["disk"]
    for model in (run / "transplant", run / "train" / "final" / "merged"):  # every tensor's bytes, as written
        with safe_open(model / "model.safetensors", "pt") as f:
            written = sum(_tensor_bytes(f, k) for k in f.keys())  # noqa: SIM118 - a safetensors handle
        assert disk["model_bytes"] == written
    files = sum(f.stat().st_size for folder in ("transplant", "train") for f in (run / folder).rglob("*.safetensors"))
    assert files <= disk["run_bytes"] <= 2 * files  # an upper bound, and not a loose one
    # the cache: one file per distinct image file, each of the size the plan gives an image
    paths = {json.loads(line)["image"] for line in colour_data["train"].read_text().splitlines()}
    cached = list((root / "cache").rglob("*.safetensors"))
    assert 0 < len(cached) <= len(paths)
    assert all(f.stat().st_size <= disk["cache_bytes"] / len(paths) < f.stat().st_size + 128 for f in cached)


def _tensor_bytes(handle, name: str) -> int:
    tensor = handle.get_tensor(name)
    return tensor.numel() * tensor.element_size()


def test_the_plan_warns_of_a_disk_without_room_and_the_cache_can_be_left_out(cli, kit, colour_data, suite_file,
                                                                           tmp_path, monkeypatch):
    import shutil

    args = _args(kit, colour_data, suite_file, tmp_path / "run", tmp_path / "cache")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=10_000))  # a nearly full disk
    planned = " ".join(cli(*args, "--dry-run").out.split())
    images = len({json.loads(line)["image"] for line in colour_data["train"].read_text().splitlines()})
    # the size itself is checked against the files a run writes (the test above); here its unit suits it
    assert re.search(rf"vision-feature cache: up to [1-9][\d.]* (KB|MB) for {images:,} images in "
                     rf"{re.escape(str(tmp_path / 'cache'))}", planned)
    assert "warning: the run and the feature cache may need more room than their disk has" in planned
    planned = " ".join(cli(*args, "--dry-run", "--no-cache-features").out.split())
    assert "vision-feature cache: off" in planned and "warning: the run" not in planned
    assert f"warning: {tmp_path / 'run'}'s disk has less room than the run writes" in planned
    monkeypatch.undo()
    result = cli(*args, "--no-cache-features")
    assert result.code == 0, result.err
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # the tower ran on every batch instead
    trained = json.loads((tmp_path / "run" / "train" / "manifest.json").read_text())
    assert trained["features"] == {"cache": None, "computed": "every step"}
