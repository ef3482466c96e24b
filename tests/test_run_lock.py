"""One run per output folder: a second run into a folder another run is writing is refused in one line."""

from __future__ import annotations

import os
import signal

import pytest
from processes import folder_held_elsewhere

from backbone_swap.errors import BackboneSwapError
from backbone_swap.runs import held_by_this_run


def test_a_folder_is_held_by_one_run_at_a_time(tmp_path):
    folder = tmp_path / "run"
    refusal = rf"being written by another training run \(process {os.getpid()} on "  # the holder's kind
    with (held_by_this_run(folder, "training run"), pytest.raises(BackboneSwapError, match=refusal),
          held_by_this_run(folder, "evaluation")):
        pass
    with held_by_this_run(folder, "training run"):  # released when the block ends
        pass
    assert [p.name for p in folder.iterdir()] == [".lock"]


def test_the_lock_of_a_killed_run_is_gone_with_it(tmp_path):
    folder = tmp_path / "run"
    with folder_held_elsewhere(folder) as holder:
        with pytest.raises(BackboneSwapError, match=f"process {holder.pid} on"), held_by_this_run(folder, "x"):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        with held_by_this_run(folder, "training run"):  # SIGKILL leaves nothing to clean up
            pass


def test_a_file_is_not_taken_for_a_folder(tmp_path):
    (tmp_path / "run").write_text("notes")
    with pytest.raises(BackboneSwapError, match="is not a folder"), held_by_this_run(tmp_path / "run", "x"):
        pass
    assert (tmp_path / "run").read_text() == "notes"


def test_train_refuses_a_folder_another_run_is_writing(cli, transplanted, colour_data, tmp_path):
    run = tmp_path / "run"
    with folder_held_elsewhere(run) as holder:
        result = cli("train", transplanted["mistral"], "--recipe", "tiny-cpu", "--data", colour_data["train"],
                     "--image-root", colour_data["root"], "-o", run, "--resume")
    assert result.code == 1
    assert f"{run} is being written by another training run (process {holder.pid} on" in result.err
    assert "Traceback" not in result.err
    assert [p.name for p in run.iterdir()] == [".lock"]  # nothing written


def test_eval_refuses_a_folder_another_run_is_writing(cli, transplanted, suite_file, tmp_path):
    out = tmp_path / "eval"
    with folder_held_elsewhere(out, "evaluation"):
        result = cli("eval", transplanted["mistral"], "--suite", suite_file, "-o", out)
    assert result.code == 1
    assert "is being written by another evaluation" in result.err and "Traceback" not in result.err
    assert [p.name for p in out.iterdir()] == [".lock"]
    result = cli("eval", transplanted["mistral"], "--suite", suite_file, "-o", out, "--batch-size", "6")
    assert result.code == 0, result.err  # once that run is gone, the folder is free
    assert (out / "manifest.json").is_file()
