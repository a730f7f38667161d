"""runs.py: atomic writes, the run folder's refusals, stage checkpoints that survive a kill at any point."""

import json
import os

import pytest
import torch
from accelerate import Accelerator

from earlybert.runs import (RunFolder, atomic_write_bytes, atomic_write_text, atomic_writer, find_checkpoint,
                            remove_checkpoint, save_checkpoint)


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "results.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as f:
            f.write("half of the new")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(target.parent) == ["results.json"]
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and oct(target.stat().st_mode & 0o777) == "0o644"


def test_run_folder_refusals_and_nothing_written_before_create(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        RunFolder(tmp_path / "file", resume=False, overwrite=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty; pass --resume"):
        RunFolder(tmp_path / "run", resume=False, overwrite=False)
    fresh = RunFolder(tmp_path / "new", resume=False, overwrite=False)
    assert not (tmp_path / "new").exists()  # checks only, until create()
    fresh.create().write_json("a.json", {"x": 1})
    assert fresh.read_json("a.json") == {"x": 1} and fresh.read_json("missing.json") is None


def test_checkpoints_swap_in_whole_and_a_kill_between_renames_is_recovered(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    accelerator.prepare(model)
    directory = tmp_path / "stage_checkpoint"
    assert find_checkpoint(directory) is None
    save_checkpoint(accelerator, directory, {"step": 1})
    save_checkpoint(accelerator, directory, {"step": 2})
    assert json.loads((find_checkpoint(directory) / "progress.json").read_text()) == {"step": 2}
    assert not directory.with_name(directory.name + ".old").exists()
    os.replace(directory, directory.with_name(directory.name + ".old"))  # killed after the first rename
    assert find_checkpoint(directory) == directory.with_name(directory.name + ".old")
    directory.with_name(directory.name + ".tmp").mkdir()  # and a half-written one: never chosen
    assert json.loads((find_checkpoint(directory) / "progress.json").read_text()) == {"step": 2}
    remove_checkpoint(directory, accelerator)
    assert find_checkpoint(directory) is None and list(tmp_path.iterdir()) == []


def test_a_checkpoint_waits_for_every_ranks_own_files_before_it_is_renamed_in(tmp_path):
    """Under torchrun each rank writes its own RNG state into the staging folder, and accelerate's save_state has
    no barrier at its end. Here a second rank's write lands when the next barrier releases, as a slower rank's
    would: the checkpoint must not be renamed in before that."""

    class TwoRanks:
        is_main_process = True
        pending: list = []

        def save_state(self, directory):
            os.makedirs(directory)
            (tmp_path / "ckpt.tmp" / "random_states_0.pkl").write_bytes(b"rank 0")
            self.pending.append(lambda: (tmp_path / "ckpt.tmp" / "random_states_1.pkl").write_bytes(b"rank 1"))

        def wait_for_everyone(self):
            while self.pending:
                self.pending.pop()()

    save_checkpoint(TwoRanks(), tmp_path / "ckpt", {"steps": 1})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["progress.json", "random_states_0.pkl",
                                                                      "random_states_1.pkl"]
    assert not (tmp_path / "ckpt.tmp").exists()
