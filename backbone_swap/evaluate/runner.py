"""``backbone-swap eval``: batched greedy answers with a confidence for each, scored, one line per sample.

Lines are appended as batches finish, so a crash loses at most one batch and a restart skips what is
done; a finished file is put in the items' order. The questions about one image are answered together, the
conversation up to and including the image run once for all of them (its KV cache copied for each), a
multiple-choice prompt once for all its options. Generation is plain greedy decoding with left padding and
the KV cache; the confidence of an answer is exp(mean token log-probability), the length-normalised
probability of what was generated (multiple choice: the probability of the chosen option among the options).
The hidden states of a fixed probe set, on clean and perturbed inputs, are saved for the stability analysis
in ``compare``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backbone_swap.checkpoints.templates import end_of_turn, reply_prefix, template_variables
from backbone_swap.choices import DTYPES, check
from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.suite import Suite, Task, load_items, read_items, without_image
from backbone_swap.evaluate.tasks import TYPES, reference_text
from backbone_swap.runs import (
    EVALUATION,
    RunFolder,
    resolved,
    step_record,
    write_bytes,
    write_lines,
    write_safetensors,
)


@dataclass
class EvalResult:
    output: Path
    manifest: dict[str, Any]


def _messages(question: str, instruction: str, image: bool = True) -> list[dict[str, Any]]:
    """The user turn: the image first, then the question; a question without an image is plain text, as the
    text-only samples of training are (``training.data.to_messages``)."""
    text = f"{question} {instruction}".strip()
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}] if image else text}]


def paraphrase(question: str) -> str:
    """A fixed rewording of a question, to see whether the model's representation moves with the wording."""
    q = question.strip()
    return f"Please look at the picture and tell me: {q[0].lower() + q[1:] if q else q}"


