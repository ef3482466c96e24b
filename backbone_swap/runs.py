"""Writing results so that a crash or a full disk never leaves a half-written output in place.

Every output folder is built in a hidden sibling folder and renamed into place only when complete; a
previous output of the same name survives until the new one is whole.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import backbone_swap
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
    write_bytes(Path(path), (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and a rename; readers never see a partial file (the
    temporary name is this call's own, so processes writing the same file never share one)."""
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


def nearest_existing(path: Path) -> Path:
    """``path``, or the nearest folder above it that exists: where a file system is asked about a path to be."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free space on the file system ``path`` is (or will be) on."""
    return shutil.disk_usage(nearest_existing(path)).free


LOCK_NAME = ".lock"


@contextlib.contextmanager
def held_by_this_run(folder: Path, what: str, state: Any = None) -> Iterator[None]:
    """Refuse to write ``folder`` while another run writes it, and hold it for this run until the block ends.

    Two runs in one folder (a job submitted twice, or the workers of a launcher killed with SIGKILL: torch
    starts them in sessions of their own, so they go on training) would overwrite each other's checkpoints and
    answers. The main process holds an advisory lock (``flock``) on ``folder/.lock``; the kernel drops it when
    the process ends, however it ends, so a crash never leaves a folder locked. With ``state`` (accelerate's
    ``PartialState`` or ``Accelerator``) the other processes of a multi-process run learn the outcome from the
    main one, so all of them stop together. A file system without locks (some parallel file systems) is
    written without one.
    """
    from backbone_swap.training.schemes import stop_together

    handle = None
    refusal = None
    if folder.exists() and not folder.is_dir():
        raise BackboneSwapError(f"{folder} exists and is not a folder", "Choose another --output")
    if state is None or state.is_main_process:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle, holder = _lock(folder / LOCK_NAME, what)
        except OSError as e:
            refusal = (f"{folder} cannot be written ({e.strerror or e})",
                       "Choose another --output, or fix the folder's permissions")
        else:
            if holder is not None:
                refusal = (f"{folder} is being written by {holder}",
                           "Wait for that run to end, or stop it and every worker process it started (they outlive a "
                           "launcher killed with SIGKILL), then run again; if no such process runs any more (a "
                           f"machine that crashed, on NFS), delete {folder / LOCK_NAME}")
    stop_together(refusal, state)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def _lock(path: Path, what: str) -> tuple[Any, str | None]:
    """(the open lock file, None) when this process now holds ``path``; (None, which run holds it) when another
    does; (None, None) where there is no lock to take (no flock, or a folder this user may only read: a
    finished evaluation read again needs no lock, and a run that writes there fails on its first file)."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform
        return None, None
    try:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run's duration
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return None, None
        raise
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            handle.close()
            return None, None  # the file system has no locks
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        return None, holder or "another run (a process still running)"
    handle.seek(0)
    handle.truncate()
    handle.write(f"another {what} (process {os.getpid()} on {socket.gethostname()})\n")
    handle.flush()
    return handle, None


def previous_manifest(output: Path, field: str, value: str, what: str) -> dict[str, Any] | None:
    """The ``manifest.json`` of the run already in ``output`` (None: the folder is new or empty).

    Refuses an output that is a file, and a folder whose manifest does not say ``field: value``: it holds
    other files, which a run would overwrite or delete. ``what`` names the run in the message.
    """
    if output.exists() and not output.is_dir():
        raise BackboneSwapError(f"{output} exists and is not a folder", "Choose another --output")
    if not output.exists() or not any(p.name != LOCK_NAME for p in output.iterdir()):
        return None
    previous = None
    with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
        previous = json.loads((output / "manifest.json").read_text(encoding="utf-8"))
    if not isinstance(previous, dict) or previous.get(field) != value:
        raise BackboneSwapError(f"{output} already exists and holds other files, not {what}",
                                "Choose another --output, or an empty folder")
    return previous


def versions() -> dict[str, str]:
    """The versions a run used: written into every manifest, so a result names what produced it."""
    found = {"backbone-swap": backbone_swap.__version__, "python": sys.version.split()[0]}
    for package in ("torch", "transformers", "tokenizers", "safetensors", "peft", "accelerate"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    found["platform"] = platform.platform()
    return found


def step_record(step: str, **fields: Any) -> dict[str, Any]:
    return {"step": step, "versions": versions(), **fields}
