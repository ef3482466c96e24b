"""Writing results so that a crash or a full disk never leaves a half-written output in place.

Every output folder is built in a hidden sibling folder and renamed into place only when complete; a
previous output of the same name survives until the new one is whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from backbone_swap.errors import BackboneSwapError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_as_created(path: Path | str, *, folder: bool = False) -> None:
    """Give a file or folder made by ``tempfile`` (private: 0600 / 0700) the mode a plain ``open`` or ``mkdir``
    would have given it under the user's umask, so outputs renamed into place are as readable as any other."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def check_output_dir(output: Path, inputs: Iterable[Path], *, overwrite: bool) -> Path:
    """Refuse an output that exists (without ``overwrite``) or that lies inside or over an input."""
    output = Path(output).expanduser().resolve()
    for item in inputs:
        item = Path(item).expanduser().resolve()
        if output == item or item in output.parents or output in item.parents:
            raise BackboneSwapError(
                f"the output folder {output} overlaps the input {item}",
                "Choose an output folder outside the input folders",
            )
    if output.exists() and not overwrite:
        raise BackboneSwapError(f"{output} already exists", "Choose another --output, or pass --overwrite")
    if output.exists() and not output.is_dir():
        raise BackboneSwapError(f"{output} exists and is not a folder", "Choose another --output")
    return output


@contextlib.contextmanager
def staged_dir(output: Path) -> Iterator[Path]:
    """Yield an empty folder next to ``output``; on success it replaces ``output`` in one rename."""
    output.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        share_as_created(stage, folder=True)
        yield stage
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
            os.replace(output, old / output.name)
            try:
                os.replace(stage, output)
            except OSError:
                os.replace(old / output.name, output)  # put the previous output back before giving up
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, output)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    # a temporary name of its own, so that processes writing the same file never share one
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                     suffix=".tmp", delete=False) as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    share_as_created(f.name)
    os.replace(f.name, path)


def write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and a rename; readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        share_as_created(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def previous_manifest(output: Path, field: str, value: str, what: str) -> dict[str, Any] | None:
    """The ``manifest.json`` of the run already in ``output`` (None: the folder is new or empty).

    Refuses an output that is a file, and a folder whose manifest does not say ``field: value``: it holds
    other files, which a run would overwrite or delete. ``what`` names the run in the message.
    """
    if output.exists() and not output.is_dir():
        raise BackboneSwapError(f"{output} exists and is not a folder", "Choose another --output")
    if not output.exists() or not any(output.iterdir()):
        return None
    previous = None
    with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
        previous = json.loads((output / "manifest.json").read_text(encoding="utf-8"))
    if not isinstance(previous, dict) or previous.get(field) != value:
        raise BackboneSwapError(f"{output} already exists and holds other files, not {what}",
                                "Choose another --output, or an empty folder")
    return previous
