"""LLaVA-format conversations turned into token ids and labels with the *target* model's own chat template.

The assistant mask is derived from the template itself (what it renders before and after each reply),
not from hand-written separators at fixed offsets: that is the mistake behind most "tokenization
mismatch" runs that train on nothing. Every sample is audited before training: it must supervise at least
one token, its supervised tokens must decode back to its replies, and the end-of-turn token must be among
them so the model learns to stop.
"""

from __future__ import annotations

import json
import os
import warnings
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from backbone_swap.checkpoints.templates import TEMPLATE_VARIABLES
from backbone_swap.choices import ON_BAD_SAMPLE, check
from backbone_swap.errors import BackboneSwapError

IGNORE = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IMAGE_PLACEHOLDER = "<image>"
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # beyond this PIL treats the file as a decompression bomb
NO_IMAGE_ROOT = "the record has an image but no --image-root was given"


@dataclass
class Sample:
    """One training sample. Token ids and labels are 4-byte arrays, not lists: a list of ints costs 8 bytes a
    token plus 28 for each distinct int, and LLaVA's 665K samples as lists held about 10 GB in every process."""

    id: str
    line: int
    image: Path | None
    input_ids: array
    labels: array

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def supervised(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass
class BadSample:
    id: str
    line: int
    reason: str
    index: int | None = None  # its position in a JSON list (from 1); None in a JSONL file, where the line says it

    def describe(self) -> str:
        where = f"record {self.index}, line {self.line}" if self.index is not None else f"line {self.line}"
        return f"sample {self.id!r} ({where}): {self.reason}"


@dataclass(frozen=True)
class Where:
    """Where a record is in its data file: the line it starts on, and its position in a JSON list."""

    line: int
    index: int | None = None


@dataclass
class Dataset:
    samples: list[Sample]
    bad: list[BadSample] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        supervised = [s.supervised for s in self.samples]
        return {
            "samples": len(self.samples),
            "skipped": len(self.bad),
            "skipped_ids": [b.id for b in self.bad][:100],
            "with_image": sum(1 for s in self.samples if s.image is not None),
            "supervised_tokens_mean": round(sum(supervised) / max(len(supervised), 1), 2),
            "supervised_tokens_min": min(supervised, default=0),
            "tokens": sum(s.length for s in self.samples),
        }


class _Bad(Exception):
    """A reason why one record cannot be trained on; collected, not raised to the user directly."""


def read_records(path: Path) -> Iterator[tuple[Where, Any]]:
    """Yield (where, record) from a JSON list or a JSONL file; a malformed line yields an exception."""
    path = Path(path)
    if path.is_dir():
        raise BackboneSwapError(f"data file {path} is a folder", "Pass a LLaVA-format .json or .jsonl file")
    if not path.is_file():
        raise BackboneSwapError(f"data file {path} does not exist", "Pass a LLaVA-format .json or .jsonl file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise BackboneSwapError(f"{path} is not UTF-8 text (line {line}, byte {e.start})",
                                "Save the data file as UTF-8 JSON or JSONL") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            yield from _json_list(text)
        except json.JSONDecodeError as e:
            raise BackboneSwapError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})",
                                    "Fix the file") from None
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield Where(number), json.loads(line)
        except json.JSONDecodeError as e:
            yield Where(number), _Bad(f"malformed JSON ({e.msg})")


