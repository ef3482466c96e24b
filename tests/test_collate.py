"""Padding is masked from the loss and from attention, and the pad token is never the end of turn."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from backbone_swap.data import IGNORE, Sample
from backbone_swap.templates import end_of_turn
from backbone_swap.train import collate


def test_pads_are_masked_from_loss_and_attention(transplanted):
    tok = AutoTokenizer.from_pretrained(transplanted["mistral"])
    pad = tok.pad_token_id
    assert pad != tok.convert_tokens_to_ids(end_of_turn(tok)) and pad != tok.eos_token_id
    image = Path("x.png")
    short = Sample("a", 1, image, [5, 6, 7], [IGNORE, 6, 7])
    long = Sample("b", 2, None, [5, 6, 7, 8, 9], [IGNORE, IGNORE, 7, 8, 9])
    features = {image: torch.ones(4, 3)}
    ids, mask, labels, feats = collate([short, long], features, pad)
    assert ids.tolist() == [[5, 6, 7, pad, pad], [5, 6, 7, 8, 9]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert labels.tolist() == [[IGNORE, 6, 7, IGNORE, IGNORE], [IGNORE, IGNORE, 7, 8, 9]]
    assert feats.shape == (1, 4, 3)  # only the sample with an image contributes features
