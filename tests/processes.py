"""Killing a command in the middle of its work, as a crash or an impatient user would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil


def kill_once_written(command: list[str], marker: Path, *, env: dict[str, str] | None = None,
                      cwd: Path | None = None, timeout: float = 300) -> None:
    """Start ``command`` and SIGKILL it with every process under it as soon as ``marker`` exists.

    A launcher's workers are not in its process group (torch's elastic agent starts each in a session of its
    own), so the tree is walked: a worker left alive would go on writing into the folder being resumed.
    """
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + timeout
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    try:
        assert marker.exists(), f"the command never wrote {marker.name}"
    finally:
        _kill_tree(process)


def run_whole(command: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """``subprocess.run`` for a launcher: a run that outlasts ``timeout`` is stopped with its workers (left
    alive, they would slow every later test) and reported with the end of what it printed."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(process)
        stdout, stderr = process.communicate()
        raise AssertionError(f"{' '.join(command[:6])} ... did not end within {timeout} s; its output ended "
                             f"with:\n{stdout[-1500:]}\n{stderr[-3000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _kill_tree(process: subprocess.Popen) -> None:
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 60
    while (running := [member.pid for member in tree if _running(member)]) and time.time() < deadline:
        time.sleep(0.05)
    assert not running, f"processes {running} outlived SIGKILL"


def _running(member: psutil.Process) -> bool:
    # a killed worker whose new parent does not reap it stays a zombie: dead all the same
    try:
        return member.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def folder_held_elsewhere(folder: Path, what: str = "training run") -> Iterator[subprocess.Popen]:
    """Another process holds ``folder`` for a run (as a live run does) until the block ends; then it is killed."""
    code = ("import sys, time; from pathlib import Path; from backbone_swap.runs import held_by_this_run\n"
            "with held_by_this_run(Path(sys.argv[1]), sys.argv[2]):\n    print('held', flush=True); time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", code, str(folder), what], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait()
