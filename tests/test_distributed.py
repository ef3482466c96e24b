"""Several processes (accelerate over torch.distributed, gloo on CPU) give what one process gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _launch(args, processes, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "backbone_swap.cli", *args]
    else:
        # torchrun gives accelerate its multi-process CPU mode (gloo); on GPUs users run `accelerate launch`
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "-m", "backbone_swap.cli", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


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
