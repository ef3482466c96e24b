"""The streaming safetensors writer and the header reader, checked against the safetensors library."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from backbone_swap.checkpoints import streaming as st
from backbone_swap.errors import BackboneSwapError


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(7, 5, generator=g),
        "b.bf16": torch.randn(3, 4, generator=g).to(torch.bfloat16),
        "c.half": torch.randn(9, generator=g).half(),
        "d.ids": torch.arange(11, dtype=torch.int64),
        "e.flag": torch.tensor([True, False, True]),
        "f.empty": torch.zeros(0, 4),
    }


def _plan(tensors):
    return [
        st.PlannedTensor(k, st.safetensors_dtype(v.dtype), tuple(v.shape), lambda v=v: st.tensor_to_bytes(v))
        for k, v in tensors.items()
    ]


def test_written_file_reads_back_with_safetensors(tmp_path):
    tensors = _tensors()
    files = st.write_checkpoint(tmp_path, _plan(tensors), max_shard_bytes=10**9)
    assert files == ["model.safetensors"]
    loaded = load_file(tmp_path / "model.safetensors")
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)


def test_shards_and_index_cover_every_tensor_once(tmp_path):
    tensors = _tensors()
    files = st.write_checkpoint(tmp_path, _plan(tensors), max_shard_bytes=100)
    assert len(files) > 1
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    merged = {}
    for f in files:
        merged.update(load_file(tmp_path / f))
    for name, tensor in tensors.items():
        assert torch.equal(merged[name], tensor)


def test_header_reader_matches_library_files_and_copies_bytes_exactly(tmp_path):
    tensors = _tensors()
    save_file(tensors, tmp_path / "lib.safetensors")
    entries, metadata = st.read_header(tmp_path / "lib.safetensors")
    assert set(entries) == set(tensors)
    for name, tensor in tensors.items():
        assert entries[name].shape == tuple(tensor.shape)
        assert torch.equal(st.read_tensor(entries[name]), tensor)
    st.write_file(tmp_path / "copy.safetensors", [st.copy_of(e) for e in entries.values()])
    copied = load_file(tmp_path / "copy.safetensors")
    for name, tensor in tensors.items():
        assert torch.equal(copied[name], tensor)


@pytest.mark.parametrize("damage", ["truncate_data", "truncate_header", "garbage", "empty", "extra_bytes"])
def test_damaged_files_are_refused(tmp_path, damage):
    path = tmp_path / "x.safetensors"
    save_file(_tensors(), path)
    data = path.read_bytes()
    damaged = {
        "truncate_data": data[:-10],
        "truncate_header": data[:40],
        "garbage": b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + data[24:],
        "empty": b"",
        "extra_bytes": data + b"\x00" * 8,
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(BackboneSwapError, match="not a valid safetensors file"):
        st.read_header(path)


def test_copies_without_kernel_copy_give_the_same_file(tmp_path, monkeypatch):
    import errno
    import os

    tensors = _tensors()
    save_file(tensors, tmp_path / "lib.safetensors")
    entries, _ = st.read_header(tmp_path / "lib.safetensors")
    st.write_file(tmp_path / "kernel.safetensors", [st.copy_of(e) for e in entries.values()])

    def unsupported(*args, **kwargs):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    st.write_file(tmp_path / "python.safetensors", [st.copy_of(e) for e in entries.values()])
    assert (tmp_path / "kernel.safetensors").read_bytes() == (tmp_path / "python.safetensors").read_bytes()
    copied = load_file(tmp_path / "python.safetensors")
    assert all(torch.equal(copied[k], v) for k, v in tensors.items())
