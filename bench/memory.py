"""Peak memory of one training step at real widths on CPU: the loss on the supervised positions against the
logits of every position, and the plan's memory estimate against the measured peak.

    python bench/memory.py [--rows logits,estimate,tower] [--logits-hidden 1024,2048] [--threads 2] [--workdir DIR]

Each measurement runs in a fresh process (VmHWM, the peak resident memory, starts afresh at exec) that builds
a LLaVA model from its config (random weights, float32, no file read), with LoRA on every Linear of the
language model, the projector trained, gradient checkpointing on, as the shipped recipe trains; then one
forward, backward and AdamW step of the module training runs, fed cached vision features.

Rows:
  logits    a 128,256-row vocabulary (Llama 3), hidden 1,024 and 2,048, two decoder layers, micro batch 8 of 300-token
            samples with one-word answers (two supervised tokens: the word and the end of turn). Two paths:
            ``all``: transformers' own causal LM loss (the output layer at every position, as training did),
            ``supervised``: training's loss (the output layer at the supervised positions only).
            Goal: the supervised path's peak at most half of the other's.
  estimate  hidden 4,096 (Llama 3 8B's and Vicuna 7B's widths), two decoder layers, a CLIP-L/336 tower, micro
            batch 2 of 700-token samples (576 image tokens, a 40-token reply), with each vocabulary: the
            measured peak above the imports beside ``estimate.peak_memory``'s figure for the same shapes.
            Goal: within +-25%.
  tower     filling the vision-feature cache: the tower loaded alone against the whole VLM loaded to run it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
spec = json.loads(sys.argv[1])

def peak_kb():  # VmHWM starts afresh at exec, unlike ru_maxrss which a child inherits from its parent
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

import torch
from peft import LoraConfig, get_peft_model
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
from backbone_swap.training.data import IGNORE
from backbone_swap.training.model import CachedFeatureVLM, enable_checkpointing
torch.set_num_threads(spec["threads"])
base = peak_kb()

hidden, vocab = spec["hidden"], spec["vocab"]
text = LlamaConfig(hidden_size=hidden, intermediate_size=spec["intermediate"], num_hidden_layers=spec["layers"],
                   num_attention_heads=hidden // 128, num_key_value_heads=spec["kv_heads"], vocab_size=vocab,
                   max_position_embeddings=4096, tie_word_embeddings=False)
vision = CLIPVisionConfig(**spec["vision"])
config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab - 1,
                     vision_feature_layer=-2, vision_feature_select_strategy="default")
config._attn_implementation = "sdpa"
torch.manual_seed(0)
vlm = LlavaForConditionalGeneration(config).float()
vlm.config.use_cache = False
for p in vlm.parameters():
    p.requires_grad_(False)
enable_checkpointing(vlm)
targets = r".*\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
vlm = get_peft_model(vlm, LoraConfig(r=128, lora_alpha=256, target_modules=targets)).get_base_model()
for p in vlm.model.multi_modal_projector.parameters():
    p.requires_grad_(True)
trainable = [p for p in vlm.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(trainable, lr=1e-4)
vlm.train()

micro, length, image, reply = spec["micro"], spec["length"], spec["image_tokens"], spec["reply"]
generator = torch.Generator().manual_seed(0)
ids = torch.randint(0, vocab - 2, (micro, length), generator=generator)
ids[:, 1:1 + image] = vocab - 1
labels = torch.full_like(ids, IGNORE)
labels[:, length - reply:] = ids[:, length - reply:]
features = torch.randn(micro, image, vision.hidden_size, generator=generator)
mask = torch.ones_like(ids)
built = peak_kb()
started = time.perf_counter()
if spec["path"] == "all":  # transformers' own loss: the output layer at every position
    embeds = vlm.get_input_embeddings()(ids)
    projected = vlm.model.multi_modal_projector(features)
    where = (ids == vocab - 1).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(where, projected.to(embeds.dtype))
    loss = vlm(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False).loss
else:
    loss = CachedFeatureVLM.make(vlm)(ids, mask, labels, features).loss
loss.backward()
optimizer.step()
seconds = time.perf_counter() - started
print(json.dumps({"base_kb": base, "built_kb": built, "peak_kb": peak_kb(), "seconds": seconds,
                  "loss": float(loss), "trainable": sum(p.numel() for p in trainable),
                  "vision_params": sum(p.numel() for p in vlm.model.vision_tower.parameters()),
                  # the LLM as its checkpoint holds it: LoRA's weights are counted with the trainable state
                  "llm_params": sum(p.numel() for n, p in vlm.model.language_model.named_parameters()
                                    if "lora_" not in n) + vlm.lm_head.weight.numel()}))
"""

