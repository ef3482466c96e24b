"""Time of preparing training data (chat template, tokens, labels, audit) in one process and in several.

    python bench/data.py [--records 6000] [--workers N] [--workdir DIR]

Builds (once, in --workdir) a tiny LLaVA checkpoint with a Llama tokenizer and a JSONL of LLaVA-style
conversations of one to five rounds with images, then, in this process, times ``build_dataset`` with
``workers=1`` and with ``--workers`` processes (default: this machine's cores), checks that both give the
same samples, and prints records/s and the ratio. Images are checked (opened) in both runs. At LLaVA's scale
(665K records, about 3 ms a record on one core) one process takes over half an hour.

It then measures (tracemalloc) the memory the samples' token ids and labels hold, as stored, against the same
tokens as the Python lists ``tokenize`` returns (how samples were held before); every training process holds
the whole data set.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path


def build_inputs(root: Path, records: int) -> tuple[Path, Path]:
    from PIL import Image

    from backbone_swap.demo import tiny_models as tm

    model = root / "llava"
    if not model.exists():
        tm.build_llava(model)
    images = root / "images"
    images.mkdir(exist_ok=True)
    for i in range(64):
        if not (images / f"{i}.jpg").exists():
            Image.new("RGB", (640, 480), (i * 4 % 255, 90, 40)).save(images / f"{i}.jpg", quality=90)
    data = root / f"data-{records}.jsonl"
    if not data.exists():
        rng = random.Random(0)
        with open(data, "w") as f:
            for i in range(records):
                turns = [{"from": "human", "value": "<image>\nWhat is happening in this picture? Describe it."},
                         {"from": "gpt", "value": "A scene with several objects on a table. " * rng.randint(1, 6)}]
                for _ in range(rng.randint(0, 4)):
                    turns += [{"from": "human", "value": "And what colour is the car on the left?"},
                              {"from": "gpt", "value": "It is red."}]
                f.write(json.dumps({"id": i, "image": f"{i % 64}.jpg", "conversations": turns}) + "\n")
    return model, data


def main() -> None:
    from transformers import AutoTokenizer

    from backbone_swap.checkpoints.templates import end_of_turn
    from backbone_swap.training.data import build_dataset, default_workers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "backbone-swap-bench-data")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model, data = build_inputs(args.workdir, args.records)
    tokenizer = AutoTokenizer.from_pretrained(model)
    options = dict(image_root=args.workdir / "images", image_token="<image>", image_tokens=576, max_length=8192,
                   end_of_turn=end_of_turn(tokenizer))
    timings, built = {}, {}
    for workers in (1, args.workers):
        started = time.perf_counter()
        built[workers] = build_dataset(data, tokenizer, workers=workers, **options)
        timings[workers] = time.perf_counter() - started
    same = [(s.id, s.input_ids, s.labels) for s in built[1].samples] == [
        (s.id, s.input_ids, s.labels) for s in built[args.workers].samples]
    for workers, seconds in timings.items():
        print(f"workers {workers:>3}: {seconds:7.2f} s, {args.records / seconds:8.0f} records/s")
    print(f"ratio {args.workers} workers / 1: {timings[1] / timings[args.workers]:.2f}; same samples: {same}")
    stored, lists = token_memory(built[1].samples, data, tokenizer, options)
    count = len(built[1].samples)
    print(f"tokens and labels: {stored / count:8.0f} bytes a sample as stored, {lists / count:8.0f} as lists; "
          f"ratio lists / stored: {lists / stored:.2f} (665K samples: {stored / count * 665e3 / 1e9:.1f} GB against "
          f"{lists / count * 665e3 / 1e9:.1f} GB in every process)")


def token_memory(samples, data: Path, tokenizer, options) -> tuple[int, int]:
    """Bytes held by the samples' token ids and labels as stored, and by the lists ``tokenize`` returns for the
    same records (how samples held them before)."""
    import tracemalloc
    from array import array

    from backbone_swap.training.data import to_messages, tokenize

    records = [json.loads(line) for line in data.read_text().splitlines()]
    image_id = tokenizer.convert_tokens_to_ids(options["image_token"])
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    stored = [(array(s.input_ids.typecode, s.input_ids), array(s.labels.typecode, s.labels)) for s in samples]
    stored_bytes = tracemalloc.get_traced_memory()[0] - base
    del stored
    lists = []
    base = tracemalloc.get_traced_memory()[0]
    for record in records:
        messages = to_messages(record["conversations"], True)
        ids, labels, text = tokenize(tokenizer, messages, image_token_id=image_id,
                                     image_tokens=options["image_tokens"], end_of_turn=options["end_of_turn"])
        lists.append((ids, labels))
        del text
    list_bytes = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert [ids for ids, _ in lists] == [list(s.input_ids) for s in samples]  # the same tokens, held two ways
    return stored_bytes, list_bytes


if __name__ == "__main__":
    main()
