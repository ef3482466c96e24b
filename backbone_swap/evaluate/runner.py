"""``backbone-swap eval``: every task of a suite answered and scored, one line per item, resumable.

Lines are appended as batches finish, so a crash loses at most one batch and a restart skips what is done; a
finished file is put in the items' order. The items about one image are handed to the model together so that
``evaluator.Evaluator`` runs their shared prefix once. The hidden states of a fixed probe set, on clean and
perturbed inputs, are saved for the stability analysis in ``compare``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.evaluator import Evaluator, run_dtype
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
        evaluator.forget_prefix()  # no later task asks about these image objects: free its cache
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


def _refuse_other_run(folder: RunFolder, recorded: dict[str, Any], identity: dict[str, str]) -> None:
    """A folder resumes only the evaluation that started it: same model, suite and dtype (answers computed in
    two dtypes would be mixed in one file)."""
    same_model = all(recorded.get(k) == identity[k] for k in ("model", "suite"))
    dtype = identity["dtype"]
    if recorded.get("dtype", dtype) != dtype and same_model:
        raise BackboneSwapError(
            f"{folder.path} holds answers computed in {recorded['dtype']}, and this run would compute in {dtype}",
            f"Pass --dtype {recorded['dtype']} to resume, or choose another --output",
        )
    folder.refuse_changed(recorded, identity, "Choose another --output, or delete that folder")


def _finished(output: Path, suite: Suite, items: dict[str, list[dict[str, Any]]], probes: bool) -> bool:
    """Every item answered and every probe file written: a finished folder is returned without loading the model."""
    return all(
        {str(i["id"]) for i in items[t.name]} <= _done_ids(output / f"{t.name}.jsonl", repair=False)
        and (not probes or not suite.probes or (output / "probes" / f"{t.name}.safetensors").is_file())
        for t in suite.tasks
    )


def _save_probes(evaluator: Evaluator, suite: Suite, output: Path, seed: int,
                 items: dict[str, list[dict[str, Any]]]) -> None:
    """The probe states of each task not saved yet (one file per task, written whole)."""
    (output / "probes").mkdir(exist_ok=True)
    for task in suite.tasks:
        target = output / "probes" / f"{task.name}.safetensors"
        if not target.is_file():
            states = probe_states(evaluator, task, suite.probes, seed, items[task.name])
            write_safetensors(target, {k: v.contiguous() for k, v in states.items()})


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
            _refuse_other_run(folder, recorded, identity)
        elif state.is_main_process:
            folder.write_json("evaluated.json", identity)
        if _finished(output, suite, items, probes) and (output / "manifest.json").is_file():
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
            _save_probes(evaluator, suite, output, seed, items)
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
