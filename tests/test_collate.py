"""Padding is masked from the loss and from attention, and the pad token is never the end of turn."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from backbone_swap.checkpoints.templates import end_of_turn
from backbone_swap.training.batching import collate
from backbone_swap.training.data import IGNORE, Sample


def test_pads_are_masked_from_loss_and_attention(transplanted):
    tok = AutoTokenizer.from_pretrained(transplanted["mistral"])
    pad = tok.pad_token_id
    assert pad != tok.convert_tokens_to_ids(end_of_turn(tok)) and pad != tok.eos_token_id
    image = Path("x.png")
    short = Sample("a", 1, image, [5, 6, 7], [IGNORE, 6, 7])
    long = Sample("b", 2, None, [5, 6, 7, 8, 9], [IGNORE, IGNORE, 7, 8, 9])
    features = {image: torch.ones(4, 3)}
    ids, mask, labels, feats = collate([short, long], features.__getitem__, pad)
    assert ids.tolist() == [[5, 6, 7, pad, pad], [5, 6, 7, 8, 9]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert labels.tolist() == [[IGNORE, 6, 7, IGNORE, IGNORE], [IGNORE, IGNORE, 7, 8, 9]]
    assert feats.shape == (1, 4, 3)  # only the sample with an image contributes features


def test_every_process_gets_as_many_micro_batches():
    from backbone_swap.training.batching import split_for_processes

    full = list(range(16))
    assert split_for_processes(full, 4, 2) == [full[0:4], full[4:8], full[8:12], full[12:16]]
    assert split_for_processes(full, 4, 1) == [full[0:4], full[4:8], full[8:12], full[12:16]]
    # a short last batch: 5 samples, micro-batches of 4, 4 processes -> 4 pieces, none empty
    short = split_for_processes(list(range(5)), 4, 4)
    assert [len(p) for p in short] == [2, 1, 1, 1] and sorted(sum(short, [])) == list(range(5))
    # 6 micro-batches' worth on 8 processes: cut into 8 smaller pieces
    parts = split_for_processes(list(range(82)), 16, 8)
    assert len(parts) == 8 and all(parts) and sorted(sum(parts, [])) == list(range(82))
    assert split_for_processes(list(range(3)), 4, 4) is None  # fewer samples than processes
