"""Training throughput of backbone-swap's trainer against a plain Hugging Face ``Trainer``.

    python bench/train.py [--workdir DIR] [--steps 12] [--batch 8]

Same model (a VLM with a CLIP tower of 196 patches and a small Llama), same LoRA + projector setup, same
tokenised data, same batch size and number of optimizer steps. Three paths:
  Trainer        a Hugging Face ``Trainer`` on ``LlavaForConditionalGeneration``: the vision tower runs on
                 every image at every step (the usual LLaVA training loop)
  no cache       backbone-swap's trainer with ``cache_features=False``: its own loop, the tower also run on
                 every batch (``--no-cache-features``)
  cached         backbone-swap's trainer reading the tower's features from its cache (the default)
Printed: samples/s over the optimizer steps of each, the ratios, and the one-time cost of filling the
feature cache (paid once per data set and tower, shared by every backbone trained on it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def build(root: Path) -> tuple[Path, Path, Path]:
    from backbone_swap.demo import scenes
    from backbone_swap.demo import tiny_models as tm
    from backbone_swap.transplant import transplant

    model = root / "vlm"
    if not (model / "model.safetensors").exists():
        shutil.rmtree(root, ignore_errors=True)
        vision = tm.VisionSpec(hidden_size=384, layers=6, heads=6, image_size=224, patch_size=16)
        old = tm.build_llava(root / "old", vision=vision)
        llm = tm.build_llm(root / "llm", tm.LLMSpec(family="llama", hidden_size=256, layers=4, heads=4, kv_heads=4,
                                                    intermediate_size=688, tokenizer=tm.TokenizerSpec(
                                                        chat_template=tm.LLAVA_TEMPLATE, pad="<pad>")))
        transplant(old, llm, model, hash_inputs=False)
        records = scenes.colour_questions(root / "images", 128, seed=0, size=224)
        scenes.write_jsonl(records, root / "train.jsonl")
    return model, root / "train.jsonl", root / "images"


def ours(model: Path, data: Path, images: Path, root: Path, steps: int, batch: int, *, cache: bool = True) -> dict:
    from backbone_swap.training.recipe import apply_overrides, load_recipe
    from backbone_swap.training.train import train

    recipe = apply_overrides(load_recipe("tiny-cpu"), [
        "stage1.max_steps=1", f"stage2.max_steps={steps}", f"stage2.global_batch={batch}",
        f"stage2.micro_batch={batch}", "stage1.global_batch=8", "stage1.micro_batch=8", "group_by_length=false"])
    marks: list[float] = []

    def mark(info):
        if info.stage == "stage2":
            marks.append(time.perf_counter())

    folder = root / "cache"
    if not cache:
        train(model, recipe=recipe, data=data, image_root=images, output=root / "ours-live", feature_cache=folder,
              cache_features=False, callbacks=[mark], show_progress=False)
        return {"samples_per_s": (len(marks) - 1) * batch / (marks[-1] - marks[0])}
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    train(model, recipe=recipe, data=data, image_root=images, output=root / "ours-cold", feature_cache=folder,
          show_progress=False)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    train(model, recipe=recipe, data=data, image_root=images, output=root / "ours", feature_cache=folder,
          callbacks=[mark], show_progress=False)
    warm = time.perf_counter() - started
    rate = (len(marks) - 1) * batch / (marks[-1] - marks[0])
    return {"samples_per_s": rate, "run_cold_s": cold, "run_warm_s": warm}


def hf_trainer(model_dir: Path, data: Path, images: Path, root: Path, steps: int, batch: int) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration, Trainer, TrainerCallback, TrainingArguments

    from backbone_swap.checkpoints.templates import end_of_turn
    from backbone_swap.training.batching import pad_batch
    from backbone_swap.training.data import build_dataset
    from backbone_swap.training.features import preprocess
    from backbone_swap.training.model import lora_target_regex

    processor = AutoProcessor.from_pretrained(model_dir)
    tok = processor.tokenizer
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    dataset = build_dataset(data, tok, image_root=images, image_token="<image>",
                            image_tokens=model.config.image_seq_length, max_length=256, end_of_turn=end_of_turn(tok))
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=lora_target_regex(model, "family"),
                        modules_to_save=["multi_modal_projector"])
    model = get_peft_model(model, config)

    def collate(samples):
        ids, mask, labels = pad_batch(samples, tok.pad_token_id)
        pixels = preprocess([Image.open(s.image).convert("RGB") for s in samples], processor.image_processor, "pad")
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}

    marks: list[float] = []

    class Mark(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    args = TrainingArguments(output_dir=str(root / "hf"), per_device_train_batch_size=batch, max_steps=steps,
                             learning_rate=1e-2, lr_scheduler_type="cosine", warmup_steps=1, save_strategy="no",
                             report_to=[], use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False,
                             logging_steps=10**6, seed=0)
    Trainer(model=model, args=args, train_dataset=dataset.samples, data_collator=collate,
            callbacks=[Mark()]).train()
    return (len(marks) - 1) * batch / (marks[-1] - marks[0])


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "backbone-swap-bench-train")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    model, data, images = build(args.workdir / "inputs")
    for folder in ("ours", "ours-cold", "ours-live", "hf"):
        shutil.rmtree(args.workdir / folder, ignore_errors=True)
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    hf = hf_trainer(model, data, images, args.workdir, args.steps, args.batch)
    live = ours(model, data, images, args.workdir, args.steps, args.batch, cache=False)["samples_per_s"]
    mine = ours(model, data, images, args.workdir, args.steps, args.batch)
    print(f"HF Trainer (tower on every step):              {hf:8.2f} samples/s")
    print(f"backbone-swap, no cache (tower on every step): {live:8.2f} samples/s")
    print(f"backbone-swap (cached tower features):         {mine['samples_per_s']:8.2f} samples/s")
    print(f"ratio backbone-swap / Trainer: {mine['samples_per_s'] / hf:.2f} (goal >= 1.3)")
    print(f"ratio backbone-swap without cache / Trainer: {live / hf:.2f} (the loop alone)")
    print(f"ratio backbone-swap / backbone-swap without cache: {mine['samples_per_s'] / live:.2f} (the cache alone)")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"whole run, cache empty: {mine['run_cold_s']:.1f} s; cache filled: {mine['run_warm_s']:.1f} s "
          f"(the difference is the one-time feature computation for 128 images)")


if __name__ == "__main__":
    main()
