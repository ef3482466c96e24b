"""Run folders: where every command writes, and how it writes there.

A command's output folder holds one run and nothing else, is written by one run at a time, and is only continued
by the same run (the same inputs). ``RunFolder`` checks all three before anything is written, with the same words
for every command. Every file in it is written atomically (a temporary file in the same folder, then a rename), and
whole folders (a transplant, an export) are built in a hidden sibling and renamed into place when complete, so a
crash or a full disk never leaves half an output where a reader or a resumed run would take it for a whole one.
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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import backbone_swap
from backbone_swap.errors import BackboneSwapError

LOCK_NAME = ".lock"

# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_as_created(path: Path | str, *, folder: bool = False) -> None:
    """Give a file or folder made by ``tempfile`` (private: 0600 / 0700) the mode a plain ``open`` or ``mkdir``
    would have given it under the user's umask, so outputs renamed into place are as readable as any other."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; renamed over ``path`` when the block succeeds and
    removed when it fails. The name is this call's own, so processes writing the same file never share one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        share_as_created(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (fsync before the rename)."""
    path = Path(path)
    with _replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, so readers never see half a file."""
    write_bytes(Path(path), (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8"))


def write_lines(path: Path, records: list[dict[str, Any]]) -> None:
    """Write JSON lines atomically: a per-item answer file rewritten (repaired or merged) in one step."""
    write_bytes(Path(path), "".join(json.dumps(record) + "\n" for record in records).encode("utf-8"))


def write_safetensors(path: Path, tensors: Mapping[str, Any]) -> None:
    """Write torch tensors as a safetensors file atomically (trained weights, cached features, hidden states)."""
    from safetensors.torch import save_file

    with _replacing(Path(path)) as tmp:
        save_file(dict(tensors), tmp)


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


def nearest_existing(path: Path) -> Path:
    """``path``, or the nearest folder above it that exists: where a file system is asked about a path to be."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free space on the file system ``path`` is (or will be) on."""
    return shutil.disk_usage(nearest_existing(path)).free


# --------------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------------


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


def resolved(path: str | Path | None) -> str | None:
    """A path as a manifest records it: absolute, with ``~`` expanded and links followed, so the record means
    the same folder wherever it is read from (a path as typed is relative to wherever the command ran)."""
    return None if path is None else str(Path(path).expanduser().resolve())


def step_record(step: str, **fields: Any) -> dict[str, Any]:
    """A manifest: what ran, with which versions, and the fields the step adds (inputs, hashes, timings)."""
    return {"step": step, "versions": versions(), **fields}


def read_json(path: Path) -> Any:
    """A JSON file of ours, or None when it is missing or unreadable (a run stopped while writing it)."""
    with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
        return json.loads(Path(path).read_text(encoding="utf-8"))
    return None


# --------------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One kind of run folder, and the words its refusals use."""

    name: str  # what the lock file and its refusal call a run of this kind: "another training run (process ...)"
    markers: tuple[str, ...]  # files or folders that only a run of this kind writes: any present makes it ours
    field: str | None = None  # a key the marker file (JSON) must hold, with ``value``, to be ours
    value: str | None = None
    foreign: str = ""  # the refusal of a folder of other files, ``{path}`` filled in
    other_inputs: str = ""  # what a folder of this kind made from other inputs holds, for the refusal


TRANSPLANT = Kind("transplant", ())  # built whole in a staged folder: replaced with --overwrite, never continued
TRAINING = Kind("training run", ("manifest.json",), "step", "train",
                foreign="{path} already exists and holds other files, not a training run",
                other_inputs="a training run on another model, data or recipe")
EVALUATION = Kind("evaluation", ("evaluated.json",),
                  foreign="{path} already exists and holds other files, not evaluation results",
                  other_inputs="answers of another model or suite")
COMPARISON = Kind("comparison", ("report.json", "eval"),
                  foreign="{path} already exists and holds other files, not a comparison")
UPGRADE = Kind("upgrade run", ("manifest.json",), "command", "upgrade",
               foreign="{path} already exists and holds other files, not an upgrade run",
               other_inputs="an upgrade run with other inputs")
DEMO = Kind("demo", ("demo.json",), foreign="{path} exists and is not a demo folder",
            other_inputs="a demo made with other settings")


