"""Failures that say what to do: undecodable data, resuming nothing / a finished run / another run, wall time over
attempts, unknown pre-training presets, tokenizers that cannot be loaded, one log per distributed job."""

import gzip
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import pytest

from earlybert.cli import main
from earlybert.data import check_utf8

from conftest import write_sst2_like, write_tiny_encoder

FAST = ["--batch-size", "16", "--epochs", "1", "--earlybert-epochs", "1", "--search-max-steps", "2",
        "--max-train-samples", "32", "--max-eval-samples", "16", "--checkpoint-every", "0"]


def finetune_args(encoder, data, out, *extra):
    return ["finetune", "--model", str(encoder), "--task", "sst2", "--data", str(data), "--output", str(out),
            *FAST, *extra]


def error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def hashes(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- data that is not UTF-8 text -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["latin-1", "gzip", "binary"])
def test_data_file_that_is_not_utf8_names_the_file_and_byte(kind, tiny_encoder, tmp_path, capsys):
    data = write_sst2_like(tmp_path / "glue")
    train = data / "SST-2" / "train.tsv"
    text = train.read_text()
    if kind == "latin-1":
        content = ("sentence\tlabel\nun film très bon \t1\n" + text.split("\n", 1)[1]).encode("latin-1")
        byte = len(b"sentence\tlabel\nun film tr")  # the 0xe8 of "è", not a valid UTF-8 byte there
    elif kind == "gzip":
        content, byte = gzip.compress(text.encode(), mtime=0), 1  # 0x1f is ASCII, 0x8b is not
    else:
        content, byte = bytes(range(256)), 128
    train.write_bytes(content)
    assert content[:byte].decode("utf-8") is not None  # everything before the named byte decodes
    line = error_line(capsys, finetune_args(tiny_encoder, data, tmp_path / "out"))
    assert line == (f"earlybert: error: data file {train} is not UTF-8 text (byte {byte}); "
                    "save it as UTF-8 (decompress it first if it is compressed)")
    assert not (tmp_path / "out").exists()


def test_utf8_check_counts_bytes_across_blocks_and_at_the_end(tmp_path):
    path = tmp_path / "big.jsonl"
    head = b"a" * ((1 << 20) - 1) + "é".encode()  # a two-byte character split by the 1 MiB block boundary
    path.write_bytes(head + b"\xff" + b"z")
    with pytest.raises(ValueError, match=rf"is not UTF-8 text \(byte {len(head)}\)"):
        check_utf8(path)
    path.write_bytes(head + b"ok\n")
    check_utf8(path)
    path.write_bytes(b"ok" + "é".encode()[:1])  # cut inside the last character
    with pytest.raises(ValueError, match=r"is not UTF-8 text \(byte 2\); it ends inside a character"):
        check_utf8(path)


def test_user_jsonl_and_squad_files_that_are_not_utf8(tiny_encoder, tmp_path, capsys):
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_bytes('{"text": "très bon", "label": 1}\n'.encode("latin-1"))
    dev.write_text('{"text": "good", "label": 1}\n')
    line = error_line(capsys, ["finetune", "--model", str(tiny_encoder), "--train-file", str(train),
                               "--validation-file", str(dev), "--text-columns", "text", "--output", str(tmp_path / "o")])
    assert line.startswith(f"earlybert: error: data file {train} is not UTF-8 text (byte 12)")  # {"text": "tr
    squad = tmp_path / "squad"
    squad.mkdir()
    (squad / "train-v1.1.json").write_bytes(gzip.compress(b'{"data": []}'))
    (squad / "dev-v1.1.json").write_text('{"data": []}')
    line = error_line(capsys, ["finetune", "--model", str(tiny_encoder), "--task", "squad", "--data", str(squad),
                               "--max-length", "64", "--doc-stride", "16", "--output", str(tmp_path / "o")])
    assert line.startswith(f"earlybert: error: data file {squad / 'train-v1.1.json'} is not UTF-8 text (byte 1)")


# -- resuming --------------------------------------------------------------------------------------------------


