"""Training and evaluation throughput on one CUDA GPU in bfloat16, at a size that fills it meaningfully.

    python bench/gpu.py [--workdir DIR] [--peak-tflops 989] [--train-steps 12] [--batch 16] [--eval-items 64]
    python bench/gpu.py --cpu-smoke          # the same code on tiny sizes, float32, on CPU (a test runs it)

Built offline with backbone-swap's own builders (random weights, nothing downloaded): a LLaVA checkpoint
whose vision tower has CLIP-L/336's shape (1024 wide, 24 layers, 336 px / 14 px patches: 576 image tokens,
0.3B parameters), transplanted onto a TinyLlama-1.1B-shaped Llama (2048 wide, 22 layers, 32 heads, 4 KV
heads, MLP 5632, vocabulary padded to 32000). Then, in this process:

  train   backbone-swap's trainer with the llava15-lora recipe (bf16, gradient checkpointing, LoRA r 128 on
          every Linear of the LLM, projector trained), stage 2 timed over its optimizer steps; once reading
          the vision-feature cache, once running the tower on every batch (--no-cache-features)
  eval    Evaluator.generate in batches against one-at-a-time transformers generate, greedy, the same items

Printed for each: samples/s, tokens/s, peak GPU memory (torch.cuda.max_memory_allocated) and MFU.

MFU = model FLOPs per second / peak FLOPs per second. Peak: --peak-tflops, default 989 (H100 / H200 SXM,
bf16 dense, no sparsity); use 312 for an A100. Model FLOPs count matrix products only, recomputation from
gradient checkpointing excluded:
  train, per token:  4 * P_llm + 12 * L * s * d   (forward 2P, gradient of the activations 2P, no weight
                     gradient for frozen weights; attention scores and values 4 * L * s * d forward, twice
                     that backward); s is the batch's mean sequence length, image tokens included; the
                     cached tower adds nothing, the live tower adds 2 * P_tower per image token
  eval, per sample:  2 * P_llm * (prompt + generated tokens) + 2 * P_tower * image tokens + attention
where P counts the weights of the Linear layers (lm_head included, embeddings not). ``bench/gpu.sh`` runs
this under a time limit.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the package is imported inside the phases, after the command line is read
    from backbone_swap.evaluate.evaluator import Evaluator
    from backbone_swap.evaluate.suite import Task


@dataclass(frozen=True)
class Size:
    """The model and workload shape of one benchmark run."""

    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_intermediate: int
    vocab: int
    tower_hidden: int
    tower_layers: int
    tower_heads: int
    tower_intermediate: int
    image_size: int
    patch_size: int
    train_images: int
    eval_items: int


FULL = Size(llm_hidden=2048, llm_layers=22, llm_heads=32, llm_kv_heads=4, llm_intermediate=5632, vocab=32000,
            tower_hidden=1024, tower_layers=24, tower_heads=16, tower_intermediate=4096, image_size=336,
            patch_size=14, train_images=512, eval_items=64)
SMOKE = Size(llm_hidden=64, llm_layers=2, llm_heads=4, llm_kv_heads=2, llm_intermediate=128, vocab=512,
             tower_hidden=32, tower_layers=2, tower_heads=2, tower_intermediate=64, image_size=32, patch_size=8,
             train_images=32, eval_items=8)


def build(root: Path, size: Size) -> tuple[Path, Path, Path]:
    """The transplanted checkpoint, a training set and an evaluation set (reused when already built)."""
    from backbone_swap.demo import scenes
    from backbone_swap.demo import tiny_models as tm
    from backbone_swap.transplant import transplant

    model = root / "vlm"
    if not (root / "built.json").is_file() or json.loads((root / "built.json").read_text()) != size.__dict__:
        shutil.rmtree(root, ignore_errors=True)
        vision = tm.VisionSpec(hidden_size=size.tower_hidden, layers=size.tower_layers, heads=size.tower_heads,
                               image_size=size.image_size, patch_size=size.patch_size,
                               intermediate_size=size.tower_intermediate)
        old = tm.build_llava(root / "old", vision=vision)
        spec = tm.LLMSpec(family="llama", hidden_size=size.llm_hidden, layers=size.llm_layers, heads=size.llm_heads,
                          kv_heads=size.llm_kv_heads, intermediate_size=size.llm_intermediate, dtype="bfloat16",
                          initializer_range=0.02, max_positions=4096,
                          tokenizer=tm.TokenizerSpec(chat_template=tm.LLAVA_TEMPLATE, pad="<pad>",
                                                     model_max_length=4096))
        llm = tm.build_llm(root / "llm", spec)
        transplant(old, llm, model, dtype="bfloat16", pad_vocab_to=size.vocab, hash_inputs=False)
        records = scenes.colour_questions(root / "images", size.train_images, seed=0, size=size.image_size)
        scenes.write_jsonl(records, root / "train.jsonl")
        items = scenes.colour_items(root / "eval-images", size.eval_items, seed=1, size=size.image_size)
        scenes.write_jsonl(items, root / "eval.jsonl")
        shutil.rmtree(root / "old")
        shutil.rmtree(root / "llm")
        (root / "built.json").write_text(json.dumps(size.__dict__))
    return model, root / "train.jsonl", root / "eval.jsonl"


# ------------------------------------------------------------------------------------------------ FLOPs


def llm_matmul_params(text) -> int:
    """Weights of the language model's Linear layers (attention, MLP, lm_head) from its config."""
    d, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    head = getattr(text, "head_dim", None) or d // text.num_attention_heads
    attention = d * head * (2 * text.num_attention_heads + 2 * text.num_key_value_heads)
    mlp = 3 * d * text.intermediate_size
    return layers * (attention + mlp) + d * vocab


