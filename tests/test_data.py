"""Conversations become ids and labels through the target template; bad records are named, never trained."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image
from transformers import AutoTokenizer

from backbone_swap.checkpoints.templates import end_of_turn
from backbone_swap.errors import BackboneSwapError
from backbone_swap.training.batching import length_grouped_batches, padding_fraction
from backbone_swap.training.data import IGNORE, build_dataset

TWO_TURNS = [
    {"from": "human", "value": "<image>\nwhat colour is the shape?"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "and which shape is it?"},
    {"from": "gpt", "value": "a circle"},
]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(root / "a.png")
    return root


def _build(model, tmp_path, image_root, records, **kw):
    tok = AutoTokenizer.from_pretrained(model)
    options = dict(image_root=image_root, image_token="<image>", image_tokens=16, max_length=256,
                   end_of_turn=end_of_turn(tok))
    options.update(kw)
    return tok, build_dataset(_write(tmp_path / "d.jsonl", records), tok, **options)


@pytest.mark.parametrize("llm", ["mistral", "qwen2"])
def test_labels_are_exactly_the_replies_and_their_end_of_turn(llm, transplanted, tmp_path, image_root):
    records = [{"id": 1, "image": "a.png", "conversations": TWO_TURNS}]
    tok, data = _build(transplanted[llm], tmp_path, image_root, records)
    sample = data.samples[0]
    eot = {"mistral": "</s>", "qwen2": "<|im_end|>"}[llm]
    eot_id = tok.convert_tokens_to_ids(eot)
    # independently: each reply's own tokens followed by the end of turn, in order, nothing else
    expected = []
    for reply in ("red", "a circle"):
        expected += tok(reply, add_special_tokens=False)["input_ids"] + [eot_id]
    assert [t for t in sample.labels if t != IGNORE] == expected
    # token by token: a label is either IGNORE or the input token at that position
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        assert label in (IGNORE, token)
    image_id = tok.convert_tokens_to_ids("<image>")
    assert sample.input_ids.count(image_id) == 16
    assert all(label == IGNORE for t, label in zip(sample.input_ids, sample.labels, strict=True) if t == image_id)
    assert data.stats()["supervised_tokens_min"] == len(expected)


def test_a_fixed_offset_template_would_mis_mask_but_ours_does_not(transplanted, tmp_path, image_root):
    tok, data = _build(transplanted["qwen2"], tmp_path, image_root,
                       [{"id": 1, "image": "a.png", "conversations": TWO_TURNS}])
    sample = data.samples[0]
    # A hand-written LLaVA-v1 masker assumes "ASSISTANT:" separators; ChatML has none, so it would find no
    # reply at all. The template-derived mask finds both replies.
    text = tok.decode(sample.input_ids)
    assert "ASSISTANT:" not in text
    assert tok.decode([t for t in sample.labels if t != IGNORE]) == "red<|im_end|>a circle<|im_end|>"


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ({"id": "m", "image": "missing.png", "conversations": TWO_TURNS}, "not found"),
        ({"id": "t", "image": "../../etc/passwd", "conversations": TWO_TURNS}, "leaves the image root"),
        ({"id": "abs", "image": "/etc/passwd", "conversations": TWO_TURNS}, "is absolute"),
        ({"id": "txt", "image": "notes.txt", "conversations": TWO_TURNS}, "cannot be read"),
        ({"id": "trunc", "image": "cut.png", "conversations": TWO_TURNS}, "cannot be read"),
        ({"id": "noreply", "conversations": [{"from": "human", "value": "hi"}]}, "no assistant"),
        ({"id": "bad", "conversations": "nope"}, "non-empty list"),
        ({"conversations": TWO_TURNS[2:]}, "no 'id'"),
        ({"id": "long", "conversations": [{"from": "human", "value": "a " * 300}, {"from": "gpt", "value": "b"}]},
         "longer than max_length"),
    ],
)
def test_bad_records_are_named_with_id_and_line(record, words, transplanted, tmp_path, image_root):
    (image_root / "notes.txt").write_text("not an image")
    noise = Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3))
    noise.save(image_root / "full.png")
    (image_root / "cut.png").write_bytes((image_root / "full.png").read_bytes()[:5000])
    records = [{"id": "ok", "image": "a.png", "conversations": TWO_TURNS}, record]
    with pytest.raises(BackboneSwapError) as error:
        _build(transplanted["mistral"], tmp_path, image_root, records)
    assert words in str(error.value) and "(line 2)" in str(error.value) and "--on-bad-sample skip" in str(error.value)
    _, data = _build(transplanted["mistral"], tmp_path, image_root, records, on_bad_sample="skip")
    assert [s.id for s in data.samples] == ["ok"]
    assert data.stats()["skipped"] == 1


def test_malformed_json_line_is_reported(transplanted, tmp_path, image_root):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": 1, "conversations": TWO_TURNS[2:]}) + "\n{not json\n")
    tok = AutoTokenizer.from_pretrained(transplanted["mistral"])
    with pytest.raises(BackboneSwapError, match=r"line 2\): malformed JSON"):
        build_dataset(path, tok, image_root=image_root, image_token="<image>", image_tokens=16, max_length=256,
                      end_of_turn="</s>")


def test_text_only_samples_are_allowed(transplanted, tmp_path, image_root):
    _, data = _build(transplanted["mistral"], tmp_path, image_root, [{"id": 1, "conversations": TWO_TURNS[2:]}])
    assert data.samples[0].image is None and data.samples[0].supervised > 0


def test_length_grouping_cuts_padding_and_is_seeded():
    rng = random.Random(0)
    lengths = [rng.randint(10, 400) for _ in range(512)]
    grouped = length_grouped_batches(lengths, 8, seed=3)
    plain = length_grouped_batches(lengths, 8, seed=3, group=False)
    assert sorted(i for b in grouped for i in b) == list(range(512))
    assert grouped == length_grouped_batches(lengths, 8, seed=3)
    assert grouped != length_grouped_batches(lengths, 8, seed=4)
    assert padding_fraction(lengths, grouped) < padding_fraction(lengths, plain) / 3
    # by hand: lengths 2 and 4 in one batch pad to 8 tokens of which 6 are real
    assert padding_fraction([2, 4], [[0, 1]]) == pytest.approx(0.25)


def test_batches_hold_one_modality_except_the_merged_remainder():
    rng = random.Random(1)
    modality = [rng.random() < 0.7 for _ in range(203)]  # 141-ish with images, the rest text only
    lengths = [rng.randint(600, 900) if m else rng.randint(20, 300) for m in modality]
    batches = length_grouped_batches(lengths, 8, seed=5, modality=modality)
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert [len(b) for b in batches[:-1]] == [8] * (203 // 8) and len(batches[-1]) == 203 % 8
    *whole, tail = batches
    images, texts = sum(modality), 203 - sum(modality)
    merged = [b for b in batches[-2:] if len({modality[i] for i in b}) > 1]
    assert all(len({modality[i] for i in b}) == 1 for b in whole[:-1])  # one kind per batch
    assert len(merged) <= 2 and sum(len(b) for b in batches if b in merged) <= images % 8 + texts % 8
    assert batches == length_grouped_batches(lengths, 8, seed=5, modality=modality)
    # one kind only: the batches of plain length grouping
    assert length_grouped_batches(lengths, 8, seed=5, modality=[True] * 203) == length_grouped_batches(
        lengths, 8, seed=5)


def test_a_template_that_raises_marks_the_sample_bad(transplanted, tmp_path, image_root):
    tok = AutoTokenizer.from_pretrained(transplanted["mistral"])
    tok.chat_template = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
        "[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"
    )
    records = [{"id": "ok", "conversations": TWO_TURNS[2:]},
               {"id": "gpt-first", "conversations": [TWO_TURNS[1], TWO_TURNS[2], TWO_TURNS[3]]}]
    data = build_dataset(_write(tmp_path / "d.jsonl", records), tok, image_root=image_root, image_token="<image>",
                         image_tokens=16, max_length=256, end_of_turn="</s>", on_bad_sample="skip")
    assert [s.id for s in data.samples] == ["ok"]
    assert "roles must alternate" in data.bad[0].reason


def test_huge_images_are_refused_as_decompression_bombs(transplanted, tmp_path, image_root, monkeypatch):
    import backbone_swap.training.data as data_module

    monkeypatch.setattr(data_module, "MAX_IMAGE_PIXELS", 150)  # a.png has 200 pixels: over, but under twice
    records = [{"id": "big", "image": "a.png", "conversations": TWO_TURNS}]
    with pytest.raises(BackboneSwapError, match="larger than 150 pixels"):
        _build(transplanted["mistral"], tmp_path, image_root, records)


def test_an_image_the_template_does_not_render_once_marks_the_sample_bad(transplanted, tmp_path, image_root):
    tok = AutoTokenizer.from_pretrained(transplanted["mistral"])
    # string contents only: the typed first user turn, the one holding the image, renders empty
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {% if m['content'] is string %}{{ m['content'] }}"
                         "{% endif %}</s>{% endfor %}")
    records = [{"id": "text", "conversations": TWO_TURNS[2:]},
               {"id": "dropped", "image": "a.png", "conversations": TWO_TURNS}]
    data = build_dataset(_write(tmp_path / "d.jsonl", records), tok, image_root=image_root, image_token="<image>",
                         image_tokens=16, max_length=256, end_of_turn="</s>", on_bad_sample="skip")
    assert [s.id for s in data.samples] == ["text"]
    assert "renders the image 0 times instead of 1" in data.bad[0].reason


def test_images_behind_a_linked_folder_inside_the_root_are_found(transplanted, tmp_path, image_root):
    shared = tmp_path / "shared-storage" / "coco"
    shared.mkdir(parents=True)
    Image.new("RGB", (20, 10), (0, 0, 255)).save(shared / "b.png")
    (image_root / "coco").symlink_to(shared, target_is_directory=True)
    records = [{"id": "linked", "image": "coco/b.png", "conversations": TWO_TURNS},
               {"id": "escape", "image": "coco/../../shared-storage/coco/b.png", "conversations": TWO_TURNS}]
    _, data = _build(transplanted["mistral"], tmp_path, image_root, records, on_bad_sample="skip")
    assert [s.id for s in data.samples] == ["linked"]
    assert "leaves the image root" in data.bad[0].reason


def test_worker_processes_prepare_exactly_what_one_process_does(transplanted, tmp_path, image_root, monkeypatch):
    """Chunks of 40 records over 2 spawned processes: the same samples in file order, the same bad records
    (missing image, duplicate id, no reply) and the same first error."""
    from backbone_swap.training import data

    records = []
    for i in range(130):
        if i % 17 == 5:
            records.append({"id": i, "image": "missing.png", "conversations": TWO_TURNS})
        elif i % 23 == 7:
            records.append({"id": i - 1, "conversations": TWO_TURNS[2:]})  # the id of the record before
        elif i % 29 == 3:
            records.append({"id": i, "conversations": TWO_TURNS[:1]})
        else:
            turns = TWO_TURNS if i % 2 else [dict(TWO_TURNS[0], value="<image>\n" + "what colour? " * (i % 5)),
                                              TWO_TURNS[1]]
            records.append({"id": i, "image": "a.png", "conversations": turns})
    monkeypatch.setattr(data, "CHUNK", 40)
    _, one = _build(transplanted["mistral"], tmp_path, image_root, records, on_bad_sample="skip", workers=1)
    _, two = _build(transplanted["mistral"], tmp_path, image_root, records, on_bad_sample="skip", workers=2)
    assert len(one.samples) > 90 and len(one.bad) >= 10
    assert [(s.id, s.line, s.image, s.input_ids, s.labels) for s in two.samples] == [
        (s.id, s.line, s.image, s.input_ids, s.labels) for s in one.samples]
    assert two.bad == one.bad
    errors = []
    for workers in (1, 2):
        with pytest.raises(BackboneSwapError) as caught:
            _build(transplanted["mistral"], tmp_path, image_root, records, workers=workers)
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "(line 4): the conversation has no assistant" in errors[0]


class _DiesInAWorker:
    """A tokenizer whose copy kills the worker process that receives it: the pool breaks at once."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)

    def __reduce__(self):
        import os

        return (os._exit, (1,))