def _json_list(text: str) -> Iterator[tuple[Where, Any]]:
    """The elements of a JSON list with their positions and the lines they start on (LLaVA's mix is one list of
    665K records: a mistake in one is found by its line, not by counting)."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    line, counted, index = 1, 0, 0
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text):
            raise json.JSONDecodeError("the list is not closed with ]", text, position)
        if text[position] == "]":
            rest = text[position + 1:].strip()
            if rest:
                raise json.JSONDecodeError("extra data after the list", text, position + 1)
            return
        line += text.count("\n", counted, position)
        counted = position
        record, position = decoder.raw_decode(text, position)
        index += 1
        yield Where(line, index), record


def resolve_image(name: Any, image_root: Path | None) -> Path:
    """The image file of a record, refusing paths that leave the image root."""
    if not isinstance(name, str) or not name:
        raise _Bad("'image' must be a relative path")
    if image_root is None:
        raise _Bad(NO_IMAGE_ROOT)
    relative = Path(name)
    if relative.is_absolute():
        raise _Bad(f"image path {name!r} is absolute; paths must be relative to the image root")
    # checked on the path as written: a folder inside the root may be a link to where the images really are
    # (LLaVA's playground/data/coco -> shared storage), but '..' must not lead out of the root
    root = Path(os.path.abspath(image_root))
    path = Path(os.path.normpath(root / relative))
    if root not in path.parents:
        raise _Bad(f"image path {name!r} leaves the image root")
    if not path.is_file():
        raise _Bad(f"image {name!r} not found under {image_root}")
    return path


def open_image(path: Path | BinaryIO, name: str | None = None):
    """Load an image fully (so a truncated file fails here, not mid-training), as RGB. ``path`` may be the bytes of
    an image already in memory (a benchmark's base64 image), ``name`` then saying which it is in errors."""
    from PIL import Image

    name = name or Path(path).name  # type: ignore[arg-type]
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # PIL only warns between the limit and twice the limit: refuse there too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _Bad(f"image {name!r} is larger than {MAX_IMAGE_PIXELS} pixels") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL signals bad files with these
        raise _Bad(f"image {name!r} cannot be read ({str(e).splitlines()[0] if str(e) else 'not an image'})") \
            from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous  # PIL's limit is global: leave it as the caller had it


def to_messages(conversations: Any, has_image: bool) -> list[dict[str, Any]]:
    """LLaVA turns (``from``/``value``) as chat messages, the image placed first in the first user turn."""
    if not isinstance(conversations, list) or not conversations:
        raise _Bad("'conversations' must be a non-empty list")
    messages = []
    for turn in conversations:
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise _Bad("each turn needs 'from' (human/gpt/system) and a string 'value'")
        messages.append({"role": ROLES[turn["from"]], "content": turn["value"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise _Bad("the conversation has no assistant (gpt) turn")
    placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if has_image:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise _Bad("the conversation has no human turn")
        if placeholders > 1:
            raise _Bad("more than one <image> placeholder")
        for m in messages:
            m["content"] = m["content"].replace(IMAGE_PLACEHOLDER, "").strip()
        first_user["content"] = [{"type": "image"}, {"type": "text", "text": first_user["content"]}]
    elif placeholders:
        raise _Bad("the text has an <image> placeholder but the record has no image")
    return messages


def _render(tokenizer, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                             **TEMPLATE_VARIABLES)
    except TemplateError as e:  # e.g. "roles must alternate" raised by the template itself
        raise _Bad(f"the chat template refuses this conversation ({e})") from None


def _reply_text(message: dict[str, Any]) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def supervised_spans(tokenizer, messages: list[dict[str, Any]], end_of_turn: str | None) -> tuple[str, list[tuple]]:
    """The rendered conversation and the character spans of each assistant reply (with its end of turn).

    The conversation is rendered once, whole, and each reply is located in that text. A reply starts where
    the template's generation prompt ends (the conversation before it, rendered with
    ``add_generation_prompt``, must be a prefix of the whole text) and runs through the end-of-turn token
    the template writes after it; anything the template adds after that (a newline) is not learned.

    Most templates render incrementally: the conversation through a reply is a prefix of the whole, which
    gives the reply's end exactly. Some do not: Qwen3's template writes an empty ``<think></think>`` block
    before the last reply only and strips such blocks from earlier ones. There the reply runs to the first
    end-of-turn token after its start, and it must end with the reply's own text, so a span never reaches
    into the next turn.
    """
    text = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], True)
        start = len(prompt)
        if not text.startswith(prompt) or (spans and start < spans[-1][1]):
            raise _Bad("the chat template renders the conversation before a reply differently from the whole "
                       "conversation, so the reply cannot be located")
        through = _render(tokenizer, messages[: i + 1], False)
        if through.startswith(prompt) and text.startswith(through):
            tail = through[start:]
            if end_of_turn and end_of_turn in tail:
                end = start + tail.rindex(end_of_turn) + len(end_of_turn)
            else:
                end = start + len(tail.rstrip())
        elif end_of_turn and end_of_turn in text[start:]:
            end = text.index(end_of_turn, start) + len(end_of_turn)
            if not text[start: end - len(end_of_turn)].rstrip().endswith(_reply_text(message).strip()):
                raise _Bad(f"the reply is not followed by the end-of-turn token {end_of_turn!r} in the rendered "
                           "conversation, so where it ends is unknown")
        else:
            raise _Bad("the chat template does not render this conversation incrementally and has no end-of-turn "
                       "token, so replies cannot be located")
        spans.append((start, end))
    return text, spans


def tokenize(tokenizer, messages: list[dict[str, Any]], *, image_token_id: int | None, image_tokens: int,
             end_of_turn: str | None) -> tuple[list[int], list[int], str]:
    """Token ids and labels (IGNORE outside assistant replies); the image token expanded to its features."""
    text, spans = supervised_spans(tokenizer, messages, end_of_turn)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = [], []
    for token, (begin, _end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        learn = any(start <= begin < stop for start, stop in spans)
        if image_token_id is not None and token == image_token_id:
            ids.extend([token] * image_tokens)
            labels.extend([IGNORE] * image_tokens)
            continue
        ids.append(token)
        labels.append(token if learn else IGNORE)
    return ids, labels, text


def audit(tokenizer, messages: list[dict[str, Any]], labels: Sequence[int], end_of_turn: str | None) -> None:
    """Refuse a sample whose labels would not teach its replies (and the end of turn)."""
    supervised = [t for t in labels if t != IGNORE]
    if not supervised:
        raise _Bad("no token is supervised (the assistant mask is empty)")
    decoded = tokenizer.decode(supervised, skip_special_tokens=False)
    for message in messages:
        if message["role"] == "assistant" and _reply_text(message).strip() not in decoded:
            raise _Bad("the supervised tokens do not decode back to the assistant's reply")
    if end_of_turn is not None:
        eot_id = tokenizer.convert_tokens_to_ids(end_of_turn)
        replies = sum(1 for m in messages if m["role"] == "assistant")
        if supervised.count(eot_id) < replies:
            raise _Bad(f"the end-of-turn token {end_of_turn!r} is not supervised after every reply")


@dataclass(frozen=True)
class _Context:
    """What turning one record into a sample needs; sent once to each worker process."""

    tokenizer: Any
    root: Path | None
    image_token_id: int | None
    image_tokens: int
    max_length: int
    end_of_turn: str | None
    check_images: bool


def _prepare(where: Where, record: Any, ctx: _Context) -> Sample | BadSample:
    """One record as a sample, or the reason it cannot be one (duplicate ids are found by the caller)."""
    line = where.line
    sample_id = str(record.get("id", f"line-{line}")) if isinstance(record, dict) else f"line-{line}"
    try:
        if isinstance(record, _Bad):
            raise record
        if not isinstance(record, dict):
            raise _Bad("a record must be a JSON object")
        if "id" not in record:
            raise _Bad("the record has no 'id'")
        image = None
        if record.get("image") is not None:
            image = resolve_image(record["image"], ctx.root)
            if ctx.check_images:
                open_image(image)
        messages = to_messages(record.get("conversations"), image is not None)
        ids, labels, _ = tokenize(ctx.tokenizer, messages, image_token_id=ctx.image_token_id,
                                  image_tokens=ctx.image_tokens, end_of_turn=ctx.end_of_turn)
        expected, per_image = ctx.image_tokens if image is not None else 0, max(ctx.image_tokens, 1)
        if ctx.image_token_id is not None and ids.count(ctx.image_token_id) != expected:
            raise _Bad(f"the chat template renders the image {ids.count(ctx.image_token_id) // per_image} "
                       f"times instead of {expected // per_image}, so image features and image tokens would not "
                       "match")
        if len(ids) > ctx.max_length:
            raise _Bad(f"{len(ids)} tokens (image included) is longer than max_length {ctx.max_length} (the "
                       "recipe's, or the LLM's positions when fewer)")
        audit(ctx.tokenizer, messages, labels, ctx.end_of_turn)
    except _Bad as reason:
        return BadSample(sample_id, line, str(reason), where.index)
    return Sample(sample_id, line, image, array("i", ids), array("i", labels))


_WORKER_CONTEXT: _Context | None = None


def _init_worker(ctx: _Context) -> None:
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = ctx


def _prepare_chunk(chunk: list[tuple[Where, Any]]) -> list[Sample | BadSample]:
    assert _WORKER_CONTEXT is not None
    return [_prepare(where, record, _WORKER_CONTEXT) for where, record in chunk]


# records per chunk handed to a worker process; a file within the first chunk is prepared in this process
CHUNK = 2000


def default_workers() -> int:
    """Processes for preparing data: this machine's cores shared among the training processes on it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(32, cores // max(local, 1)))


def _main_is_guarded() -> bool:
    """Whether worker processes can be spawned safely: each one imports the main script again, so a script
    without an ``if __name__ == "__main__":`` guard would run its training again in every worker (the
    ``backbone-swap`` command, ``python -m backbone_swap.cli`` and pytest have the guard)."""
    import inspect
    import sys

    main = sys.modules.get("__main__")
    try:
        source = inspect.getsource(main) if main is not None else ""
    except (OSError, TypeError):  # an interactive session, or a main module without a file
        return False
    return "__name__ == '__main__'" in source or '__name__ == "__main__"' in source


def _prepared(path: Path, ctx: _Context, workers: int) -> Iterator[Sample | BadSample]:
    """Every record prepared, in file order; chunks go to ``workers`` processes once the file is larger than
    one chunk (rendering chat templates takes milliseconds a record: half an hour for LLaVA's 665K mix)."""
    from itertools import islice

    records = read_records(path)
    first = list(islice(records, CHUNK + 1))
    if workers <= 1 or len(first) <= CHUNK or not _main_is_guarded():
        yield from (_prepare(where, record, ctx) for where, record in first)
        yield from (_prepare(where, record, ctx) for where, record in records)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    def chunks() -> Iterator[list[tuple[Where, Any]]]:
        yield first
        while chunk := list(islice(records, CHUNK)):
            yield chunk

    def here(chunk: list[tuple[Where, Any]]) -> list[Sample | BadSample]:
        return [_prepare(where, record, ctx) for where, record in chunk]

    pending: deque = deque()  # (chunk, future), in file order
    broken = False  # a worker died (out of memory, killed): the rest is prepared in this process
    # spawn, not fork: the training process may already hold CUDA or thread pools a fork would copy broken
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(ctx,)) as pool:
        for chunk in chunks():
            if not broken:
                try:
                    pending.append((chunk, pool.submit(_prepare_chunk, chunk)))
                except BrokenProcessPool:
                    broken = True
            if broken:
                pending.append((chunk, None))
            # a few chunks in flight per worker, so memory stays bounded
            while len(pending) > 2 * workers or (pending and (pending[0][1] is None or pending[0][1].done())):
                chunk_, future = pending.popleft()
                try:
                    yield from (future.result() if future is not None else here(chunk_))
                except BrokenProcessPool:
                    broken = True
                    yield from here(chunk_)
        while pending:
            chunk_, future = pending.popleft()
            try:
                yield from (future.result() if future is not None and not broken else here(chunk_))
            except BrokenProcessPool:
                broken = True
                yield from here(chunk_)


def build_dataset(
    path: str | Path,
    tokenizer,
    *,
    image_root: str | Path | None,
    image_token: str,
    image_tokens: int,
    max_length: int,
    end_of_turn: str | None,
    on_bad_sample: str = "fail",
    check_images: bool = True,
    workers: int | None = None,
) -> Dataset:
    """Read, tokenise and audit every record; bad ones fail the run or are skipped and counted. ``workers``
    processes share the work on large files (default: the cores of this machine per training process)."""
    check(on_bad_sample, ON_BAD_SAMPLE, "--on-bad-sample")
    root = Path(image_root).expanduser() if image_root is not None else None
    if root is not None and not root.is_dir():
        raise BackboneSwapError(f"image root {root} is not a folder", "Pass the folder the image paths start from")
    ctx = _Context(tokenizer, root, tokenizer.convert_tokens_to_ids(image_token), image_tokens, max_length,
                   end_of_turn, check_images)
    samples: list[Sample] = []
    bad: list[BadSample] = []
    seen: set[str] = set()
    for prepared in _prepared(Path(path), ctx, default_workers() if workers is None else workers):
        if isinstance(prepared, Sample) and prepared.id in seen:
            prepared = BadSample(prepared.id, prepared.line, "the id is used by an earlier record")
        if isinstance(prepared, BadSample):
            if prepared.reason == NO_IMAGE_ROOT:  # skipping would leave out every sample with an image
                raise BackboneSwapError(f"{path} has records with images ({prepared.describe()})",
                                        "Pass --image-root FOLDER, the folder the records' image paths start from")
            if on_bad_sample == "fail":
                raise BackboneSwapError(
                    f"{path}: {prepared.describe()}",
                    "Fix the record, or pass --on-bad-sample skip to leave such samples out",
                )
            bad.append(prepared)
            continue
        seen.add(prepared.id)
        samples.append(prepared)
    if not samples:
        raise BackboneSwapError(f"{path} has no usable sample", "Check the data file and --image-root")
    return Dataset(samples, bad)