def tower_matmul_params(vision) -> int:
    """Weights of a CLIP-style tower's Linear layers (4 attention projections, 2 MLP) from its config."""
    d = vision.hidden_size
    return vision.num_hidden_layers * (4 * d * d + 2 * d * vision.intermediate_size)


def train_flops_per_token(text, mean_length: float) -> float:
    return 4 * llm_matmul_params(text) + 12 * text.num_hidden_layers * mean_length * text.hidden_size


def eval_flops(text, vision, prompt: int, generated: int, image_tokens: int) -> float:
    """Matrix-product FLOPs of one greedy answer: tower, prefill and decoding (attention included)."""
    layers, d = text.num_hidden_layers, text.hidden_size
    attention = 4 * layers * d * (prompt * prompt / 2 + generated * (prompt + generated / 2))
    return (2 * llm_matmul_params(text) * (prompt + generated) + 2 * tower_matmul_params(vision) * image_tokens
            + attention)


# ------------------------------------------------------------------------------------------------ phases


def _peak_memory_reset(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_memory_gib(device: str) -> float | None:
    import torch

    if device != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def train_phase(model: Path, data: Path, images: Path, root: Path, *, steps: int, batch: int, smoke: bool,
                cache: bool, device: str) -> dict[str, Any]:
    """Stage-2 throughput of backbone-swap's trainer (stage 1 runs one step, to reach stage 2)."""
    from transformers import AutoConfig

    from backbone_swap.training.recipe import apply_overrides, load_recipe
    from backbone_swap.training.train import train

    overrides = ["stage1.max_steps=1", f"stage1.global_batch={batch}", f"stage1.micro_batch={batch}",
                 f"stage2.max_steps={steps}", f"stage2.global_batch={batch}", f"stage2.micro_batch={batch}",
                 "stage2.epochs=100", "group_by_length=false", "max_length=1024"]
    if smoke:
        overrides += ["precision=fp32", "gradient_checkpointing=false"]
    recipe = apply_overrides(load_recipe("llava15-lora"), overrides)
    marks: list[float] = []

    def mark(info) -> None:
        if info.stage == "stage2":
            if device == "cuda":
                import torch

                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    out = root / ("train-cached" if cache else "train-live")
    shutil.rmtree(out, ignore_errors=True)
    _peak_memory_reset(device)
    result = train(model, recipe=recipe, data=data, image_root=images, output=out, feature_cache=root / "cache",
                   cache_features=cache, callbacks=[mark], show_progress=False)
    timed = len(marks) - 1  # the first step includes warm-up
    seconds = marks[-1] - marks[0]
    samples_per_s = timed * batch / seconds
    data_record = result.manifest["data"]
    mean_length = data_record["tokens"] / data_record["samples"]  # batches are drawn from all samples alike
    config = AutoConfig.from_pretrained(model)
    flops_per_token = train_flops_per_token(config.text_config, mean_length)
    image_tokens = (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1
    if not cache:
        flops_per_token += 2 * tower_matmul_params(config.vision_config) * image_tokens / mean_length
    return {"samples_per_s": samples_per_s, "tokens_per_s": samples_per_s * mean_length,
            "flops_per_s": samples_per_s * mean_length * flops_per_token, "peak_gib": _peak_memory_gib(device),
            "steps_timed": timed, "mean_length": mean_length, "final_loss": result.manifest.get("final_loss")}


def eval_phase(model_dir: Path, items_file: Path, *, batch_sizes: list[int], device: str, dtype: str,
               max_new_tokens: int) -> dict[str, Any]:
    """Batched Evaluator.generate against one-at-a-time transformers generate on the same items."""
    import torch

    from backbone_swap.evaluate.evaluator import Evaluator
    from backbone_swap.evaluate.runner import _load_image
    from backbone_swap.evaluate.suite import Task, read_items

    task = Task(name="colour", type="short_answer", needs="perception", data=items_file,
                image_root=items_file.parent / "eval-images", max_new_tokens=max_new_tokens)
    items = read_items(task)
    images = [_load_image(task, item) for item in items]
    questions = [item["question"] for item in items]
    evaluator = Evaluator(model_dir, device=device, dtype=dtype)
    model, processor = evaluator.model, evaluator.processor
    config = model.config
    image_tokens = config.image_seq_length

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    prompt_tokens: list[int] = []

    def loop() -> tuple[list[str], float]:
        answers, flops = [], 0.0
        prompt_tokens.clear()
        for image, question in zip(images, questions, strict=True):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
            # as the evaluator prepares a prompt: the rendered template holds its BOS already
            inputs = processor(images=image, text=prompt, add_special_tokens=False, return_tensors="pt").to(device)
            prompt_tokens.append(inputs["input_ids"].shape[1])
            with torch.no_grad():
                out = model.generate(**inputs, generation_config=evaluator._greedy(max_new_tokens))
            tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
            keep = next((i + 1 for i, t in enumerate(tokens) if t in evaluator.stop_ids), len(tokens))
            answers.append(processor.tokenizer.decode(tokens[:keep], skip_special_tokens=True).strip())
            flops += eval_flops(config.text_config, config.vision_config, inputs["input_ids"].shape[1], keep,
                                image_tokens)
        return answers, flops

    def batched(size: int) -> list[str]:
        evaluator.batch_size = size
        return answers_in_batches(evaluator, images, questions, task, size)

    loop()  # warm-up (kernels, allocator)
    batched(batch_sizes[0])
    rows = {}
    _peak_memory_reset(device)
    sync()
    started = time.perf_counter()
    reference, flops = loop()
    sync()
    seconds = time.perf_counter() - started
    rows["loop"] = {"seconds": seconds, "peak_gib": _peak_memory_gib(device), "identical": len(items)}
    for size in batch_sizes:
        _peak_memory_reset(device)
        sync()
        started = time.perf_counter()
        answers = batched(size)
        sync()
        rows[f"batch {size}"] = {"seconds": time.perf_counter() - started, "peak_gib": _peak_memory_gib(device),
                                 "identical": sum(a == r for a, r in zip(answers, reference, strict=True))}
    for row in rows.values():
        row["samples_per_s"] = len(items) / row["seconds"]
        row["flops_per_s"] = flops / row["seconds"]  # the same answers' work, whichever path computed it
    return {"rows": rows, "items": len(items), "prompt_tokens": sum(prompt_tokens), "loop_seconds": seconds,
            "shared_prefix": shared_prefix_rows(evaluator, images, questions, task, batch_sizes[-1], sync)}


PER_IMAGE = 6  # POPE asks six questions of each image


def answers_in_batches(evaluator: Evaluator, images: list, questions: list[str], task: Task, size: int) -> list[str]:
    """The evaluator's answers, ``size`` questions a call, as the runner hands it a task's items."""
    answers = []
    for i in range(0, len(images), size):
        answers += [text for text, _ in evaluator.generate(images[i:i + size], questions[i:i + size], task)]
    return answers


def shared_prefix_rows(evaluator: Evaluator, images: list, questions: list[str], task: Task, size: int,
                       sync: Callable[[], None]) -> dict[str, Any]:
    """Six questions about each image, as POPE asks them: every prompt run whole against the conversation up
    to and including the image run once per image, its KV cache copied for each question."""
    shown = [images[i // PER_IMAGE] for i in range(len(images))]
    kept = evaluator.batch_size, evaluator.share_prefixes
    evaluator.batch_size = size
    rows: dict[str, Any] = {}
    for label, share in (("alone", False), ("shared", True)):
        evaluator.share_prefixes = share
        evaluator.generate(shown[:size], questions[:size], task)  # warm-up of this path's shapes
        evaluator.forget_prefix()  # the warm-up's image prefix is not the timed run's to reuse
        _peak_memory_reset(evaluator.device)
        sync()
        started = time.perf_counter()
        answers = answers_in_batches(evaluator, shown, questions, task, size)
        sync()
        rows[label] = {"seconds": time.perf_counter() - started, "peak_gib": _peak_memory_gib(evaluator.device),
                       "answers": answers}
    evaluator.batch_size, evaluator.share_prefixes = kept
    same = sum(a == b for a, b in zip(rows["alone"]["answers"], rows["shared"]["answers"], strict=True))
    return {"items": len(shown), "images": -(-len(shown) // PER_IMAGE), "batch": size, "identical": same,
            **{label: {k: v for k, v in row.items() if k != "answers"} for label, row in rows.items()}}


# ------------------------------------------------------------------------------------------------ main


def plan_memory(model: Path, data: Path, batch: int, smoke: bool) -> dict[str, int]:
    """The memory the plan of ``upgrade`` gives for this training (``estimate.peak_memory``, by part), from the
    checkpoint's tensor shapes and the data as the plan measures them."""
    from transformers import AutoConfig, AutoTokenizer

    from backbone_swap.checkpoints.families import lora_targets
    from backbone_swap.checkpoints.folder import open_checkpoint
    from backbone_swap.training import estimate
    from backbone_swap.training.recipe import apply_overrides, load_recipe

    overrides = [f"stage1.micro_batch={batch}", f"stage2.micro_batch={batch}", "max_length=1024"]
    recipe = apply_overrides(load_recipe("llava15-lora"), overrides + (["precision=fp32"] if smoke else []))
    weights, config = open_checkpoint(model).weights, AutoConfig.from_pretrained(model)
    names = weights.names()
    language = [n for n in names if "language_model" in n]

    class LanguageModel:  # the LLM's tensors of the VLM, as the plan reads an LLM checkpoint
        def names(self) -> list[str]:
            return language

        def shape(self, name: str) -> tuple[int, ...]:
            return weights.shape(name)

    text, vision = config.text_config, config.vision_config
    lora = recipe.stages[-1].lora
    targets = lora_targets(text.model_type, language) if isinstance(lora.targets, str) else tuple(lora.targets)
    patches = (vision.image_size // vision.patch_size) ** 2
    shapes = estimate.Shapes(
        **estimate.llm_shapes(text.to_dict(), LanguageModel(), targets, lora.r),
        vision_params=sum(math.prod(weights.shape(n)) for n in names if "vision_tower" in n),
        vision_layers=vision.num_hidden_layers, vision_width=vision.hidden_size, vision_tokens=patches + 1,
        image_tokens=patches, projector_in=vision.hidden_size, projector_out=text.hidden_size,
        llm_params=sum(math.prod(weights.shape(n)) for n in names if "vision_tower" not in n
                       and "multi_modal_projector" not in n))
    size = estimate.measure_data(data, AutoTokenizer.from_pretrained(model), patches)
    return estimate.peak_memory(shapes, size, recipe, trainable=shapes.projector_params + shapes.lora_params)


def _fmt_gib(value: float | None) -> str:
    return "n/a (CPU)" if value is None else f"{value:.1f} GiB"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "backbone-swap-bench-gpu")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the GPU's dense bf16 peak (989: H100/H200 SXM; 312: A100)")
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval-batch-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--skip", choices=["train", "eval"], action="append", default=[])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, float32, on CPU")
    args = parser.parse_args(argv)

    import torch

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --cpu-smoke")
    device = "cpu" if smoke else "cuda"
    size = SMOKE if smoke else FULL
    if smoke:
        args.train_steps, args.batch, args.eval_batch_sizes = 3, 4, [4]
    peak = args.peak_tflops * 1e12
    started = time.perf_counter()
    name = "CPU (smoke run, figures meaningless)" if smoke else torch.cuda.get_device_name(0)
    print(f"device: {name}; torch {torch.__version__}; peak assumed {args.peak_tflops:g} TFLOP/s", flush=True)
    model, data, items = build(args.workdir / "inputs", size)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    p_llm, p_tower = llm_matmul_params(config.text_config), tower_matmul_params(config.vision_config)
    print(f"model: LLM {p_llm / 1e9:.2f}B matmul weights ({config.text_config.num_hidden_layers} layers, "
          f"{config.text_config.hidden_size} wide, vocabulary {config.text_config.vocab_size}), tower "
          f"{p_tower / 1e9:.2f}B ({config.image_seq_length} image tokens); built in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    results: dict[str, Any] = {"device": name, "peak_tflops": args.peak_tflops}

    if "train" not in args.skip:
        print(f"\ntrain: llava15-lora stage 2 (LoRA r 128 + projector), batch {args.batch}, "
              f"{args.train_steps} optimizer steps, {'fp32' if smoke else 'bf16, gradient checkpointing'}")
        print(f"{'path':<34}{'samples/s':>11}{'tokens/s':>11}{'peak memory':>14}{'MFU':>8}")
        for cache in (True, False):
            row = train_phase(model, data, args.workdir / "inputs" / "images", args.workdir, steps=args.train_steps,
                              batch=args.batch, smoke=smoke, cache=cache, device=device)
            label = "cached tower features" if cache else "tower on every batch"
            print(f"{label:<34}{row['samples_per_s']:>11.2f}{row['tokens_per_s']:>11.0f}"
                  f"{_fmt_gib(row['peak_gib']):>14}{row['flops_per_s'] / peak:>8.1%}", flush=True)
            results[f"train_{'cached' if cache else 'live'}"] = row
        cached, live = results["train_cached"], results["train_live"]
        print(f"(mean sample length {cached['mean_length']:.0f} tokens, image tokens included; "
              f"cached / live: {cached['samples_per_s'] / live['samples_per_s']:.2f})")
        parts = plan_memory(model, data, args.batch, smoke)
        planned = sum(parts.values()) / 2**30
        measured = cached["peak_gib"]
        against = f"{measured:.2f} GiB measured (cached features), {measured / planned:.2f} x the plan" \
            if measured is not None else "no GPU memory to measure on CPU"
        print(f"memory: the plan's estimate {planned:.2f} GiB ("
              + ", ".join(f"{k.replace('_', ' ')} {v / 2**30:.2f}" for k, v in parts.items()) + f"); {against}")
        results["plan_memory"] = {"parts": parts, "planned_gib": planned, "measured_gib": measured}

    if "eval" not in args.skip:
        ev = eval_phase(model, items, batch_sizes=args.eval_batch_sizes, device=device,
                        dtype="float32" if smoke else "bfloat16", max_new_tokens=args.max_new_tokens)
        loop_rate = ev["rows"]["loop"]["samples_per_s"]
        print(f"\neval: {ev['items']} colour questions, greedy, max_new_tokens {args.max_new_tokens}, "
              f"{ev['prompt_tokens'] / ev['items']:.0f} prompt tokens a sample (image included)")
        print(f"{'path':<34}{'samples/s':>11}{'tokens/s':>11}{'peak memory':>14}{'MFU':>8}{'x loop':>8}"
              f"{'same':>8}")
        for label, row in ev["rows"].items():
            tokens = ev["prompt_tokens"] / ev["items"] * row["samples_per_s"]
            print(f"{label:<34}{row['samples_per_s']:>11.2f}{tokens:>11.0f}{_fmt_gib(row['peak_gib']):>14}"
                  f"{row['flops_per_s'] / peak:>8.1%}{row['samples_per_s'] / loop_rate:>8.2f}"
                  f"{row['identical']:>5}/{ev['items']}", flush=True)
        print("(tokens/s: prompt tokens processed; 'same': answers identical to the loop's, which bf16 kernels "
              "chosen per batch shape may change on near-ties of random weights)")
        sp = ev["shared_prefix"]
        print(f"shared image prefix: {sp['items']} questions about {sp['images']} images ({PER_IMAGE} each), batch "
              f"{sp['batch']}: every prompt whole {sp['alone']['seconds']:.2f} s, the image prefix once per image "
              f"{sp['shared']['seconds']:.2f} s (x{sp['alone']['seconds'] / sp['shared']['seconds']:.2f}), peak "
              f"{_fmt_gib(sp['alone']['peak_gib'])} / {_fmt_gib(sp['shared']['peak_gib'])}, same answers "
              f"{sp['identical']}/{sp['items']}", flush=True)
        results["eval"] = ev
    seconds = time.perf_counter() - started
    print(f"\nwhole benchmark: {seconds:.0f} s", flush=True)
    results["seconds"] = seconds
    if not all(math.isfinite(r["samples_per_s"]) for k, r in results.items() if k.startswith("train_")):
        raise SystemExit("a training rate is not finite")
    return results


if __name__ == "__main__":
    main()
