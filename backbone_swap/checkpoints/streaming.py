"""Reading safetensors headers and writing safetensors files one tensor at a time.

The ``safetensors`` package reads a header through memory mapping and writes a file from a dict that
holds every tensor at once. A transplant must copy a multi-gigabyte language model while holding at most
one tensor in memory, and must copy the vision tower byte for byte, so this module works on the file
format itself (an 8-byte little-endian header length, a JSON header, then the raw buffers), which is
small and fixed by the format's specification. Files written here are read back with ``safetensors``
and ``from_pretrained`` in the tests.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from backbone_swap.errors import BackboneSwapError

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip

TORCH_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip

_MAX_HEADER = 100 * 1024 * 1024
_COPY_CHUNK = 64 * 1024 * 1024
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes lie in a safetensors file, and what they are."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse and validate a safetensors header without reading any tensor data.

    A truncated or corrupt file is reported here, before anything is written, by checking that the
    declared buffers exactly cover the rest of the file.
    """
    path = Path(path)
    size = path.stat().st_size
    bad = BackboneSwapError(
        f"{path} is not a valid safetensors file (corrupt or truncated)",
        "Re-download or re-save this checkpoint",
    )
    if size < 8:
        raise bad
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > min(_MAX_HEADER, size - 8):
            raise bad
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad from None
    if not isinstance(header, dict):
        raise bad
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    entries: dict[str, TensorEntry] = {}
    spans = []
    try:
        for name, info in header.items():
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            entry = TensorEntry(name, dtype, shape, path, data_start + begin, data_start + end)
            if dtype not in DTYPE_SIZES or entry.numel * DTYPE_SIZES[dtype] != end - begin or begin > end:
                raise bad
            entries[name] = entry
            spans.append((begin, end))
    except (KeyError, TypeError, ValueError):
        raise bad from None
    spans.sort()
    covered = 0
    for begin, end in spans:
        if begin != covered:
            raise bad
        covered = end
    if data_start + covered != size:
        raise bad
    return entries, dict(metadata)


def read_bytes(entry: TensorEntry, start: int = 0, stop: int | None = None) -> bytes:
    """The bytes of ``entry``, or of its byte range [start, stop) (rows of a matrix read a few at a time)."""
    stop = entry.nbytes if stop is None else stop
    with open(entry.file, "rb") as f:
        f.seek(entry.start + start)
        data = f.read(stop - start)
    if len(data) != stop - start:
        raise BackboneSwapError(f"{entry.file} ended while reading tensor {entry.name}", "The file is truncated")
    return data


def read_tensor(entry: TensorEntry):
    """One tensor as a torch tensor, read with plain file I/O so no mapping of the file stays resident."""
    import torch

    dtype = getattr(torch, TORCH_DTYPES[entry.dtype])
    buffer = bytearray(read_bytes(entry))
    if not buffer:
        return torch.empty(entry.shape, dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype).reshape(entry.shape)


def tensor_to_bytes(tensor) -> bytes:
    import torch

    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.numel() == 0:
        return b""
    return tensor.view(torch.uint8).numpy().tobytes() if tensor.dtype != torch.uint8 else tensor.numpy().tobytes()


def safetensors_dtype(torch_dtype) -> str:
    name = str(torch_dtype).removeprefix("torch.")
    for key, value in TORCH_DTYPES.items():
        if value == name:
            return key
    raise ValueError(f"no safetensors dtype for {torch_dtype}")


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor of the output, known by dtype and shape before its bytes exist.

    ``produce`` is called only when the writer reaches it, so at most one tensor is in memory; it returns the bytes,
    or yields them in pieces so that not even one whole tensor is (a resized embedding of a 128K vocabulary).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    produce: Callable[[], bytes | Iterable[bytes]]
    source: TensorEntry | None = None  # set for unchanged copies: copied file to file by the kernel

    @property
    def nbytes(self) -> int:
        n = DTYPE_SIZES[self.dtype]
        for d in self.shape:
            n *= d
        return n


def pieces(tensor: PlannedTensor) -> Iterator[bytes]:
    """The bytes ``tensor.produce`` gives, as pieces (one piece when it returns them whole)."""
    produced = tensor.produce()
    if isinstance(produced, bytes | bytearray | memoryview):
        yield bytes(produced)
    else:
        yield from produced


def copy_of(entry: TensorEntry, name: str | None = None) -> PlannedTensor:
    """An output tensor that is a byte-for-byte copy of an input tensor."""
    return PlannedTensor(name or entry.name, entry.dtype, entry.shape, lambda: read_bytes(entry), entry)


def shard(planned: Iterable[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for tensor in planned:
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def write_file(path: Path, tensors: list[PlannedTensor], metadata: dict[str, str] | None = None,
               on_tensor: Callable[[PlannedTensor], None] | None = None) -> None:
    """Write one safetensors file, streaming each tensor's bytes as it is produced, then fsync."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data buffer to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            if t.source is not None:
                f.flush()
                _copy_range(t.source, f.fileno())
            else:
                written = 0
                for piece in pieces(t):
                    f.write(piece)
                    written += len(piece)
                if written != t.nbytes:
                    raise RuntimeError(f"tensor {t.name} produced {written} bytes, expected {t.nbytes}")
            if on_tensor:
                on_tensor(t)
        f.flush()
        os.fsync(f.fileno())


def _copy_range(entry: TensorEntry, out_fd: int) -> None:
    """Append ``entry``'s bytes to ``out_fd`` without passing them through Python (copy_file_range)."""
    kernel_copy = hasattr(os, "copy_file_range")
    with open(entry.file, "rb") as src:
        offset, left = entry.start, entry.nbytes
        while left > 0:
            n = 0
            if kernel_copy:
                try:
                    n = os.copy_file_range(src.fileno(), out_fd, min(left, _COPY_CHUNK), offset)
                except OSError as e:
                    if e.errno not in _NO_KERNEL_COPY:
                        raise
                    kernel_copy = False  # e.g. across file systems on older kernels: copy through memory
                if n == 0:
                    kernel_copy = False  # some file systems copy nothing instead of failing: check by reading
            if not kernel_copy:
                src.seek(offset)
                data = src.read(min(left, _COPY_CHUNK))
                n = os.write(out_fd, data) if data else 0
            if n <= 0:
                raise BackboneSwapError(
                    f"{entry.file} ended while copying tensor {entry.name}", "The file is truncated"
                )
            offset += n
            left -= n


def write_checkpoint(folder: Path, tensors: list[PlannedTensor], max_shard_bytes: int,
                     on_tensor: Callable[[PlannedTensor], None] | None = None) -> list[str]:
    """Write ``model.safetensors``, or numbered shards with the index file ``from_pretrained`` expects."""
    shards = shard(tensors, max_shard_bytes)
    if len(shards) == 1:
        write_file(folder / "model.safetensors", shards[0], on_tensor=on_tensor)
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, part in zip(names, shards, strict=True):
        write_file(folder / name, part, on_tensor=on_tensor)
        weight_map.update({t.name: name for t in part})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """sha256 of a file read in chunks (weights can be tens of gigabytes)."""
    h = hashlib.sha256()
    for chunk in iter_chunks(path):
        h.update(chunk)
        if on_bytes:
            on_bytes(len(chunk))
    return h.hexdigest()


def iter_chunks(path: Path, chunk: int = _COPY_CHUNK) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while data := f.read(chunk):
            yield data
