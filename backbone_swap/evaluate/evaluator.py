"""A loaded VLM answering questions in batches: greedy answers with a confidence, option scores, hidden states.

The questions about one image are answered together: the conversation up to and including the image runs once
for all of them (its KV cache copied for each), a multiple-choice prompt once for all its options, with the
same predictions and confidences as running each prompt whole. Generation is plain greedy decoding with left
padding and the KV cache; the confidence of an answer is exp(mean token log-probability), the length-normalised
probability of what was generated (multiple choice: the probability of the chosen option among the options).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backbone_swap.checkpoints.templates import end_of_turn, reply_prefix, template_variables
from backbone_swap.choices import DTYPES, check
from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.suite import Task


def _messages(question: str, instruction: str, image: bool = True) -> list[dict[str, Any]]:
    """The user turn: the image first, then the question; a question without an image is plain text, as the
    text-only samples of training are (``training.data.to_messages``)."""
    text = f"{question} {instruction}".strip()
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}] if image else text}]


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

    def forget_prefix(self) -> None:
        """Drop the image prefix kept for the next call (its KV cache): the next questions are about other images,
        and a kept prefix is only found again for the same image object."""
        self._last_prefix = None

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
