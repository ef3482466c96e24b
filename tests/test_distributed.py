"""Several processes (accelerate over torch.distributed, gloo on CPU) give what one process gives."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from processes import kill_once_written, run_whole
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="DeepSpeed is not installed (pip install backbone-swap[deepspeed])")


ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "accelerate"


@pytest.fixture(scope="module", autouse=True)
def extensions_of_this_session(tmp_path_factory):
    """DeepSpeed compiles a CPU op on first use into TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions,
    shared by every run and virtual environment on the machine: a run killed while compiling leaves a lock file
    there that every later run waits on forever, and a virtual environment at another path compiles over the
    build of the last. The launches here compile into a folder of this session (unless one is set)."""
    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get("TORCH_EXTENSIONS_DIR"):
            patch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path_factory.mktemp("torch-extensions")))
        yield


def _launch(args, processes, cwd, config: str | None = None, env: dict[str, str] | None = None, fails: bool = False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if processes == 1:
        command = [sys.executable, "-m", "backbone_swap.cli", *args]
    elif config:
        # the user's command with a shipped configuration; without GPUs the processes run on CPU over gloo
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ACCELERATE_CONFIGS / config), "--num_processes", str(processes),
                   "-m", "backbone_swap.cli", *args]
    else:
        # torchrun gives accelerate its multi-process CPU mode (gloo); on GPUs users run `accelerate launch`
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "-m", "backbone_swap.cli", *args]
    result = run_whole(command, env=env, cwd=cwd)
    assert (result.returncode != 0) == fails, result.stderr[-3000:]
    return result


def test_two_processes_train_to_the_weights_of_one(transplanted, colour_data, tmp_path):
    args = ["train", str(transplanted["mistral"]), "--recipe", "tiny-cpu", "--data", str(colour_data["train"]),
            "--image-root", str(colour_data["root"]), "--feature-cache", str(tmp_path / "cache"),
            "--set", "stage1.max_steps=2", "--set", "stage2.max_steps=3",
            "--set", "stage1.micro_batch=4", "--set", "stage2.micro_batch=4"]
    _launch([*args, "-o", str(tmp_path / "one")], 1, tmp_path)
    _launch([*args, "-o", str(tmp_path / "two")], 2, tmp_path)
    one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert (one["stages"]["stage2"]["world_size"], one["stages"]["stage2"]["accumulation"]) == (1, 2)
    assert (two["stages"]["stage2"]["world_size"], two["stages"]["stage2"]["accumulation"]) == (2, 1)
    assert [h["loss"] for h in two["history"]] == pytest.approx([h["loss"] for h in one["history"]], rel=1e-4)
    a = load_file(tmp_path / "one" / "stage2" / "trainable.safetensors")
    b = load_file(tmp_path / "two" / "stage2" / "trainable.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)


SHARDED_ARGS = ["--recipe", "tiny-cpu", "--set", "stage1.max_steps=2", "--set", "stage2.max_steps=3",
                "--set", "stage1.micro_batch=4", "--set", "stage2.micro_batch=2"]


@pytest.fixture(scope="module")
def one_process_run(transplanted, colour_data, tmp_path_factory):
    """The reference for the sharded runs: one process, accumulation 4 in stage 2."""
    root = tmp_path_factory.mktemp("one-process")
    args = ["train", str(transplanted["mistral"]), *SHARDED_ARGS, "--data", str(colour_data["train"]),
            "--image-root", str(colour_data["root"]), "--feature-cache", str(root / "cache")]
    _launch([*args, "-o", str(root / "run")], 1, root)
    return args, root / "run"


@pytest.mark.parametrize(("config", "scheme", "held", "extra"), [
    ("fsdp-8gpu.yaml", "fsdp", 0.5, ["--no-cache-features"]),
    pytest.param("zero2-8gpu.yaml", "zero2", 1.0, [], marks=needs_deepspeed),
    pytest.param("zero3-8gpu.yaml", "zero3", 0.5, [], marks=needs_deepspeed),
])
def test_sharded_two_processes_train_to_the_weights_of_one(one_process_run, tmp_path, config, scheme, held, extra):
    """A shipped configuration launched as users launch it: FSDP2 and ZeRO-3 slice every weight (the
    frozen tower and LLM too) over the processes, ZeRO-2 the optimizer state; the trained weights are
    gathered for the stage files and the export. The FSDP run also runs the tower on every batch, in
    each process (loaded whole, outside FSDP's memory-saving loading)."""
    args, reference = one_process_run
    # the feature cache is filled again here, by the main process of the sharded run
    args = [a if a != args[args.index("--feature-cache") + 1] else str(tmp_path / "cache") for a in args]
    _launch([*args, *extra, "-o", str(tmp_path / "run")], 2, tmp_path, config=config)
    one = json.loads((reference / "manifest.json").read_text())
    two = json.loads((tmp_path / "run" / "manifest.json").read_text())
    for stage in ("stage1", "stage2"):
        assert two["stages"][stage]["sharding"] == scheme
        assert two["stages"][stage]["weights_held"] == pytest.approx(held, abs=0.05)
        assert one["stages"][stage]["weights_held"] == 1.0
    assert (one["stages"]["stage2"]["accumulation"], two["stages"]["stage2"]["accumulation"]) == (4, 2)
    assert [h["loss"] for h in two["history"]] == pytest.approx([h["loss"] for h in one["history"]], rel=1e-4)
    for stage in ("stage1", "stage2"):
        a = load_file(reference / stage / "trainable.safetensors")
        b = load_file(tmp_path / "run" / stage / "trainable.safetensors")
        assert a.keys() == b.keys() and any("lora_" in k for k in b) == (stage == "stage2")
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    from transformers import LlavaForConditionalGeneration

    merged = {run: LlavaForConditionalGeneration.from_pretrained(folder / "final" / "merged").state_dict()
              for run, folder in (("one", reference), ("two", tmp_path / "run"))}
    assert merged["one"].keys() == merged["two"].keys()
    for name, value in merged["one"].items():
        torch.testing.assert_close(merged["two"][name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("env", "extra", "message"), [
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, [],
     "error: FSDP on CPU processes needs FSDP version 2. Set fsdp_version: 2"),
    pytest.param({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, ["--save-every", "1"],
                 "error: checkpoints inside a stage (--save-every) are not supported under DeepSpeed",
                 marks=needs_deepspeed),
    pytest.param({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
                  "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true"}, [],
                 "error: backbone-swap does not support zero3_init_flag: true", marks=needs_deepspeed),
], ids=["fsdp1", "deepspeed-save-every", "zero3-init"])
def test_unsupported_settings_are_refused_in_one_line(transplanted, colour_data, tmp_path, env, extra, message):
    args = ["train", str(transplanted["mistral"]), "--recipe", "tiny-cpu", "--data", str(colour_data["train"]),
            "-o", str(tmp_path / "run"), *extra]
    result = _launch(args, 2, tmp_path, env=env, fails=True)
    assert message in result.stderr
    assert "BackboneSwapError" not in result.stderr  # a message, not our traceback


def test_two_process_eval_writes_the_same_per_item_files(transplanted, suite_file, tmp_path):
    args = ["eval", str(transplanted["mistral"]), "--suite", str(suite_file), "--batch-size", "3"]
    _launch([*args, "-o", str(tmp_path / "one")], 1, tmp_path)
    _launch([*args, "-o", str(tmp_path / "two")], 2, tmp_path)
    for task in ("colour", "choice", "where"):
        single = (tmp_path / "one" / f"{task}.jsonl").read_text().splitlines()
        one = {json.loads(x)["id"]: json.loads(x) for x in single}
        lines = (tmp_path / "two" / f"{task}.jsonl").read_text().splitlines()
        two = {json.loads(x)["id"]: json.loads(x) for x in lines}
        assert len(lines) == len(two) == len(one)  # exactly one line per item
        for item, line in one.items():
            assert two[item]["prediction"] == line["prediction"] and two[item]["correct"] == line["correct"]
            assert two[item]["confidence"] == pytest.approx(line["confidence"], rel=1e-4)
    assert not list((tmp_path / "two").glob(".*.rank*.jsonl"))
    assert json.loads((tmp_path / "one" / "manifest.json").read_text())["processes"] == 1
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["processes"] == 2
    assert (tmp_path / "two" / "probes" / "colour.safetensors").is_file()


def test_fsdp_run_killed_inside_a_stage_resumes_to_the_same_weights(one_process_run, tmp_path):
    """SIGKILL after the first stage-2 checkpoint of a 2-process FSDP run; --resume then finishes it with
    the weights of an uninterrupted run (the sharded optimizer state is gathered into the checkpoint)."""
    args, reference = one_process_run
    args = [a if a != args[args.index("--feature-cache") + 1] else str(tmp_path / "cache") for a in args]
    args = [*args, "-o", str(tmp_path / "run"), "--save-every", "1"]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ACCELERATE_CONFIGS / "fsdp-8gpu.yaml"), "--num_processes", "2", "-m", "backbone_swap.cli", *args]
    kill_once_written(command, tmp_path / "run" / "stage2" / "checkpoint" / "state.json",
                      env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert not (tmp_path / "run" / "stage2" / "trainable.safetensors").exists()  # killed inside stage 2
    _launch([*args, "--resume"], 2, tmp_path, config="fsdp-8gpu.yaml")
    a = load_file(reference / "stage2" / "trainable.safetensors")
    b = load_file(tmp_path / "run" / "stage2" / "trainable.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)


def test_a_last_batch_too_small_to_share_is_left_out_and_training_ends(transplanted, colour_data, tmp_path):
    # 17 samples in global batches of 8 on 2 processes: the 1-sample batch left over cannot be shared, so each
    # epoch is 2 steps (it once counted 3: the run then trained a batch twice, or waited forever for a step)
    data = tmp_path / "odd.jsonl"
    data.write_text("\n".join(colour_data["train"].read_text().splitlines()[:17]) + "\n")
    args = ["train", str(transplanted["mistral"]), "--recipe", "tiny-cpu", "--data", str(data),
            "--image-root", str(colour_data["root"]), "--feature-cache", str(tmp_path / "cache"),
            "--set", "stage1.epochs=2", "--set", "stage2.epochs=1",
            "--set", "stage1.micro_batch=4", "--set", "stage2.micro_batch=4", "-o", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "backbone_swap.cli",
               *args]
    result = run_whole(command, env=env, cwd=tmp_path, timeout=240)  # a run that hangs is stopped, workers too
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["stage1"]["steps"] == 4 and manifest["stages"]["stage2"]["steps"] == 2


def test_a_stage_whose_batch_cannot_be_split_on_these_processes_is_refused_before_training(transplanted, colour_data,
                                                                                          tmp_path):
    # stage 1 splits (8 = 4 x 2 processes), stage 2 cannot (4 < 4 x 2): refused before stage 1 trains
    args = ["train", str(transplanted["mistral"]), "--recipe", "tiny-cpu", "--data", str(colour_data["train"]),
            "--image-root", str(colour_data["root"]), "--feature-cache", str(tmp_path / "cache"),
            "--set", "stage1.micro_batch=4", "--set", "stage2.micro_batch=4", "--set", "stage2.global_batch=4",
            "-o", str(tmp_path / "run")]
    result = _launch(args, 2, tmp_path, fails=True)
    assert "error: stage2: global_batch 4 cannot be split into micro batches of 4 on 2 devices" in result.stderr
    assert not (tmp_path / "run").exists()


def test_every_process_stops_when_another_run_holds_the_folder(transplanted, suite_file, tmp_path):
    # the main process finds the folder held and tells the others, which would otherwise wait for it forever
    from processes import folder_held_elsewhere

    with folder_held_elsewhere(tmp_path / "two", "evaluation") as holder:
        result = _launch(["eval", str(transplanted["mistral"]), "--suite", str(suite_file), "-o",
                          str(tmp_path / "two")], 2, tmp_path, fails=True)
    assert result.stderr.count(f"is being written by another evaluation (process {holder.pid} on") == 2
    assert [p.name for p in (tmp_path / "two").iterdir()] == [".lock"]


def test_two_process_upgrade_trains_to_the_weights_of_one_and_writes_once(kit, colour_data, suite_file, tmp_path):
    args = ["upgrade", "--vlm", str(kit.vlm), "--llm", str(kit.mistral), "--recipe", "tiny-cpu",
            "--data", str(colour_data["train"]), "--image-root", str(colour_data["root"]), "--suite", str(suite_file),
            "--feature-cache", str(tmp_path / "cache"), "--resamples", "300", "--batch-size", "6",
            "--set", "stage1.max_steps=2", "--set", "stage2.max_steps=3",
            "--set", "stage1.micro_batch=4", "--set", "stage2.micro_batch=4"]
    _launch([*args, "-o", str(tmp_path / "one")], 1, tmp_path)
    two = _launch([*args, "-o", str(tmp_path / "two")], 2, tmp_path)
    lines = two.stdout.splitlines()
    assert lines.count("plan") == 1 and sum(line.startswith("overall:") for line in lines) == 1  # printed once
    steps = json.loads((tmp_path / "two" / "manifest.json").read_text())["steps"]
    assert list(steps) == ["transplant", "train", "eval-old", "eval-new", "compare"]
    assert all(step["status"] == "done" for step in steps.values())
    trained = json.loads((tmp_path / "two" / "train" / "manifest.json").read_text())
    assert trained["stages"]["stage2"]["world_size"] == 2
    a = load_file(tmp_path / "one" / "train" / "stage2" / "trainable.safetensors")
    b = load_file(tmp_path / "two" / "train" / "stage2" / "trainable.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    one_report = json.loads((tmp_path / "one" / "compare" / "report.json").read_text())
    two_report = json.loads((tmp_path / "two" / "compare" / "report.json").read_text())
    assert [(t["name"], t["n"]) for t in two_report["tasks"]] == [(t["name"], t["n"]) for t in one_report["tasks"]]
    for task in ("colour", "choice", "where"):  # the old side is the same model: the same answers, every item once
        lines = [(tmp_path / s / "eval" / "old" / f"{task}.jsonl").read_text().splitlines() for s in ("one", "two")]
        answers = [{(r := json.loads(x))["id"]: r["prediction"] for x in side} for side in lines]
        assert answers[1] == answers[0] and len(lines[1]) == len(lines[0]) == len(answers[0])