TINY_TOWER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 336, "patch_size": 28}  # 144 image tokens; its features come from the cache
CLIP_L_336 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
              "image_size": 336, "patch_size": 14}  # 576 image tokens


def measure(spec: dict) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def logits_row(threads: int, hidden: int) -> None:
    spec = {"hidden": hidden, "intermediate": hidden * 11 // 4, "layers": 2, "kv_heads": 8, "vocab": 128256,
            "vision": TINY_TOWER, "micro": 8, "length": 300, "image_tokens": 144, "reply": 2, "threads": threads}
    print(f"logits: vocabulary 128,256, hidden {hidden:,}, 2 decoder layers, micro batch 8 x 300 tokens, 2 "
          "supervised tokens a sample, float32")
    print(f"{'path':<12}{'peak GB':>9}{'model GB':>10}{'step GB':>9}{'seconds':>9}{'loss':>9}")
    rows = {}
    for path in ("all", "supervised"):
        r = rows[path] = measure({**spec, "path": path})
        peak, model = (r["peak_kb"] - r["base_kb"]) / 1e6, (r["built_kb"] - r["base_kb"]) / 1e6
        print(f"{path:<12}{peak:>9.2f}{model:>10.2f}{peak - model:>9.2f}{r['seconds']:>9.1f}{r['loss']:>9.4f}")
    ratio = (rows["supervised"]["peak_kb"] - rows["supervised"]["base_kb"]) / (
        rows["all"]["peak_kb"] - rows["all"]["base_kb"])
    step = (rows["supervised"]["peak_kb"] - rows["supervised"]["built_kb"]) / (
        rows["all"]["peak_kb"] - rows["all"]["built_kb"])
    print(f"peak above the imports, supervised / all: {ratio:.2f} (goal <= 0.5); the step's own (above the built "
          f"model): {step:.2f}; same loss: {abs(rows['all']['loss'] - rows['supervised']['loss']) < 1e-4}")


def _bf16(shapes, data, recipe, trainable: int) -> dict[str, int]:
    from backbone_swap.training import estimate
    from backbone_swap.training.recipe import apply_overrides

    return estimate.peak_memory(shapes, data, apply_overrides(recipe, ["precision=bf16"]), trainable=trainable)


def estimate_row(threads: int) -> None:
    from backbone_swap.training import estimate
    from backbone_swap.training.recipe import apply_overrides, load_recipe

    micro, length, image, reply = 2, 700, 576, 40
    recipe = apply_overrides(load_recipe("llava15-lora"), [
        "precision=fp32", f"stages.stage2.micro_batch={micro}", f"stages.stage1.micro_batch={micro}"])
    print(f"estimate: hidden 4,096, 2 decoder layers, CLIP-L/336 tower, micro batch {micro} x {length} tokens "
          f"({image} image tokens, a {reply}-token reply), float32, LoRA r 128 on every Linear")
    print(f"{'vocabulary':<12}{'measured GB':>12}{'estimate GB':>12}{'estimate / measured':>21}{'model GB':>10}"
          f"{'step GB':>9}   estimate's parts GB")
    for vocab, kv in ((128256, 8), (32000, 32)):
        spec = {"hidden": 4096, "intermediate": 14336 if vocab > 100_000 else 11008, "layers": 2, "kv_heads": kv,
                "vocab": vocab, "vision": CLIP_L_336, "micro": micro, "length": length, "image_tokens": image,
                "reply": reply, "threads": threads, "path": "supervised"}
        r = measure(spec)
        hidden, layers = spec["hidden"], spec["layers"]
        per_layer = 2 * hidden * hidden + 2 * hidden * kv * 128 + 3 * hidden * spec["intermediate"]
        shapes = estimate.Shapes(
            layer_linear=int(layers * per_layer), head_linear=vocab * hidden, layers=layers, attention_width=hidden,
            hidden=hidden, vocab=vocab, vision_params=r["vision_params"], vision_layers=24, vision_width=1024,
            vision_tokens=577, image_tokens=image, projector_in=1024, projector_out=hidden, lora_params=0,
            llm_params=r["llm_params"], intermediate=spec["intermediate"])
        data = estimate.DataSize(records=micro, images=micro, tokens=micro * length,
                                 tokens_squared=micro * length ** 2, longest=length, supervised=micro * reply,
                                 most_supervised=reply)
        parts = estimate.peak_memory(shapes, data, recipe, trainable=r["trainable"])
        measured = (r["peak_kb"] - r["base_kb"]) * 1024
        figure = sum(parts.values())
        shown = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in parts.items())
        model = (r["built_kb"] - r["base_kb"]) * 1024  # the built model with its LoRA, before the step
        print(f"{vocab:<12,}{measured / 1e9:>12.2f}{figure / 1e9:>12.2f}{figure / measured:>21.2f}"
              f"{model / 1e9:>10.2f}{(measured - model) / 1e9:>9.2f}   {shown}")
        # the same estimate at the model's full depth (32 layers): the per-layer parts scale, the rest does not
        deep = dataclasses.replace(shapes, layers=32, layer_linear=int(32 * per_layer),
                                   llm_params=r["llm_params"] + int(30 * per_layer))
        lora_per_layer = (r["trainable"] - shapes.projector_params) // layers
        trainable = shapes.projector_params + 32 * lora_per_layer
        whole = estimate.peak_memory(deep, data, recipe, trainable=trainable)
        print(f"{'':<12}at 32 layers, bf16: {sum(_bf16(deep, data, recipe, trainable).values()) / 1e9:.1f} GB; "
              f"fp32: {sum(whole.values()) / 1e9:.1f} GB")