def add_noise(image, seed: int, strength: float = 0.08):
    """The image with seeded Gaussian pixel noise (a perturbation the answer should survive)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    array = np.asarray(image, dtype=np.float32)
    noisy = np.clip(array + rng.normal(0, 255 * strength, array.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy)


def run_dtype(model_dir: Path, dtype: str | None, device: str) -> str:
    """The dtype a model is evaluated in: the one asked for, float32 on CPU, else the checkpoint's own.

    Named before loading, so an evaluation folder can refuse to mix answers computed in two dtypes."""
    if dtype is not None:
        return check(dtype, DTYPES, "--dtype", "Leave it out to use each checkpoint's own dtype (float32 on CPU)")
    if str(device).startswith("cpu"):
        return "float32"
    config = json.loads((Path(model_dir) / "config.json").read_text())
    own = config.get("dtype") or config.get("torch_dtype") or "float32"
    return own if own in DTYPES else "float32"


@dataclass(eq=False)  # one prefix is the same prefix: never compare images and caches field by field
class _Prefix:
    """The beginning of a prompt run through the model once, alone (batch of 1): the conversation up to and
    including its image, or a whole prompt whose options are scored after it. ``cache`` is never grown: a forward
    pass or ``generate`` extends the cache it is given in place, so each use works on a copy."""

    image: Any
    head: tuple[int, ...] | None  # the tokens before the image (None: not kept for another call)
    ids: list[int]
    cache: Any
    next_logprobs: Any  # the log-probabilities its last position gives the token after it


class Evaluator:
    """A loaded model and processor answering suite tasks in batches."""

    def __init__(
        self, model_dir: Path, *, batch_size: int = 16, device: str | None = None, dtype: str | None = None,
        share_prefixes: bool = True,
    ) -> None:
        """``share_prefixes=False`` runs every prompt whole, as if each question were the only one about its
        image: the reference the shared computation is checked and timed against."""
        import torch
        import transformers
        from transformers.cache_utils import DynamicLayer

        from backbone_swap.checkpoints.folder import load_processor, open_checkpoint
        from backbone_swap.checkpoints.formats import format_of

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = run_dtype(model_dir, dtype, self.device)
        # LLaVA or LLaVA-NeXT: the class of its format's registry entry
        model_class = getattr(transformers, format_of(open_checkpoint(model_dir).config, model_dir).model_class)
        self.model = model_class.from_pretrained(model_dir, dtype=getattr(torch, self.dtype)).to(self.device)
        self.model.eval()
        self.processor = load_processor(model_dir)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.batch_size = batch_size
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.end_of_turn = end_of_turn(self.tokenizer)
        if self.end_of_turn is not None:
            self.stop_ids.add(self.tokenizer.convert_tokens_to_ids(self.end_of_turn))
        self.reply_prefix = reply_prefix(self.tokenizer)
        # a model trained here records how its images were shaped; evaluate it the same way
        recorded = Path(model_dir) / "preprocessing.json"
        self.image_aspect = json.loads(recorded.read_text()).get("image_aspect") if recorded.is_file() else None
        # cached prefixes of several prompts are stacked into one batch as plain key/value tensors: exact for
        # the usual full-attention layers, and for sliding-window layers while a prefix fits in the window
        layers = transformers.DynamicCache(config=self.model.config).layers
        self._stackable = all(isinstance(layer, DynamicLayer) for layer in layers)
        windows = [layer.sliding_window for layer in layers if getattr(layer, "is_sliding", False)]
        self._window: int | None = min(windows) if windows else None
        self._last_prefix: _Prefix | None = None
        self.share_prefixes = share_prefixes

    def _inputs(self, images, prompts):
        """Model inputs for a batch of prompts with one image each, or all without one (images all None: the
        language model alone answers, as on the text-only samples it was trained on)."""
        if all(image is None for image in images):
            images = None
        elif any(image is None for image in images):
            raise ValueError("a batch mixes questions with and without an image")  # evaluate_task keeps them apart
        elif self.image_aspect == "pad":
            from backbone_swap.training.features import pad_to_square

            images = [pad_to_square(image, self.processor.image_processor) for image in images]
        # the rendered template already holds the BOS it wants, as in training: add no second one
        return self.processor(
            images=images, text=prompts, padding=True, add_special_tokens=False, return_tensors="pt"
        ).to(self.device)

    def _greedy(self, max_new_tokens: int):
        """Plain greedy decoding: no penalties inherited from the LLM's generation config, which would
        change both the answers and their probabilities."""
        from transformers import GenerationConfig

        return GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(self.stop_ids),
            pad_token_id=self.tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )

    def _split(self, image, prompt: str) -> tuple[tuple[int, ...], list[int]] | None:
        """A prompt's tokens before its image and after it, or None where it does not hold the image once with
        something after it. Tokenised without the image's expansion, as the processor tokenises the text
        around it."""
        if image is None:
            return None
        token = self.model.config.image_token_id
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if ids.count(token) != 1 or ids[-1] == token:
            return None
        cut = ids.index(token)
        return tuple(ids[:cut]), ids[cut + 1 :]

    def _run_prefix(self, image, head: tuple[int, ...] | None, inputs, end: int | None = None) -> _Prefix:
        """The first ``end`` tokens of ``inputs`` (a batch of 1; all of them by default) through the model."""
        import torch
        from transformers import DynamicCache

        ids = inputs["input_ids"][:, :end]
        with torch.no_grad():
            out = self.model(input_ids=ids, pixel_values=inputs.get("pixel_values"), **_image_sizes([inputs]),
                             cache=DynamicCache(config=self.model.config), logits_to_keep=1)
        return _Prefix(image, head, ids[0].tolist(), out.cache, torch.log_softmax(out.logits[0, -1].float(), -1))

    def _image_prefix(self, image, prompt: str, head: tuple[int, ...], rest: list[int]) -> _Prefix | None:
        """The conversation up to and including ``image``, run once; the one the previous call left when it is the
        same image after the same text (the questions about an image may be split over two batches, and the
        rotations of a multiple-choice question come one after another). None where the prompt's expanded
        tokens are not its prefix and ``rest``, or where the prefix would not fit a sliding window."""
        last = self._last_prefix
        if last is not None and last.image is image and last.head == head:
            return last
        inputs = self._inputs([image], [prompt])
        ids = inputs["input_ids"][0].tolist()
        end = len(ids) - ids[::-1].index(self.model.config.image_token_id)
        if ids[end:] != rest or (self._window is not None and end >= self._window - 1):
            return None
        self._last_prefix = self._run_prefix(image, head, inputs, end)
        return self._last_prefix

    def _shared_inputs(self, images, prompts: list[str], new_tokens: int) -> dict[str, Any] | None:
        """``generate``'s inputs for prompts that start from their image's cached prefix: each row is
        ``[pad][prefix][pad][rest of the prompt]``, the cache holds ``[pad][prefix]`` and the attention mask covers
        the prefix and the rest, so every row sees, at the same positions, what its prompt alone would show.
        None where the prompts cannot be split at their image (no image, say), where no image is asked about twice
        (nothing to share: one question per image runs as it always has), or where the stacked cache would not be
        exact (a sequence that outgrows a sliding window): those batches run whole, with left padding."""
        import torch
        from transformers import DynamicCache

        if not self._stackable:
            return None
        splits = [self._split(image, prompt) for image, prompt in zip(images, prompts, strict=True)]
        if any(split is None for split in splits):
            return None
        keys = [(id(image), split[0]) for image, split in zip(images, splits, strict=True)]
        last = self._last_prefix
        if len(set(keys)) == len(keys) and not (last is not None and (id(last.image), last.head) in keys):
            return None  # no image asked about twice: a prefix per question would only add a forward pass each
        prefixes: dict[tuple[int, tuple[int, ...]], _Prefix] = {}
        rows: list[tuple[_Prefix, list[int]]] = []
        for image, prompt, (head, rest), key in zip(images, prompts, splits, keys, strict=True):
            # the caller passes one object for the questions about one image
            if key not in prefixes:
                prefix = self._image_prefix(image, prompt, head, rest)
                if prefix is None:
                    return None
                prefixes[key] = prefix
            rows.append((prefixes[key], rest))
        self._last_prefix = rows[-1][0]  # the next batch may go on with the questions about the last image
        width = max(len(prefix.ids) for prefix in prefixes.values())
        tail = max(len(rest) for _, rest in rows)
        if self._window is not None and width + tail + new_tokens >= self._window - 1:
            return None
        ids = torch.full((len(rows), width + tail), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (prefix, rest) in enumerate(rows):
            ids[row, width - len(prefix.ids) : width] = torch.tensor(prefix.ids)
            ids[row, ids.shape[1] - len(rest) :] = torch.tensor(rest)
            mask[row, width - len(prefix.ids) : width] = 1
            mask[row, ids.shape[1] - len(rest) :] = 1
        def stacked(tensors: list[Any]):  # one row per question: its prefix's keys or values, left-padded
            out = tensors[0].new_zeros((len(rows), tensors[0].shape[1], width, tensors[0].shape[3]))
            for row, t in enumerate(tensors):
                out[row, :, width - t.shape[-2] :] = t[0]
            return out

        layers = [(stacked([prefix.cache.layers[n].keys for prefix, _ in rows]),
                   stacked([prefix.cache.layers[n].values for prefix, _ in rows]))
                  for n in range(len(rows[0][0].cache.layers))]
        cache = DynamicCache(ddp_cache_data=layers, config=self.model.config)
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device), "cache": cache}

    def generate(self, images, questions: list[str], task: Task) -> list[tuple[str, float]]:
        """Greedy answers and their length-normalised probabilities.

        Questions about the same image (the same object: ``evaluate_task`` loads an image once for all its
        questions) share the conversation up to and including the image: it runs through the model once, and
        every question continues from a copy of its cache, with the answers and confidences of asking it alone."""
        import torch

        prompts = [
            self.processor.apply_chat_template(_messages(q, task.instruction, image is not None),
                                               add_generation_prompt=True,
                                               **template_variables(self.processor.chat_template))
            for q, image in zip(questions, images, strict=True)
        ]
        shared = self._shared_inputs(images, prompts, task.max_new_tokens) if self.share_prefixes else None
        inputs = shared or self._inputs(images, prompts)
        with torch.no_grad():
            out = self.model.generate(**inputs, generation_config=self._greedy(task.max_new_tokens))
            scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        start = inputs["input_ids"].shape[1]
        answers = []
        for row in range(len(prompts)):
            tokens = out.sequences[row, start:].tolist()
            logprobs = scores[row].tolist()
            keep = len(tokens)
            for i, token in enumerate(tokens):
                if token in self.stop_ids:
                    keep = i + 1  # the end of the answer is part of what the model chose
                    break
            text = answer_text(self.tokenizer.decode(tokens[:keep], skip_special_tokens=True), self.reply_prefix)
            chosen = logprobs[:keep]
            if not all(math.isfinite(lp) for lp in chosen):  # greedy picks the likeliest: never -inf when sound
                raise BackboneSwapError(
                    f"the model's scores for its answer to {questions[row]!r} are NaN or infinite, so the answer "
                    "and its confidence mean nothing",
                    "The model's logits overflow or are broken; float16 overflow is a common cause (try --dtype "
                    "bfloat16 or float32)",
                )
            confidence = math.exp(sum(chosen) / len(chosen)) if chosen else 0.0
            answers.append((text, min(max(confidence, 0.0), 1.0)))
        return answers

    def _prompt_and_reply(self, with_image: bool, question: str, reply: str, task: Task) -> tuple[str, list[int]]:
        """The prompt's text and the reply's token ids exactly as training tokenises a reply: through the chat
        template, with the end-of-turn token, so no option is scored on tokens (or a missing leading space)
        the model never learned."""
        from backbone_swap.training.data import _Bad, supervised_spans

        messages = _messages(question, task.instruction, with_image) + [{"role": "assistant", "content": reply}]
        try:
            text, spans = supervised_spans(self.tokenizer, messages, self.end_of_turn)
        except _Bad as e:
            raise BackboneSwapError(f"task {task.name}: {e}", "Use a chat template that renders replies") from None
        start, end = spans[-1]
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        reply_ids = [
            t for t, (b, _) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True) if start <= b < end
        ]
        return text[:start], reply_ids or [self.tokenizer.eos_token_id]

    def _prompt_state(self, image, prompt: str):
        """The cache a prompt leaves and the log-probabilities of the token after it, for scoring replies: the
        image's prefix reused where the prompt splits at its image, the rest of the prompt run after it."""
        import copy

        import torch

        split = self._split(image, prompt) if self.share_prefixes else None
        prefix = self._image_prefix(image, prompt, *split) if split is not None else None
        if prefix is None:
            whole = self._run_prefix(image, None, self._inputs([image], [prompt]))
            return whole.cache, whole.next_logprobs
        cache = copy.deepcopy(prefix.cache)  # the prefix stays as it is for the next prompt about this image
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([split[1]], device=self.device), cache=cache, logits_to_keep=1)
        return out.cache, torch.log_softmax(out.logits[0, -1].float(), -1)

    def option_logprobs(self, image, question: str, choices: list[str], task: Task) -> list[float]:
        """Summed log-probability of each option's reply tokens after the prompt. The prompt runs once (its
        image's prefix once for consecutive questions about the same image object), then the options as one
        batch continuing from a copy of its cache."""
        import torch

        pieces = [self._prompt_and_reply(image is not None, question, choice, task) for choice in choices]
        totals = [0.0] * len(choices)
        by_prompt: dict[str, list[int]] = {}
        for number, (prompt, _) in enumerate(pieces):
            by_prompt.setdefault(prompt, []).append(number)
        for prompt, numbers in by_prompt.items():
            cache, first = self._prompt_state(image, prompt)
            replies = [pieces[number][1] for number in numbers]
            scores = [float(first[reply[0]]) for reply in replies]
            longest = max(len(reply) for reply in replies)
            if longest > 1:  # the options' tokens but the last, which predicts nothing that is scored
                ids = torch.full((len(replies), longest - 1), self.tokenizer.pad_token_id or 0, dtype=torch.long)
                mask = torch.zeros((len(replies), cache.get_seq_length() + longest - 1), dtype=torch.long)
                mask[:, : cache.get_seq_length()] = 1
                for row, reply in enumerate(replies):
                    ids[row, : len(reply) - 1] = torch.tensor(reply[:-1])
                    mask[row, cache.get_seq_length() : cache.get_seq_length() + len(reply) - 1] = 1
                cache.batch_repeat_interleave(len(replies))
                with torch.no_grad():
                    logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                        cache=cache).logits
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                for row, reply in enumerate(replies):
                    scores[row] += float(sum(logprobs[row, i, t] for i, t in enumerate(reply[1:])))
            for number, score in zip(numbers, scores, strict=True):
                totals[number] = score
        return totals

    def answer_states(self, images, questions: list[str], answers: list[str], task: Task):
        """Last-layer hidden states averaged over each reference answer's reply tokens (teacher-forced), one row
        per question, in batches. Only the language model's last hidden states are asked for: vocabulary logits
        and every layer's states were computed for each item, one at a time, and all but one layer thrown away.
        Rows are padded on the right, so every prompt keeps the positions it has alone."""
        import torch

        states = []
        start = 0
        while start < len(images):  # batches of questions all with an image or all without
            end = start + 1
            while (end < len(images) and end - start < self.batch_size
                   and (images[end] is None) == (images[start] is None)):
                end += 1
            pieces = [self._prompt_and_reply(image is not None, question, answer, task)
                      for image, question, answer in zip(images[start:end], questions[start:end], answers[start:end],
                                                         strict=True)]
            inputs = self._inputs(images[start:end], [prompt for prompt, _ in pieces])
            rows = [ids[keep.bool()].tolist() for ids, keep in zip(inputs["input_ids"], inputs["attention_mask"],
                                                                     strict=True)]
            width = max(len(prompt) + len(reply) for prompt, (_, reply) in zip(rows, pieces, strict=True))
            ids = torch.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, (prompt, (_, reply)) in enumerate(zip(rows, pieces, strict=True)):
                ids[row, : len(prompt) + len(reply)] = torch.tensor(prompt + reply)
                mask[row, : len(prompt) + len(reply)] = 1
            with torch.no_grad():
                hidden = self.model.model(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                    pixel_values=inputs.get("pixel_values"), **_image_sizes([inputs]), use_cache=False,
                ).last_hidden_state
            for row, (prompt, (_, reply)) in enumerate(zip(rows, pieces, strict=True)):
                states.append(hidden[row, len(prompt) : len(prompt) + len(reply)].float().mean(dim=0).cpu())
            start = end
        return torch.stack(states)


