"""Progress as a log file shows it: plain lines at the start, every few minutes and at the end, labelled by side."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from backbone_swap.progress import Ticker, fmt_rate, labelled


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _log() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, width=300, color_system=None), text


def test_a_log_gets_a_line_at_the_start_every_interval_and_at_the_end():
    clock, (out, text) = Clock(), _log()
    with labelled("new"), Ticker("train stage2", 100, unit="steps", every=120, clock=clock, out=out) as ticker:
        ticker.resume_at(20)  # 20 steps done by an earlier start: shown, but left out of the rate
        for step in range(21, 41):
            clock.now += 10
            ticker.update(step, info="loss 1.2345")
    lines = text.getvalue().splitlines()
    # 20 updates of 10 s: one line 120 s after the start, then the end
    assert lines == [
        "[new] train stage2: 20/100 steps (20%)",
        "[new] train stage2: 32/100 steps (32%), loss 1.2345, 0.1 steps/s, about 11 minutes left",
        "[new] train stage2: 40/100 steps (40%), loss 1.2345, 0.1 steps/s, took 3.3 minutes",
    ]
    assert "\x1b" not in text.getvalue()


def test_an_interrupted_ticker_writes_no_end_line_and_labels_nest():
    clock, (out, text) = Clock(), _log()
    with pytest.raises(KeyboardInterrupt), Ticker("eval m", 10, every=60, clock=clock, out=out) as ticker:
        ticker.resume_at(0)
        raise KeyboardInterrupt
    assert text.getvalue().splitlines() == ["eval m: 0/10 items (0%)"]
    with labelled("old"):
        with labelled("new"):
            assert Ticker("x", 1, show=False).description == "[new] x"
        assert Ticker("x", 1, show=False).description == "[old] x"
    assert Ticker("x", 1, show=False).description == "x"


@pytest.mark.parametrize(("rate", "shown"), [(0.0312, "0.0312 samples/s"), (3.14159, "3.14 samples/s"),
                                             (250.4, "250 samples/s"), (12345.6, "12,346 samples/s"),
                                             (0.0, "- samples/s")])
def test_a_slow_rate_never_reads_as_zero(rate, shown):
    assert fmt_rate(rate, "samples") == shown


def test_eval_redirected_to_a_file_logs_plain_lines_and_says_what_it_reused(transplanted, suite_file, tmp_path):
    out = tmp_path / "ev"
    env = {**os.environ, "BACKBONE_SWAP_PROGRESS_EVERY": "0"}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    args = [sys.executable, "-m", "backbone_swap.cli", "eval", str(transplanted["mistral"]), "--suite",
            str(suite_file), "-o", str(out), "--batch-size", "4"]
    first = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    total = sum(len(path.read_text().splitlines()) for path in out.glob("*.jsonl"))
    lines = first.stderr.splitlines()
    assert "Loading weights" not in first.stderr and "\x1b[" not in first.stderr and "\r" not in first.stderr
    assert f"eval mistral: 0/{total} items (0%)" in lines, lines
    assert any(line.startswith(f"eval mistral: {total}/{total} items (100%)") and "took" in line for line in lines)
    # a stopped evaluation: the answers of one task kept, the rest to do again
    kept = next(iter(sorted(out.glob("*.jsonl"))))
    done = len(kept.read_text().splitlines())
    for path in out.glob("*.jsonl"):
        if path != kept:
            path.unlink()
    (out / "manifest.json").unlink()
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"eval mistral: {done} of {total} answers from an earlier start reused" in again.stderr
    assert f"eval mistral: {done}/{total} items" in again.stderr
    assert sum(len(p.read_text().splitlines()) for p in out.glob("*.jsonl")) == total
    assert json.loads((out / "manifest.json").read_text())["tasks"]


def test_ctrl_c_says_how_to_resume_shows_the_cursor_again_and_exits_130(tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(
        "import os, signal, sys, threading\n"
        "from backbone_swap import cli\n"
        "from backbone_swap.checkpoints import folder\n"
        "from backbone_swap.progress import Ticker\n"
        # Python's own Ctrl-C handler, as on a terminal: a shell starting the tests in the background ignores SIGINT
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "def slow(*args, **kwargs):\n"
        "    ticker = Ticker('eval x', 10)\n"
        "    ticker.update(3)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    threading.Event().wait(30)\n"
        "folder.open_checkpoint = slow\n"
        "cli.main(['inspect', sys.argv[1]])\n"
    )
    env = {**os.environ, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}  # rich draws a live bar, as on a terminal
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "\x1b[?25l" in result.stderr  # the bar hid the cursor...
    assert result.stderr.rstrip().endswith("interrupted: run the same command to resume")
    assert result.stderr.rindex("\x1b[?25h") > result.stderr.rindex("\x1b[?25l")  # ...and it is shown again
    assert "Traceback" not in result.stderr