def test_resume_with_nothing_to_resume_starts_a_new_run_and_says_so(tiny_encoder, glue_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    missing = tmp_path / "missing"
    assert main(finetune_args(tiny_encoder, glue_dir, missing, "--resume")) == 0
    assert f"nothing to resume in {missing} (no such folder); starting a new run" in caplog.messages
    assert (missing / "results.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    caplog.clear()
    assert main(finetune_args(tiny_encoder, glue_dir, empty, "--resume")) == 0
    assert f"nothing to resume in {empty} (empty folder); starting a new run" in caplog.messages


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    encoder, data = write_tiny_encoder(root / "encoder"), write_sst2_like(root / "glue")
    assert main(finetune_args(encoder, data, root / "run")) == 0
    return encoder, data, root / "run"


def test_resume_of_a_finished_run_rewrites_nothing(finished_run, tmp_path, caplog, capsys):
    encoder, data, run = finished_run
    before = hashes(run)
    mtimes = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    caplog.set_level(logging.INFO)
    capsys.readouterr()
    assert main(finetune_args(encoder, data, run, "--resume")) == 0
    assert f"run {run} already finished; nothing was rerun or rewritten (--overwrite runs it again)" in caplog.messages
    assert not any("stage:" in m for m in caplog.messages)  # nothing retrained
    assert hashes(run) == before and {p: p.stat().st_mtime_ns for p in run.rglob("*")} == mtimes
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"] == json.loads((run / "results.json").read_text())["metrics"]


def test_resume_mismatch_names_the_settings_and_a_moved_run_resumes(finished_run, tmp_path, capsys, caplog):
    encoder, data, run = finished_run
    before = hashes(run)
    line = error_line(capsys, finetune_args(encoder, data, run, "--resume", "--lr", "1e-3", "--seed", "7",
                                            "--head-count", "1"))
    assert line == (f"earlybert: error: run folder {run} was started with other settings: lr 2e-05 in the run, "
                    "0.001 now; seed 42 in the run, 7 now; ticket.head_ratio 0.3333333333333333 in the run, None now; "
                    "ticket.head_count None in the run, 1 now; resume with the run's own settings (its config.json) "
                    "or use a new --output")
    assert hashes(run) == before
    # A copy of the run folder elsewhere is the same run: finished as it is ...
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run, moved)
    caplog.set_level(logging.INFO)
    assert main(finetune_args(encoder, data, moved, "--resume")) == 0
    assert f"run {moved} already finished; nothing was rerun or rewritten (--overwrite runs it again)" in caplog.messages
    # ... and, as a run killed before its end, it continues there: the search is kept, the rest is done again.
    for name in ("results.json", "report.md"):
        (moved / name).unlink()
    shutil.rmtree(moved / "model")
    # The killed attempt's time, as its heartbeat left it: 1000 s on top of the first attempt.
    attempts = json.loads((moved / "attempts.json").read_text())["attempts_s"]
    (moved / "attempts.json").write_text(json.dumps({"attempts_s": [*attempts, 1000.0]}))
    caplog.clear()
    assert main(finetune_args(encoder, data, moved, "--resume")) == 0
    assert "stage: search (gates + L1, early-bird stop)" not in caplog.messages
    results = json.loads((moved / "results.json").read_text())
    assert results["stages"]["search"] == json.loads((run / "results.json").read_text())["stages"]["search"]
    recorded = json.loads((moved / "attempts.json").read_text())["attempts_s"]
    assert len(recorded) == len(attempts) + 2 and recorded[-2] == 1000.0
    assert results["wall_time_s"] == pytest.approx(sum(recorded))
    assert 1000 + attempts[0] < results["wall_time_s"] < 1000 + attempts[0] + 120


def test_wall_clock_heartbeat_keeps_a_killed_attempts_time(tmp_path):
    from earlybert.runs import RunFolder, WallClock

    folder = RunFolder(tmp_path / "run", resume=False, overwrite=False).create()
    folder.write_json(WallClock.FILE, {"attempts_s": [3.0]})
    clock = WallClock(folder, every_s=0.05).begin()
    time.sleep(0.3)
    beat = json.loads((folder.path / WallClock.FILE).read_text())["attempts_s"]
    assert beat[0] == 3.0 and 0.1 < beat[1] < 1.0  # written while running, without any call: survives a kill -9
    total = clock.stop()
    assert total == pytest.approx(sum(json.loads((folder.path / WallClock.FILE).read_text())["attempts_s"]))


# -- pre-training presets and tokenizers -------------------------------------------------------------------------


def test_pretrain_unknown_config_lists_presets_without_the_hub(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("some words\n")
    start = time.perf_counter()
    # A hub-style tokenizer name as well: were it looked up first, an offline machine would retry for a minute.
    line = error_line(capsys, ["pretrain", "--config", "bert-nano", "--tokenizer", "nobody/no-such-tokenizer",
                               "--text", str(text), "--output", str(tmp_path / "o")])
    assert time.perf_counter() - start < 10
    assert line == ("earlybert: error: unknown config 'bert-nano': choose a preset (bert-base, bert-large, bert-small, "
                    "bert-mini, bert-tiny, bert-l2-h256-a8) "
                    "or give a config.json or model folder that exists")
    assert not (tmp_path / "o").exists()


def test_tokenizer_that_cannot_be_loaded_gets_one_complete_line(tiny_encoder, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("some words\n")

    def pretrain_line(tokenizer):
        return error_line(capsys, ["pretrain", "--config", "bert-small", "--tokenizer", str(tokenizer), "--text",
                                   str(text), "--output", str(tmp_path / "o")])

    empty = tmp_path / "empty"
    empty.mkdir()
    assert pretrain_line(empty) == (
        f"earlybert: error: cannot load a tokenizer from '{empty}': the folder has none of tokenizer.json, "
        "tokenizer_config.json, vocab.txt, vocab.json, spiece.model, sentencepiece.bpe.model; give the folder or "
        "hub name of the model's tokenizer")
    assert pretrain_line(tmp_path / "nowhere") == (
        f"earlybert: error: cannot load a tokenizer from '{tmp_path / 'nowhere'}': no such folder")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_encoder, broken)
    (broken / "tokenizer.json").write_text("{not json")
    (broken / "vocab.txt").unlink(missing_ok=True)
    line = pretrain_line(broken)
    assert line.startswith(f"earlybert: error: cannot load a tokenizer from '{broken}': ")
    # transformers' own message, whole: its list of what it tried and its advice, not just "... from one of:"
    assert not line.rstrip().endswith(":") and len(line) > len(f"earlybert: error: cannot load a tokenizer from '{broken}': ") + 40
    assert not (tmp_path / "o").exists()


# -- distributed: one log, one result --------------------------------------------------------------------------


def test_under_torchrun_only_the_main_process_prints(tmp_path):
    encoder = write_tiny_encoder(tmp_path / "encoder")
    data = write_sst2_like(tmp_path / "glue")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29537", "-m", "earlybert", *finetune_args(encoder, data, tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count('"metrics"') == 1  # the result summary, once
    assert done.stderr.count("stage: evaluate") == 1 and done.stderr.count("done: earlybert") == 1


def test_model_path_that_does_not_exist_is_named_as_a_missing_folder(tmp_path, capsys):
    """A local path with a typo is not a hub id: one line saying the folder is missing, not transformers' repo-id
    rules (which is what AutoConfig says about a name it cannot find on disk)."""
    for command in (["inspect", str(tmp_path / "nowhere")],
                    ["finetune", "--model", str(tmp_path / "nowhere"), "--task", "sst2", "--data", str(tmp_path),
                     "--output", str(tmp_path / "o")]):
        assert error_line(capsys, command) == (
            f"earlybert: error: cannot load a model from '{tmp_path / 'nowhere'}': no such folder")
    assert not (tmp_path / "o").exists()


def test_compare_with_a_negative_slice_says_so_before_writing(tiny_encoder, glue_dir, tmp_path, capsys):
    line = error_line(capsys, ["compare", "--model", str(tiny_encoder), "--task", "sst2", "--data", str(glue_dir),
                               "--output", str(tmp_path / "cmp"), "--slice", "-1"])
    assert line == "earlybert: error: slice_steps (--slice) must be >= 0, got -1"
    assert not (tmp_path / "cmp").exists()
