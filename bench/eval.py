"""Eval throughput of the batched generation path against answering one sample at a time.

    python bench/eval.py [--workdir DIR] [--items 64] [--batch-sizes 4 8 16] [--threads N] [--repeats 3]
                         [--max-new-tokens 8] [--mixed-questions]

Builds (once, in --workdir) a LLaVA checkpoint with a small CLIP tower (224 px, 32 px patches: 49 image
tokens) and a 6-layer, 512-wide Llama (23M parameters in all, random weights), and N drawn colour questions.
Then, in this process and on the same checkpoint and items:
  loop     plain transformers, one item at a time: processor(...) then model.generate(max_new_tokens=8,
           greedy), answer decoded without special tokens
  batched  backbone_swap's Evaluator.generate over the items in batches of B (left padding, KV cache,
           plus the confidences it computes)
Each is timed with time.perf_counter after one warm-up call, over all N items, --repeats times with the
paths interleaved (the fastest pass of each counts: the machine may be shared). Prints samples/s, the ratio
batched / loop (goal >= 4 at batch 16 on CPU), how many predictions are identical to the loop's, and the
load average before and after.
All questions of the drawn set have the same wording, hence the same prompt length, so batches need no
padding; --mixed-questions rewords them in four ways of different lengths, so left padding is exercised.

Then the shared-prefix row (--only-shared-prefix runs it alone): a second checkpoint whose image prefix dominates
the prompt, a CLIP tower at 336 px / 14 px patches (576 image tokens, 64 wide, 2 layers) before a 4-layer,
512-wide Llama, and --prefix-images drawn images with --questions-per-image questions each (POPE's six
"Is there a <object> in the image?", of different lengths), ordered image by image as ``evaluate_task`` orders
them. On the same items, in batches of --prefix-batch:
  alone    Evaluator(share_prefixes=False).generate: every prompt whole, its image's tokens in every row
  shared   Evaluator.generate: the conversation up to and including the image run once per image, the
           questions continuing from its cache
Prints both paths' wall-clock and CPU seconds (the process's, all threads: on a shared machine they move less than
the wall clock), samples/s, the ratio alone / shared (goal >= 3 at 576 image tokens and 6 questions per image),
and how many answers are identical with confidences within 1e-4.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

WORDINGS = (
    "what colour is the shape?",
    "colour?",
    "what colour is the shape in the picture?",
    "answer with one word: what colour is the shape in the picture, the red, green, blue or yellow one?",
)


def build_inputs(root: Path, items: int, seed: int) -> tuple[Path, Path]:
    """The checkpoint and a JSONL of ``items`` colour questions with their images (kept between runs)."""
    from backbone_swap.demo import scenes
    from backbone_swap.demo import tiny_models as tm

    model_dir, data = root / "vlm", root / "data" / f"colour-{items}-{seed}.jsonl"
    if not (model_dir / "done").exists():
        llm = tm.LLMSpec(family="llama", hidden_size=512, layers=6, heads=8, kv_heads=8, intermediate_size=1408,
                         tokenizer=tm.TokenizerSpec(chat_template=tm.LLAVA_TEMPLATE, pad="<pad>"))
        vision = tm.VisionSpec(hidden_size=256, layers=4, heads=4, image_size=224, patch_size=32)
        tm.build_llava(model_dir, llm, vision)
        (model_dir / "done").write_text("")
    if not data.exists():
        scenes.write_jsonl(scenes.colour_items(data.parent / "images", items, seed=seed), data)
    return model_dir, data


def prompt_of(processor, question: str, instruction: str) -> str:
    text = f"{question} {instruction}".strip()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def loop_answers(model, processor, images, questions, instruction: str, max_new_tokens: int) -> list[str]:
    """The baseline: plain transformers generate, one sample at a time."""
    import torch

    answers = []
    for image, question in zip(images, questions, strict=True):
        inputs = processor(images=image, text=prompt_of(processor, question, instruction), return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        tokens = out[0, inputs["input_ids"].shape[1] :]
        answers.append(processor.tokenizer.decode(tokens, skip_special_tokens=True).strip())
    return answers


def batched_answers(evaluator, images, questions, task, batch: int) -> list[str]:
    answers = []
    for i in range(0, len(images), batch):
        answers += [text for text, _ in evaluator.generate(images[i : i + batch], questions[i : i + batch], task)]
    return answers


PREFIX_WORDINGS = (  # POPE's form: six questions about each image, of slightly different lengths
    "Is there a dog in the image?",
    "Is there a red shape in the image?",
    "Is there a traffic light in the image?",
    "Is there a person in the image?",
    "Is there a circle in the image?",
    "Is there a dining table in the image?",
)


def build_prefix_inputs(root: Path, images: int, per_image: int, seed: int) -> tuple[Path, Path]:
    """A checkpoint whose prompts are mostly image (576 image tokens before a tiny LLM) and a JSONL of
    ``per_image`` questions about each of ``images`` drawn images, image by image (kept between runs)."""
    from backbone_swap.demo import scenes
    from backbone_swap.demo import tiny_models as tm

    model_dir = root / "vlm-576-512"
    data = root / "data" / f"colour-{images}x{per_image}-{seed}.jsonl"
    if not (model_dir / "done").exists():
        llm = tm.LLMSpec(family="llama", hidden_size=512, layers=4, heads=8, kv_heads=8, intermediate_size=1408,
                         max_positions=2048, tokenizer=tm.TokenizerSpec(chat_template=tm.LLAVA_TEMPLATE, pad="<pad>"))
        vision = tm.VisionSpec(hidden_size=64, layers=2, heads=2, image_size=336, patch_size=14)
        tm.build_llava(model_dir, llm, vision)
        (model_dir / "done").write_text("")
    if not data.exists():
        items = [{**item, "id": f"{item['id']}-{k}", "question": PREFIX_WORDINGS[k % len(PREFIX_WORDINGS)]}
                 for item in scenes.colour_items(data.parent / "images", images, seed=seed) for k in range(per_image)]
        scenes.write_jsonl(items, data)
    return model_dir, data


def shared_prefix_row(args: argparse.Namespace) -> None:
    """Questions about one image answered from its shared prefix, against every prompt run whole."""
    from backbone_swap.evaluate.evaluator import Evaluator
    from backbone_swap.evaluate.runner import _load_image
    from backbone_swap.evaluate.suite import Task, read_items

    model_dir, data = build_prefix_inputs(args.workdir, args.prefix_images, args.questions_per_image, args.seed)
    task = Task(name="colour", type="short_answer", needs="perception", data=data, image_root=data.parent / "images",
                max_new_tokens=args.max_new_tokens)
    items = read_items(task)
    loaded: dict[str, object] = {}
    images = [loaded.setdefault(item["image"], _load_image(task, item)) for item in items]  # one object per image
    questions = [item["question"] for item in items]
    n, batch = len(items), args.prefix_batch
    evaluators = {"alone (every prompt whole)": Evaluator(model_dir, device="cpu", share_prefixes=False),
                  "shared image prefix": Evaluator(model_dir, device="cpu")}
    first = next(iter(evaluators.values()))
    model = first.model
    params = sum(p.numel() for p in model.parameters())
    lengths = [len(first._inputs([images[0]], [prompt_of(first.processor, q, task.instruction)])["input_ids"][0])
               for q in PREFIX_WORDINGS]
    print()
    print(f"shared prefix: {params / 1e6:.1f}M parameters, {model.config.image_seq_length} image tokens, prompts "
          f"{min(lengths)}-{max(lengths)} tokens; {len(loaded)} images x {args.questions_per_image} questions, "
          f"batch {batch}, max_new_tokens {task.max_new_tokens}, greedy; fastest of {args.repeats} passes")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))

    def run(evaluator) -> list[tuple[str, float]]:
        evaluator.forget_prefix()  # each pass starts cold, as a task does
        answers = []
        for i in range(0, n, batch):
            answers += evaluator.generate(images[i : i + batch], questions[i : i + batch], task)
        return answers

    for evaluator in evaluators.values():  # warm-up
        evaluator.generate(images[:batch], questions[:batch], task)
    seconds, cpu, answers = dict.fromkeys(evaluators, float("inf")), dict.fromkeys(evaluators, float("inf")), {}
    for _ in range(args.repeats):  # interleaved, as above
        for name, evaluator in evaluators.items():
            t, c = time.perf_counter(), time.process_time()
            answers[name] = run(evaluator)
            seconds[name] = min(seconds[name], time.perf_counter() - t)
            cpu[name] = min(cpu[name], time.process_time() - c)
    names = list(evaluators)
    reference = answers[names[0]]
    # CPU seconds too: on a machine other work shares, they move less than the wall clock
    print(f"{'path':<30}{'seconds':>10}{'samples/s':>12}{'x alone':>9}{'CPU s':>9}{'x alone':>9}{'identical':>12}")
    for name in names:
        same = sum(a == r and abs(c - rc) <= 1e-4 * max(rc, 1e-6)
                   for (a, c), (r, rc) in zip(answers[name], reference, strict=True))
        print(f"{name:<30}{seconds[name]:>10.2f}{n / seconds[name]:>12.2f}{seconds[names[0]] / seconds[name]:>9.2f}"
              f"{cpu[name]:>9.2f}{cpu[names[0]] / cpu[name]:>9.2f}{f'{same}/{n}':>12}")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "backbone-swap-bench-eval")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--mixed-questions", action="store_true")
    parser.add_argument("--prefix-images", type=int, default=8)
    parser.add_argument("--questions-per-image", type=int, default=6)
    parser.add_argument("--prefix-batch", type=int, default=16)
    parser.add_argument("--only-shared-prefix", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if not args.only_shared_prefix:
        batched_rows(args)
    shared_prefix_row(args)


def batched_rows(args: argparse.Namespace) -> None:
    """Batched generation against plain transformers one sample at a time."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from backbone_swap.evaluate.evaluator import Evaluator
    from backbone_swap.evaluate.runner import _load_image
    from backbone_swap.evaluate.suite import Task, read_items

    model_dir, data = build_inputs(args.workdir, args.items, args.seed)
    task = Task(name="colour", type="short_answer", needs="perception", data=data, image_root=data.parent / "images",
                max_new_tokens=args.max_new_tokens)
    items = read_items(task)
    images = [_load_image(task, item) for item in items]
    questions = [WORDINGS[i % len(WORDINGS)] if args.mixed_questions else item["question"]
                 for i, item in enumerate(items)]
    n = len(items)

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters())
    image_tokens = model.config.image_seq_length
    lengths = sorted({len(processor(images=images[0], text=prompt_of(processor, q, task.instruction))["input_ids"][0])
                      for q in set(questions)})
    print(f"torch threads: {torch.get_num_threads()} (cores available: {len(os.sched_getaffinity(0))})")
    print(f"model: {params / 1e6:.1f}M parameters, {image_tokens} image tokens, prompt {'/'.join(map(str, lengths))} "
          f"tokens; {n} items, max_new_tokens {task.max_new_tokens}, greedy; fastest of {args.repeats} passes")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))

    evaluator = Evaluator(model_dir, device="cpu")
    paths = {"loop (one at a time)": lambda: loop_answers(model, processor, images, questions, task.instruction,
                                                          task.max_new_tokens)}
    for batch in args.batch_sizes:
        paths[f"batched, batch {batch}"] = lambda b=batch: batched_answers(evaluator, images, questions, task, b)
    loop_answers(model, processor, images[:1], questions[:1], task.instruction, task.max_new_tokens)  # warm-ups
    for batch in args.batch_sizes:
        evaluator.generate(images[:batch], questions[:batch], task)
    # passes interleaved (loop, batch 4, 8, 16, loop, ...) so that a slow spell of a shared machine hits all paths
    seconds, answers = dict.fromkeys(paths, float("inf")), {}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            t = time.perf_counter()
            answers[name] = fn()
            seconds[name] = min(seconds[name], time.perf_counter() - t)
    reference = answers["loop (one at a time)"]
    loop_rate = n / seconds["loop (one at a time)"]

    print(f"{'path':<24}{'seconds':>10}{'samples/s':>12}{'x loop':>9}{'identical':>12}")
    for name, got in answers.items():
        same = "" if got is reference else f"{sum(a == r for a, r in zip(got, reference, strict=True))}/{n}"
        rate = n / seconds[name]
        print(f"{name:<24}{seconds[name]:>10.2f}{rate:>12.2f}{rate / loop_rate:>9.2f}{same:>12}")
    for name, got in answers.items():
        for item, ref, answer in zip(items, reference, got, strict=True):
            if answer != ref:
                print(f"  {name}: {item['id']} loop {ref!r} != batched {answer!r}")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"distinct answers: {len(set(reference))} of {n} (random weights: the answers are noise, only whether "
          "the two paths agree matters)")


if __name__ == "__main__":
    main()
