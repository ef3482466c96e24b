"""bench/gpu.py is run on lent GPU machines only: its code runs here on tiny sizes, and its FLOP counts are
checked against the weights of real models, so that the GPU run works the first time."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _linear_weights(module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def test_flop_counts_match_the_linear_weights_of_the_models(gpu_bench):
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    text = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8,
                       num_key_value_heads=2, vocab_size=300)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8)
    assert gpu_bench.llm_matmul_params(text) == _linear_weights(LlamaForCausalLM(text))
    assert gpu_bench.tower_matmul_params(vision) == _linear_weights(CLIPVisionModel(vision))
    # the full-size shapes: a 1.1B Llama (TinyLlama) and CLIP-L/336's tower (0.30B)
    full = gpu_bench.FULL
    big = LlamaConfig(hidden_size=full.llm_hidden, intermediate_size=full.llm_intermediate,
                      num_hidden_layers=full.llm_layers, num_attention_heads=full.llm_heads,
                      num_key_value_heads=full.llm_kv_heads, vocab_size=full.vocab)
    assert 0.9e9 < gpu_bench.llm_matmul_params(big) < 1.1e9
    clip = CLIPVisionConfig(hidden_size=full.tower_hidden, intermediate_size=full.tower_intermediate,
                            num_hidden_layers=full.tower_layers, num_attention_heads=full.tower_heads)
    assert 0.28e9 < gpu_bench.tower_matmul_params(clip) < 0.31e9


@pytest.mark.slow
def test_cpu_smoke_run_prints_every_figure(gpu_bench, tmp_path, capsys):
    results = gpu_bench.main(["--cpu-smoke", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    for key in ("train_cached", "train_live"):
        row = results[key]
        assert row["samples_per_s"] > 0 and row["tokens_per_s"] > row["samples_per_s"] and row["flops_per_s"] > 0
        assert row["steps_timed"] == 2 and math.isfinite(row["final_loss"])
    rows = results["eval"]["rows"]
    assert set(rows) == {"loop", "batch 4"}
    assert rows["batch 4"]["identical"] == results["eval"]["items"] == 8  # float32: the same answers
    # six questions an image, the image prefix run once: the same answers as every prompt run whole (float32)
    shared = results["eval"]["shared_prefix"]
    assert (shared["items"], shared["images"], shared["identical"]) == (8, 2, 8)
    for header in ("samples/s", "tokens/s", "peak memory", "MFU", "cached tower features", "tower on every batch",
                   "shared image prefix: 8 questions about 2 images (6 each)"):
        assert header in out
    assert "peak assumed 989 TFLOP/s" in out
    # the plan's memory for the same training: its weights part is every weight but the projector's, in fp32
    from safetensors import safe_open

    with safe_open(tmp_path / "inputs" / "vlm" / "model.safetensors", "pt") as f:
        frozen = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()  # noqa: SIM118 - a safetensors handle
                     if "multi_modal_projector" not in k)
    planned = results["plan_memory"]
    assert planned["parts"]["weights"] == 4 * frozen and planned["measured_gib"] is None
    assert "memory: the plan's estimate" in out and "no GPU memory to measure on CPU" in out


def test_gpu_script_is_valid_bash_and_capped_under_eight_minutes():
    script = (BENCH / "gpu.sh").read_text()
    subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], check=True)
    limit = int(re.search(r"BENCH_LIMIT_S:-(\d+)", script).group(1))
    kill_after = int(re.search(r"--kill-after=(\d+)", script).group(1))
    assert limit + kill_after < 8 * 60
    assert "python bench/gpu.py" in script