def test_records_are_prepared_here_when_the_workers_die(transplanted, tmp_path, image_root, monkeypatch):
    """Seven chunks over 2 workers that die on start: every chunk, submitted or not, is prepared in this
    process, with the samples of a one-process run."""
    from backbone_swap.training import data

    records = [{"id": i, "image": "a.png", "conversations": TWO_TURNS} for i in range(140)]
    monkeypatch.setattr(data, "CHUNK", 20)
    tok, one = _build(transplanted["mistral"], tmp_path, image_root, records, workers=1)
    options = dict(image_root=image_root, image_token="<image>", image_tokens=16, max_length=256,
                   end_of_turn=end_of_turn(tok))
    survived = build_dataset(tmp_path / "d.jsonl", _DiesInAWorker(tok), workers=2, **options)
    assert [(s.id, s.input_ids, s.labels) for s in survived.samples] == [
        (s.id, s.input_ids, s.labels) for s in one.samples]


def test_a_json_list_names_a_bad_record_by_its_position_and_its_line(transplanted, tmp_path, image_root):
    from backbone_swap.training.data import read_records

    records = [{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]},
               {"id": "b", "conversations": [{"from": "human", "value": "hi"}]}]
    path = tmp_path / "data.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r, indent=1) for r in records) + "\n]\n")
    opening = [number for number, line in enumerate(path.read_text().splitlines(), start=1) if line == "{"]
    assert [(where.index, where.line) for where, _ in read_records(path)] == [(1, opening[0]), (2, opening[1])]
    tok = AutoTokenizer.from_pretrained(transplanted["mistral"])
    with pytest.raises(BackboneSwapError, match=rf"sample 'b' \(record 2, line {opening[1]}\): the conversation has "
                                                "no assistant"):
        build_dataset(path, tok, image_root=image_root, image_token="<image>", image_tokens=16, max_length=256,
                      end_of_turn=end_of_turn(tok))


def test_records_with_images_and_no_image_root_name_the_option(transplanted, tmp_path, image_root):
    records = [{"id": "a", "image": "a.png",
                "conversations": [{"from": "human", "value": "<image>\nwhat?"}, {"from": "gpt", "value": "red"}]}]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    tokenizer = AutoTokenizer.from_pretrained(transplanted["mistral"])
    for on_bad_sample in ("fail", "skip"):  # skipping would drop every image sample: refused either way
        with pytest.raises(BackboneSwapError) as caught:
            build_dataset(path, tokenizer, image_root=None, image_token="<image>", image_tokens=16, max_length=256,
                          end_of_turn="</s>", on_bad_sample=on_bad_sample)
        assert "has records with images" in caught.value.message
        assert caught.value.hint == "Pass --image-root FOLDER, the folder the records' image paths start from"