class RunFolder:
    """The output folder of one run: refused when it holds something else, held while the run writes, and
    continued only by a run of the same inputs.

    ``inputs`` names the folders the run reads (``[("model folder", path)]``): an output inside, around or equal to
    one of them would overwrite what it reads.
    """

    def __init__(self, path: Path | str, kind: Kind, *, inputs: Iterable[tuple[str, Path | str]] = ()) -> None:
        self.path = Path(path).expanduser()
        self.kind = kind
        if self.path.exists() and not self.path.is_dir():
            raise BackboneSwapError(f"{self.path} exists and is not a folder", "Choose another --output")
        resolved = self.path.resolve()
        for label, item in inputs:
            item = Path(item).expanduser().resolve()
            if resolved == item or item in resolved.parents or resolved in item.parents:
                raise BackboneSwapError(f"the output folder {self.path} overlaps the {label} {item}",
                                        f"Choose an output folder outside the {label}")

    # -- what is there ---------------------------------------------------------------------------------
    def is_empty(self) -> bool:
        """No file of any run: hidden names (the lock, the partial files of a stopped run) do not count."""
        return not self.path.exists() or not any(not p.name.startswith(".") for p in self.path.iterdir())

    def previous(self) -> dict[str, Any] | None:
        """The marker record of the run already in the folder (``{}`` for a marker that is no JSON file), or None
        when the folder is new or empty. A folder of other files is refused: a run would overwrite or delete them.
        """
        if self.is_empty():
            return None
        for marker in self.kind.markers:
            path = self.path / marker
            if not path.exists():
                continue
            if path.is_dir() or not marker.endswith(".json"):
                return {}
            record = read_json(path)
            if isinstance(record, dict) and (self.kind.field is None
                                             or record.get(self.kind.field) == self.kind.value):
                return record
        raise BackboneSwapError(self.kind.foreign.format(path=self.path), "Choose another --output, or an empty folder")

    def refuse_changed(self, recorded: Mapping[str, Any], identity: Mapping[str, Any], hint: str) -> None:
        """Refuse to continue a run whose recorded inputs differ from this one's. A key the record lacks (a run of
        an older version) counts as the same; a key only the record has counts as changed."""
        changed = sorted(key for key in identity.keys() | recorded.keys()
                         if recorded.get(key, identity.get(key)) != identity.get(key))
        if changed:
            raise BackboneSwapError(f"{self.path} holds {self.kind.other_inputs} ({', '.join(changed)} differ)", hint)

    # -- who writes it -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def hold(self, state: Any = None) -> Iterator[RunFolder]:
        """Refuse to write the folder while another run writes it, and hold it for this run until the block ends.

        Two runs in one folder (a job submitted twice, or the workers of a launcher killed with SIGKILL: torch
        starts them in sessions of their own, so they go on training) would overwrite each other's checkpoints
        and answers. The main process holds an advisory lock (``flock``) on ``.lock``; the kernel drops it when
        the process ends, however it ends, so a crash never leaves a folder locked. With ``state`` (accelerate's
        ``PartialState`` or ``Accelerator``) the other processes of a multi-process run learn the outcome from
        the main one, so all of them stop together. A file system without locks is written without one.
        """
        from backbone_swap.training.schemes import stop_together

        handle = None
        refusal = None
        if state is None or state.is_main_process:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                handle, holder = _lock(self.path / LOCK_NAME, self.kind.name)
            except OSError as e:
                refusal = (f"{self.path} cannot be written ({e.strerror or e})",
                           "Choose another --output, or fix the folder's permissions")
            else:
                if holder is not None:
                    refusal = (f"{self.path} is being written by {holder}",
                               "Wait for that run to end, or stop it and every worker process it started (they "
                               "outlive a launcher killed with SIGKILL), then run again; if no such process runs any "
                               f"more (a machine that crashed, on NFS), delete {self.path / LOCK_NAME}")
        stop_together(refusal, state)
        try:
            yield self
        finally:
            if handle is not None:
                handle.close()  # releases the lock

    # -- writing -----------------------------------------------------------------------------------------
    def write_json(self, name: str, data: Any) -> Path:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data)
        return path


def held_by_this_run(folder: Path, what: str, state: Any = None) -> contextlib.AbstractContextManager[RunFolder]:
    """Hold ``folder`` for a run called ``what`` (``RunFolder.hold``), for code that writes a folder of no command's
    kind."""
    return RunFolder(folder, Kind(what, ())).hold(state)


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
