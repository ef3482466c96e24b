"""The offline benchmark behind ``backbone-swap demo``: two LLM generations and four kinds of task.

Everything is generated from seeds on the CPU, so no download is needed:

- an "old" and a "newer" tiny LLM, pre-trained here on generated chat text. Both read descriptions of
  shapes and answer what colour or shape they are; the newer one, larger and trained longer as newer
  generations are, also read which fruit has which colour (answering step by step: the colour, then the
  fruit) and descriptions written as JSON. Each read about the gems of two colours, different ones, as the
  corpora of real generations differ;
- images drawn with PIL and the visual instruction data about them, the same for both backbones: colour
  and shape questions only, plus text-only chat of the same kind (as LLaVA-1.5 mixes in ShareGPT);
- a suite of four tasks that mirror the controlled study: perception (name the colour: the image is all
  it needs), reasoning (which fruit has the shape's colour: the image combined with a fact only the newer
  LLM's text teaches), a structured output (the shape's colour and kind as a JSON object: a format only
  the newer LLM's text teaches) and reasoning over facts each read (which gem has the shape's colour:
  each backbone knows half the answers, different halves, so they solve different questions rather than
  more).

In the visual data the image takes the place that a description takes in the pre-training text, so what
a backbone learned from text can carry over to images.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backbone_swap.demo import scenes
from backbone_swap.demo import tiny_models as tm

# No fruit or gem starts with a colour's name ("blueberry" would): the answer names the colour first, and the
# model must not be able to read the colour as the start of the fruit.
FRUITS = {"red": "cherry", "yellow": "banana", "green": "lime", "blue": "plum"}
# Each generation read about two gems the other did not, as the corpora of real generations differ.
GEMS = {"old": {"red": "ruby", "blue": "sapphire"}, "new": {"green": "emerald", "yellow": "topaz"}}

COLOUR_QUESTION = "what colour is the shape?"
SHAPE_QUESTION = "what shape is it?"
BOTH_QUESTION = "what colour and shape is it?"
FRUIT_QUESTION = "which fruit has the colour of the shape?"
GEM_QUESTION = "which gem has the colour of the shape?"
JSON_QUESTION = "describe the shape as json"

# How a picture is put in words in the pre-training text; in the visual data the image stands there.
_DESCRIPTIONS = ("a {colour} {kind}.", "there is a {colour} {kind}.", "the picture shows a {colour} {kind}.")


@dataclass(frozen=True)
class Size:
    """How big the benchmark is: the full demo, or ``--quick`` for the test suite."""

    pretrain_steps_old: int = 500
    pretrain_steps_new: int = 800
    train_images: int = 160
    text_only: int = 80
    eval_items: int = 48
    image_size: int = 64


FULL = Size()
QUICK = Size(pretrain_steps_old=400, pretrain_steps_new=500, train_images=160, text_only=48, eval_items=24)

GENERATIONS = {
    # the newer generation is larger, reads more text for longer, and reads kinds of text the older did not
    "old": dict(hidden_size=64, layers=2, intermediate_size=128, vocab_size=340),
    "new": dict(hidden_size=96, layers=3, intermediate_size=192, vocab_size=360),
}


def _chat(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def basic_question(rng: random.Random, shape: scenes.Shape) -> tuple[str, str]:
    """A question both generations learned and the visual data teaches: the colour, the kind, or both.

    The answers that go on after the colour keep visual training from teaching that an answer about an image
    ends at its colour, which would cut off every answer that names the colour first and then a fact.
    """
    return rng.choice([(COLOUR_QUESTION, shape.colour), (SHAPE_QUESTION, shape.kind),
                       (BOTH_QUESTION, f"{shape.colour} {shape.kind}")])


def fruit_answer(shape: scenes.Shape) -> str:
    """The colour first, then the fruit: the newer generation answers step by step, as it read."""
    return f"{shape.colour}, so {FRUITS[shape.colour]}"


def gem_answer(shape: scenes.Shape) -> str:
    """The colour first, then the gem, as the generation that read about that gem answers."""
    gems = {**GEMS["old"], **GEMS["new"]}
    return f"{shape.colour}, so {gems[shape.colour]}"


def _describe(rng: random.Random, shape: scenes.Shape) -> str:
    return rng.choice(_DESCRIPTIONS).format(colour=shape.colour, kind=shape.kind)


def _lookup_chats(rng: random.Random, shape: scenes.Shape, size: int, what: str, table: dict[str, str],
                  share: float) -> list[dict[str, str]]:
    """A question whose answer is the shape's colour and the ``what`` (fruit, gem) of that colour in ``table``.

    ``share`` of them name two shapes, so that the ``what`` must follow from the colour named in the answer, not
    from the text before: with an image in place of the text, the answer's colour is the only word to read it
    from. The rest are the facts themselves, asked both ways.
    """
    name = table[shape.colour]
    question = f"which {what} has the colour of the shape?"
    kind = rng.random()
    if kind < 0.5:
        return _chat(_describe(rng, shape) + "\n" + question, f"{shape.colour}, so {name}")
    if kind < 0.5 + share:
        other = scenes.random_shape(rng, size)
        while other.kind == shape.kind or other.colour == shape.colour:
            other = scenes.random_shape(rng, size)
        pair = [shape, other] if rng.random() < 0.5 else [other, shape]
        text = f"a {pair[0].colour} {pair[0].kind} and a {pair[1].colour} {pair[1].kind}."
        return _chat(text + "\n" + question.replace("the shape", f"the {shape.kind}"), f"{shape.colour}, so {name}")
    return rng.choice([_chat(f"what colour is a {name}?", shape.colour),
                       _chat(f"which {what} is {shape.colour}?", name)])


def pretraining_conversations(generation: str, n: int, seed: int, size: int = 64) -> list[list[dict[str, str]]]:
    """Text-only chat data of one LLM generation.

    Both read descriptions of shapes with colour and shape questions, and facts about two gems each, different
    ones; the newer one also read fruit facts and JSON. ``shared`` is what both VLMs are trained on besides the
    images (as LLaVA-1.5 mixes in ShareGPT): colour and shape questions only, so that it teaches neither side a
    fact the benchmark asks about.
    """
    rng = random.Random(seed)
    gems = GEMS.get(generation, {})
    out = []
    for _ in range(n):
        shape = scenes.random_shape(rng, size)
        kind = rng.random()
        if generation == "new" and kind < 0.2:
            out.append(_chat(_describe(rng, shape) + "\n" + JSON_QUESTION, as_json(shape)))
        elif generation == "new" and kind < 0.45:
            out.append(_lookup_chats(rng, shape, size, "fruit", FRUITS, 0.35))
        elif gems and 0.45 <= kind < 0.7:
            shape = scenes.random_shape(rng, size, colour=rng.choice(sorted(gems)))
            out.append(_lookup_chats(rng, shape, size, "gem", gems, 0.35))
        else:
            question, answer = basic_question(rng, shape)
            out.append(_chat(_describe(rng, shape) + "\n" + question, answer))
    return out


def pretrain_llm(folder: Path, generation: str, steps: int, seed: int,
                 advance: Callable[[int], None] | None = None) -> Path:
    """Pre-train one tiny LLM generation on its chat text and save it as an ordinary checkpoint.

    ``advance`` is called with 1 after each optimizer step (a progress bar's update).
    """
    import torch
    from transformers import AutoModelForCausalLM

    dims = GENERATIONS[generation]
    conversations = pretraining_conversations(generation, 4000, seed)
    corpus = tuple(c[0]["content"] + " " + c[1]["content"] for c in conversations[:800])
    spec = tm.LLMSpec(
        family="llama", hidden_size=dims["hidden_size"], layers=dims["layers"], heads=4, kv_heads=4,
        intermediate_size=dims["intermediate_size"], seed=seed, initializer_range=0.02,
        tokenizer=tm.TokenizerSpec(vocab_size=dims["vocab_size"], bos=None, eos="<|endoftext|>", unk=None,
                                   pad="<|pad|>", extra_special=("<|im_start|>", "<|im_end|>"),
                                   chat_template=tm.CHATML_TEMPLATE, corpus=corpus),
    )
    tokenizer = tm.train_tokenizer(spec.tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tm.text_config(spec, tokenizer))
    ids = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=False) for c in conversations]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        batch = rng.sample(ids, 32)
        width = max(len(x) for x in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, x in enumerate(batch):
            input_ids[row, : len(x)] = torch.tensor(x)
            labels[row, : len(x)] = torch.tensor(x)
            mask[row, : len(x)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if advance is not None:
            advance(1)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def as_json(shape: scenes.Shape) -> str:
    return json.dumps({"colour": shape.colour, "shape": shape.kind})


def _record(rid: str, image: str | None, user: str, answer: str) -> dict[str, Any]:
    prompt = f"<image>\n{user}" if image else user
    record: dict[str, Any] = {"id": rid, "conversations": [{"from": "human", "value": prompt},
                                                             {"from": "gpt", "value": answer}]}
    if image:
        record["image"] = image
    return record


def build_data(folder: Path, size: Size, seed: int) -> dict[str, Path]:
    """The visual instruction data (one JSONL file) and the four evaluation tasks with their suite."""
    rng = random.Random(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    s = size.image_size

    def picture(name: str) -> tuple[str, scenes.Shape]:
        shape = scenes.random_shape(rng, s)
        scenes.draw([shape], s).save(images / name)
        return name, shape

    train = []
    for i in range(size.train_images):
        name, shape = picture(f"train{i:05d}.png")
        question, answer = basic_question(rng, shape)
        train.append(_record(f"train{i:05d}", name, question, answer))
    for k, chat in enumerate(pretraining_conversations("shared", size.text_only, seed + 1, s)):
        train.append(_record(f"text{k:05d}", None, chat[0]["content"], chat[1]["content"]))
    rng.shuffle(train)
    tasks: dict[str, list[dict[str, Any]]] = {"colour": [], "fruit": [], "json": [], "gem": []}
    colours = list(scenes.COLOURS)
    for i in range(size.eval_items):
        name, shape = picture(f"colour{i:05d}.png")
        tasks["colour"].append({"id": f"colour{i:05d}", "image": name, "question": COLOUR_QUESTION,
                                "answer": shape.colour})
        name, shape = picture(f"fruit{i:05d}.png")
        tasks["fruit"].append({"id": f"fruit{i:05d}", "image": name, "question": FRUIT_QUESTION,
                               "answer": fruit_answer(shape)})
        name, shape = picture(f"json{i:05d}.png")
        tasks["json"].append({"id": f"json{i:05d}", "image": name, "question": JSON_QUESTION,
                              "answer": as_json(shape)})
        # every colour as often: half the gems are the old generation's, half the newer's
        shape = scenes.random_shape(rng, s, colour=colours[i % len(colours)])
        scenes.draw([shape], s).save(images / f"gem{i:05d}.png")
        tasks["gem"].append({"id": f"gem{i:05d}", "image": f"gem{i:05d}.png", "question": GEM_QUESTION,
                             "answer": gem_answer(shape)})
    paths = {"train": scenes.write_jsonl(train, folder / "train.jsonl"), "images": images}
    for task, items in tasks.items():
        scenes.write_jsonl(items, folder / f"{task}.jsonl")
    suite = folder / "suite.yaml"
    suite.write_text(
        "# The demo's suite: perception, reasoning with a fact from text, a structured output, and facts\n"
        "# each generation read and the other did not.\n"
        "name: backbone-swap-demo\nprobes: 16\ntasks:\n"
        "  - {name: colour, type: short_answer, needs: perception, data: colour.jsonl, image_root: images,"
        " max_new_tokens: 4, expect: no clear difference}\n"
        "  - {name: fruit, type: short_answer, needs: reasoning, data: fruit.jsonl, image_root: images,"
        " max_new_tokens: 16, expect: upgrade}\n"
        "  - {name: json, type: structured, format: json, needs: format, data: json.jsonl, image_root: images,"
        " max_new_tokens: 24, expect: only B}\n"
        "  - {name: gem, type: short_answer, needs: reasoning, data: gem.jsonl, image_root: images,"
        " max_new_tokens: 16, expect: complementary}\n",
        encoding="utf-8",
    )
    paths["suite"] = suite
    return paths