TOWER_CHILD = r"""
import sys
def peak_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
import json, torch
from accelerate import Accelerator
from transformers import LlavaForConditionalGeneration
from backbone_swap.training.model import load_vision_tower
accelerator = Accelerator(cpu=True)
base = peak_kb()
path, how = sys.argv[1:3]
if how == "whole VLM":  # what filling the cache did: the whole model loaded to run its tower
    tower = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).model.vision_tower
else:
    tower = load_vision_tower(path, "fp32", accelerator)
size = sum(p.numel() * p.element_size() for p in tower.parameters())
print(json.dumps({"extra_kb": peak_kb() - base, "tower_bytes": size}))
"""


def tower_row(workdir: Path) -> None:
    """The vision tower loaded to fill the feature cache, alone or inside its VLM, from a bf16 checkpoint
    (a CLIP-L/336 tower and a ~1B-parameter LLM, bench/transplant.py's inputs) in float32, as the fp32 recipes
    fill it (a precision other than the file's makes every tensor loaded a copy)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_transplant", Path(__file__).with_name("transplant.py"))
    bench_transplant = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_transplant)
    from backbone_swap.transplant import transplant

    old, new, _ = bench_transplant.build_inputs(workdir / "inputs", 16)
    vlm = workdir / "vlm"
    if not (vlm / "manifest.json").is_file():
        transplant(old, new, vlm, hash_inputs=False)
    files = sum(f.stat().st_size for f in vlm.glob("*.safetensors"))
    print(f"tower: filling the feature cache from a {files / 1e9:.2f} GB VLM, float32")
    results = {}
    for how in ("whole VLM", "tower alone"):
        result = subprocess.run([sys.executable, "-c", TOWER_CHILD, str(vlm), how], capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"the measurement failed:\n{result.stderr[-3000:]}")
        r = results[how] = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"  {how:<12} peak above the imports {r['extra_kb'] / 1e6:.2f} GB "
              f"({r['extra_kb'] * 1024 / r['tower_bytes']:.2f} x the tower's {r['tower_bytes'] / 1e9:.2f} GB)")
    print(f"  tower alone / whole VLM: {results['tower alone']['extra_kb'] / results['whole VLM']['extra_kb']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="logits,estimate,tower")
    parser.add_argument("--logits-hidden", default="1024,2048", help="widths of the logits row, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "backbone-swap-bench")
    args = parser.parse_args()
    rows = args.rows.split(",")
    if "tower" in rows:
        tower_row(args.workdir)
    if "logits" in rows:
        for hidden in map(int, args.logits_hidden.split(",")):  # the logits' share falls as the model widens
            logits_row(args.threads, hidden)
    if "estimate" in rows:
        estimate_row(args.threads)


if __name__ == "__main__":
    main()
