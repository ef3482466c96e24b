"""``backbone-swap eval``: batched greedy answers with a confidence for each, scored, one line per sample.

Lines are appended as batches finish, so a crash loses at most one batch and a restart skips what is
done. Generation is plain greedy decoding with left padding and the KV cache; the confidence of an
answer is exp(mean token log-probability), the length-normalised probability of what was generated
(multiple choice: the probability of the chosen option among the options). The hidden states of a fixed
probe set, on clean and perturbed inputs, are saved for the stability analysis in ``compare``.
"""

from __future__ import annotations

import base64
import binascii
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


class Evaluator:
    """A loaded model and processor answering suite tasks in batches."""

    def __init__(
        self, model_dir: Path, *, batch_size: int = 16, device: str | None = None, dtype: str | None = None
    ) -> None:
        import torch
        import transformers

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

    def generate(self, images, questions: list[str], task: Task) -> list[tuple[str, float]]:
        """Greedy answers and their length-normalised probabilities."""
        import torch

        prompts = [
            self.processor.apply_chat_template(_messages(q, task.instruction, image is not None),
                                               add_generation_prompt=True,
                                               **template_variables(self.processor.chat_template))
            for q, image in zip(questions, images, strict=True)
        ]
        inputs = self._inputs(images, prompts)
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

    def option_logprobs(self, image, question: str, choices: list[str], task: Task) -> list[float]:
        """Summed log-probability of each option's reply tokens after the prompt, in one forward pass."""
        import torch

        pieces = [(self._inputs([image], [prompt]), reply) for prompt, reply in
                  (self._prompt_and_reply(image is not None, question, choice, task) for choice in choices)]
        rows = []
        for base, reply in pieces:
            prompt_ids = base["input_ids"][0][base["attention_mask"][0].bool()].tolist()
            rows.append((prompt_ids, reply))
        width = max(len(p) + len(r) for p, r in rows)
        ids = torch.full((len(choices), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (prompt_ids, reply) in enumerate(rows):
            seq = prompt_ids + reply
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        pixels = torch.cat([base["pixel_values"] for base, _ in pieces]) if image is not None else None
        with torch.no_grad():
            logits = self.model(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), pixel_values=pixels,
                **_image_sizes([base for base, _ in pieces]),
            ).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        totals = []
        for row, (prompt_ids, reply) in enumerate(rows):
            positions = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(reply))
            totals.append(float(sum(logprobs[row, p, t] for p, t in zip(positions, reply, strict=True))))
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


def evaluate_task(
    evaluator: Evaluator, task: Task, output: Path, *, on_items=None, rank: int = 0, world: int = 1,
    items: list[dict[str, Any]] | None = None,
) -> Path:
    """Answer every item of ``task`` (default: all it reads) not yet in ``output/<task>.jsonl``, appending as
    batches finish. With several processes each takes every ``world``-th item into a file of its own, merged
    afterwards.
    """
    items = read_items(task) if items is None else items
    kind = TYPES[task.type]
    path = output / f"{task.name}.jsonl" if world == 1 else _part(output, task, rank)
    # only the merged file counts as done: per-process files are merged before any process starts, so
    # every process sees the same list and the shares do not overlap or leave gaps
    done = _done_ids(output / f"{task.name}.jsonl", repair=world == 1)
    todo = [item for item in items if str(item["id"]) not in done]
    # similar lengths share a batch; questions without an image (a batch has images for all or none) come last
    todo.sort(key=lambda item: (without_image(item), len(str(item["question"])), str(item["id"])))
    todo = todo[rank::world]
    batches: list[list[dict[str, Any]]] = []
    for item in todo:  # a new batch when the last is full or holds the other kind of question
        last = batches[-1] if batches else None
        if last is None or len(last) == evaluator.batch_size or without_image(last[0]) != without_image(item):
            batches.append([])
        batches[-1].append(item)
    with open(path, "a", encoding="utf-8") as f:
        for batch in batches:
            images = [_load_image(task, item) for item in batch]
            lines = []
            if kind.answered_by == "options":
                lines = [kind.score_options(task, item, evaluator.option_logprobs(image, item["question"],
                                                                                 kind.options(item), task))
                         for item, image in zip(batch, images, strict=True)]
            else:
                answers = evaluator.generate(images, [item["question"] for item in batch], task)
                lines = [kind.score(task, item, text, conf) for item, (text, conf) in zip(batch, answers, strict=True)]
            for line in lines:
                f.write(json.dumps(line) + "\n")
            f.flush()
            if on_items:
                on_items(len(batch))
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
