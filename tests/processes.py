"""Killing a command in the middle of its work, as a crash or an impatient user would."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_once_written(command: list[str], marker: Path, *, env: dict[str, str] | None = None,
                      cwd: Path | None = None, timeout: float = 300) -> None:
    """Start ``command`` in its own process group and SIGKILL the whole group as soon as ``marker`` exists."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + timeout
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    try:
        assert marker.exists(), f"the command never wrote {marker.name}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