def answer_text(decoded: str, prefix: str) -> str:
    """The answer in a decoded reply: without the block the template writes before every reply (Qwen3's
    empty think block), which the model learned to generate but which is no part of what it answers."""
    text = decoded.strip()
    if prefix.strip() and text.startswith(prefix.strip()):
        text = text[len(prefix.strip()):].strip()
    return text


def _image_sizes(inputs: list[Any]) -> dict[str, Any]:
    """LLaVA-NeXT's processor also returns each image's size (its tiling depends on it); LLaVA's does not."""
    import torch

    if "image_sizes" not in inputs[0]:
        return {}
    return {"image_sizes": torch.cat([i["image_sizes"] for i in inputs])}


def _load_image(task: Task, item: dict[str, Any]):
    """The item's image: its file under the task's image root, or decoded from ``image_data`` (base64 in the
    benchmark's own file, as MMBench ships its images), which has no file."""
    from backbone_swap.training.data import _Bad, open_image, resolve_image

    if without_image(item):  # None: a question asked without an image (ScienceQA's text-only questions)
        return None
    try:
        if "image_data" in item:
            try:
                raw = base64.b64decode(item["image_data"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise _Bad("its base64 image does not decode") from None
            return open_image(io.BytesIO(raw), name=f"{Path(str(task.data)).name} (base64)")
        return open_image(resolve_image(item.get("image"), task.image_root))
    except _Bad as e:
        raise BackboneSwapError(f"task {task.name}, item {item['id']!r}: {e}", "Fix the task's data") from None


def read_answers(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The complete lines of a per-item file; a line cut by a crash (and what follows) is dropped."""
    if not path.is_file():
        return []
    raw = path.read_text(encoding="utf-8").splitlines()
    lines = []
    for text in raw:
        try:
            line = json.loads(text)
            line["id"] = str(line["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # everything from here is redone
        lines.append(line)
    if repair and len(lines) != len(raw):
        write_bytes(path, "".join(text + "\n" for text in raw[: len(lines)]).encode("utf-8"))
    return lines


def _done_ids(path: Path, *, repair: bool = True) -> set[str]:
    return {line["id"] for line in read_answers(path, repair=repair)}


def _part(output: Path, task: Task, rank: int) -> Path:
    return output / f".{task.name}.rank{rank}.jsonl"


def merge_parts(output: Path, task: Task) -> Path:
    """Fold the per-process files of a multi-process run into ``<task>.jsonl``: one line per item."""
    path = output / f"{task.name}.jsonl"
    parts = sorted(output.glob(f".{task.name}.rank*.jsonl"))
    if not parts:
        return path
    seen, merged = set(), []
    for source in [path, *parts]:
        for line in read_answers(source, repair=False):
            if line["id"] not in seen:
                seen.add(line["id"])
                merged.append(line)
    write_lines(path, merged)
    for part in parts:
        part.unlink()
    return path


def _image_key(item: dict[str, Any]) -> str | None:
    """Which image an item asks about (None: none), so that the questions about one image are answered together."""
    if without_image(item):
        return None
    if "image_data" in item:
        return "data:" + hashlib.sha256(str(item["image_data"]).encode()).hexdigest()
    return f"file:{item.get('image')}"


def _order(item: dict[str, Any]) -> tuple[bool, int, str]:
    """Where an item's line goes in ``<task>.jsonl``: questions with an image first, shorter questions first
    (the order batches were formed in before questions were grouped by image; the files keep it)."""
    return without_image(item), len(str(item["question"])), str(item["id"])


def put_in_order(path: Path, items: list[dict[str, Any]]) -> None:
    """Rewrite a finished per-item file in the items' order (``_order``) where it is not: answers are computed
    image by image, and a resumed or multi-process run appends in yet another order, but the file of a task
    reads the same however it was computed. Lines of ids not among ``items`` keep their order, last."""
    lines = read_answers(path, repair=False)
    rank = {str(item["id"]): _order(item) for item in items}
    ordered = sorted(lines, key=lambda line: (line["id"] not in rank, rank.get(line["id"], (False, 0, ""))))
    if [line["id"] for line in ordered] != [line["id"] for line in lines]:
        write_lines(path, ordered)


def evaluate_task(
    evaluator: Evaluator, task: Task, output: Path, *, on_items=None, rank: int = 0, world: int = 1,
    items: list[dict[str, Any]] | None = None,
) -> Path:
    """Answer every item of ``task`` (default: all it reads) not yet in ``output/<task>.jsonl``, appending as
    batches finish. With several processes each takes every ``world``-th image's questions into a file of its
    own, merged afterwards.

    The questions about one image follow each other and get the same image object, so the model runs the image
    and the conversation before it once for all of them (``Evaluator.generate``, ``Evaluator.option_logprobs``).
    """
    items = read_items(task) if items is None else items
    kind = TYPES[task.type]
    path = output / f"{task.name}.jsonl" if world == 1 else _part(output, task, rank)
    # only the merged file counts as done: per-process files are merged before any process starts, so
    # every process sees the same list and the shares do not overlap or leave gaps
    done = _done_ids(output / f"{task.name}.jsonl", repair=world == 1)
    todo = [item for item in items if str(item["id"]) not in done]
    # similar lengths share a batch; questions without an image (a batch has images for all or none) come last;
    # the questions about one image are gathered where its first question falls (one question per image: as sorted)
    todo.sort(key=_order)
    groups: dict[Any, list[dict[str, Any]]] = {}
    for item in todo:
        groups.setdefault(_image_key(item) or ("item", str(item["id"])), []).append(item)
    todo = [item for group in list(groups.values())[rank::world] for item in group]
    batches: list[list[dict[str, Any]]] = []
    for item in todo:  # a new batch when the last is full or holds the other kind of question
        last = batches[-1] if batches else None
        if last is None or len(last) == evaluator.batch_size or without_image(last[0]) != without_image(item):
            batches.append([])
        batches[-1].append(item)
    loaded: dict[str | None, Any] = {}
    try:
        with open(path, "a", encoding="utf-8") as f:
            for batch in batches:
                keys = [_image_key(item) for item in batch]
                loaded = {key: image for key, image in loaded.items() if key in keys}  # an image the last batch began
                for item, key in zip(batch, keys, strict=True):
                    if key is None or key not in loaded:
                        loaded[key] = _load_image(task, item)
                images = [loaded[key] for key in keys]
                lines = []
                if kind.answered_by == "options":
                    lines = [kind.score_options(task, item, evaluator.option_logprobs(image, item["question"],
                                                                                     kind.options(item), task))
                             for item, image in zip(batch, images, strict=True)]
                else:
                    answers = evaluator.generate(images, [item["question"] for item in batch], task)
                    lines = [kind.score(task, item, text, conf)
                             for item, (text, conf) in zip(batch, answers, strict=True)]
                for line in lines:
                    f.write(json.dumps(line) + "\n")
                f.flush()
                if on_items:
                    on_items(len(batch))
    finally:
        evaluator._last_prefix = None  # no later task asks about these image objects: free its cache
    if world == 1:
        put_in_order(path, items)
    return path


def probe_states(evaluator: Evaluator, task: Task, count: int, seed: int,
                 items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Hidden states of the first ``count`` items (by id; those with an image first) on clean, noisy-image and
    reworded inputs. A question asked without an image has no image to perturb: its noisy input is the clean one."""
    items = sorted(read_items(task) if items is None else items,
                   key=lambda it: (without_image(it), str(it["id"])))[:count]
    images = [_load_image(task, item) for item in items]
    noisy = [image if image is None else add_noise(image, seed + k) for k, image in enumerate(images)]
    questions = [item["question"] for item in items]
    answers = [reference_text(item) for item in items]
    reworded = [paraphrase(question) for question in questions]
    states = evaluator.answer_states(images + noisy + images, questions + questions + reworded, answers * 3, task)
    n = len(items)
    return {"clean": states[:n], "noise": states[n : 2 * n], "paraphrase": states[2 * n :]}


def evaluate(
    model_dir: str | Path,
    suite: Suite,
    output: str | Path,
    *,
    batch_size: int = 16,
    device: str | None = None,
    probes: bool = True,
    seed: int = 0,
    dtype: str | None = None,
    show_progress: bool = True,
    on_bad_sample: str = "fail",
) -> EvalResult:
    """Evaluate ``model_dir`` on every task of ``suite`` into ``output`` (resumable), in ``dtype`` (default: the
    checkpoint's own on a GPU, float32 on CPU). Items that cannot be used stop it, or with ``on_bad_sample="skip"``
    are left out and counted in the manifest."""
    from backbone_swap.progress import Ticker, say

    started = time.time()
    model_dir, output = Path(model_dir).expanduser(), Path(output).expanduser()
    from backbone_swap.checkpoints.anatomy import read_anatomy
    from backbone_swap.checkpoints.folder import open_checkpoint

    read_anatomy(open_checkpoint(model_dir)).require("eval")
    loaded = {task.name: load_items(task, on_bad_sample) for task in suite.tasks}  # checked before any work
    items = {name: found.items for name, found in loaded.items()}
    import torch

    dtype = run_dtype(model_dir, dtype, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    identity = {"model": str(model_dir.resolve()), "suite": suite.source or suite.name, "dtype": dtype}
    folder = RunFolder(output, EVALUATION)
    folder.previous()  # a folder of other files is refused before anything is loaded
    from backbone_swap.training.schemes import launch_state

    # under torchrun / accelerate launch: this process's rank and device (gloo when there is no GPU)
    state = launch_state()
    with folder.hold(state):
        recorded = folder.previous()
        if recorded is not None:
            same_model = all(recorded.get(k) == identity[k] for k in ("model", "suite"))
            if recorded.get("dtype", dtype) != dtype and same_model:
                raise BackboneSwapError(
                    f"{output} holds answers computed in {recorded['dtype']}, and this run would compute in {dtype}",
                    f"Pass --dtype {recorded['dtype']} to resume, or choose another --output",
                )
            folder.refuse_changed(recorded, identity, "Choose another --output, or delete that folder")
        elif state.is_main_process:
            folder.write_json("evaluated.json", identity)
        finished = all(
            {str(i["id"]) for i in items[t.name]} <= _done_ids(output / f"{t.name}.jsonl", repair=False)
            and (not probes or not suite.probes or (output / "probes" / f"{t.name}.safetensors").is_file())
            for t in suite.tasks
        )
        if finished and (output / "manifest.json").is_file():
            return EvalResult(output, json.loads((output / "manifest.json").read_text()))
        rank, world = state.process_index, state.num_processes
        evaluator = Evaluator(model_dir, batch_size=batch_size, device=device or str(state.device), dtype=dtype)
        total = sum(len(v) for v in items.values()) // world
        show_progress = show_progress and state.is_main_process
        reused = sum(len({str(i["id"]) for i in items[t.name]} & _done_ids(output / f"{t.name}.jsonl", repair=False))
                     for t in suite.tasks)
        if show_progress and reused:
            say(f"eval {model_dir.name}: {reused} of {total * world} answers from an earlier start reused")
        with Ticker(f"eval {model_dir.name}", total, show=show_progress) as ticker:
            ticker.resume_at(reused // world)

            def advance(n: int) -> None:
                ticker.update(advance=n)

            if state.is_main_process:  # answers a stopped multi-process run left in per-process files
                for task in suite.tasks:
                    merge_parts(output, task)
            state.wait_for_everyone()
            for task in suite.tasks:
                evaluate_task(evaluator, task, output, on_items=advance, rank=rank, world=world,
                              items=items[task.name])
        state.wait_for_everyone()
        if not state.is_main_process:
            return EvalResult(output, {})
        for task in suite.tasks:
            merge_parts(output, task)
            put_in_order(output / f"{task.name}.jsonl", items[task.name])
        if probes and suite.probes:
            (output / "probes").mkdir(exist_ok=True)
            for task in suite.tasks:
                target = output / "probes" / f"{task.name}.safetensors"
                if not target.is_file():
                    states = probe_states(evaluator, task, suite.probes, seed, items[task.name])
                    write_safetensors(target, {k: v.contiguous() for k, v in states.items()})
        manifest = step_record(
            "eval",
            model=resolved(model_dir),
            suite=suite.name,
            suite_source=suite.source,
            tasks={t.name: len(items[t.name]) for t in suite.tasks},
            skipped={t.name: [bad.describe() for bad in loaded[t.name].bad][:100] for t in suite.tasks
                     if loaded[t.name].bad},
            processes=world,
            batch_size=batch_size,
            dtype=dtype,
            device=evaluator.device,
            seconds=round(time.time() - started, 3),
        )
        folder.write_json("manifest.json", manifest)
        return EvalResult(output, manifest)
