"""Bad input through the CLI: one clear line on stderr, exit status 2, nothing earlier lost."""

import json

import pytest

from earlybert.cli import main

from conftest import write_tiny_encoder


@pytest.fixture
def run(capsys):
    def _run(*argv):
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.err.strip().splitlines()[-1] if captured.err.strip() else ""

    return _run


def base_args(encoder, data, out):
    return ["finetune", "--model", str(encoder), "--task", "sst2", "--data", str(data), "--output", str(out),
            "--batch-size", "8", "--epochs", "1", "--earlybert-epochs", "1"]


def expect_error(run, argv, fragment):
    code, line = run(*argv)
    assert code == 2, line
    assert line.startswith("earlybert: error:") and fragment in line, line


def test_missing_empty_and_malformed_files(run, tiny_encoder, tmp_path):
    out = tmp_path / "out"
    expect_error(run, base_args(tiny_encoder, tmp_path / "nowhere", out), "does not exist")
    task = tmp_path / "glue" / "SST-2"
    task.mkdir(parents=True)
    (task / "train.tsv").write_text("")
    (task / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    expect_error(run, base_args(tiny_encoder, tmp_path / "glue", out), "is empty")
    (task / "train.tsv").write_text("sentence\tlabel\n")
    expect_error(run, base_args(tiny_encoder, tmp_path / "glue", out), "has no rows")
    (task / "train.tsv").write_text("text\tlabel\ngood\t1\n")
    expect_error(run, base_args(tiny_encoder, tmp_path / "glue", out), "has no column 'sentence' (columns: text, label)")
    (task / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t7\n")
    expect_error(run, base_args(tiny_encoder, tmp_path / "glue", out), "row 2: label '7' is not one of ['0', '1']")
    (task / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    expect_error(run, base_args(tiny_encoder, tmp_path / "glue", out), "line 3: 3 fields, expected 2")
    assert not out.exists()


def test_unknown_task_ratio_architecture_and_tokenizer(run, tiny_encoder, glue_dir, tmp_path):
    out = tmp_path / "out"
    args = base_args(tiny_encoder, glue_dir, out)
    expect_error(run, [*args[:4], "boolq", *args[5:]], "unknown task 'boolq'")
    expect_error(run, [*args, "--ffn-ratio", "1.2"], "ffn_ratio must be in [0, 1)")
    expect_error(run, [*args, "--head-count", "4"], "cannot prune 4 of 4 heads")
    expect_error(run, [*args, "--method", "earlybert", "--max-length", "4096"], "exceeds the model's 128 position")
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    expect_error(run, ["finetune", "--model", str(tmp_path / "gpt2"), "--task", "sst2", "--data", str(glue_dir),
                       "--output", str(out)], "supported: bert, distilbert, electra, roberta")
    # a tokenizer that does not belong to the model: a bigger vocabulary than the model embeds
    other = write_tiny_encoder(tmp_path / "other")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(other)
    config.vocab_size = 10
    config.save_pretrained(other)
    expect_error(run, ["finetune", "--model", str(other), "--task", "sst2", "--data", str(glue_dir), "--output", str(out)],
                 "do not match")
    assert not out.exists()


def test_existing_run_is_never_overwritten_without_permission(run, tiny_encoder, glue_dir, tmp_path):
    out = tmp_path / "out"
    assert run(*base_args(tiny_encoder, glue_dir, out), "--method", "full")[0] == 0
    before = (out / "results.json").read_text()
    expect_error(run, [*base_args(tiny_encoder, glue_dir, out), "--method", "full"], "not empty; pass --resume")
    expect_error(run, [*base_args(tiny_encoder, glue_dir, out), "--method", "full", "--lr", "1e-3", "--resume"],
                 "started with other settings: lr 2e-05 in the run, 0.001 now;")
    assert (out / "results.json").read_text() == before
    assert run(*base_args(tiny_encoder, glue_dir, out), "--method", "full", "--overwrite")[0] == 0


def test_users_own_files_multiclass_and_regression(run, tiny_encoder, tmp_path):
    train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
    rows = ['"good, really",pos', "bad,neg", "fine,neutral", "awful,neg", "great,pos", "the movie,neutral"] * 4
    train.write_text("review,stars\n" + "\n".join(rows) + "\n")
    dev.write_text("review,stars\n" + "\n".join(rows[:6]) + "\n")
    out = tmp_path / "cls"
    code, _ = run("finetune", "--model", str(tiny_encoder), "--train-file", str(train), "--validation-file", str(dev),
                  "--text-columns", "review", "--label-column", "stars", "--output", str(out), "--batch-size", "4",
                  "--method", "full", "--epochs", "1")
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["metrics"]) == {"accuracy"}
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out / "model").id2label == {0: "neg", 1: "neutral", 2: "pos"}
    jl_train, jl_dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    lines = [json.dumps({"a": w, "b": "movie", "y": s}) for w, s in [("good", 4.5), ("bad", 0.5), ("fine", 3.0)] * 4]
    jl_train.write_text("\n".join(lines) + "\n")
    jl_dev.write_text("\n".join(lines[:3]) + "\n")
    out = tmp_path / "reg"
    code, _ = run("finetune", "--model", str(tiny_encoder), "--train-file", str(jl_train), "--validation-file",
                  str(jl_dev), "--text-columns", "a,b", "--label-column", "y", "--regression", "--output", str(out),
                  "--batch-size", "4", "--method", "earlybert", "--epochs", "1", "--earlybert-epochs", "1")
    assert code == 0
    assert set(json.loads((out / "results.json").read_text())["metrics"]) == {"pearson", "spearman"}
    jl_dev.write_text(json.dumps({"a": "good", "b": "x", "y": "high"}) + "\n")
    expect_error(run, ["finetune", "--model", str(tiny_encoder), "--train-file", str(jl_train), "--validation-file",
                       str(jl_dev), "--text-columns", "a,b", "--label-column", "y", "--regression",
                       "--output", str(tmp_path / "bad")], "label 'high' is not a number")
    expect_error(run, ["finetune", "--model", str(tiny_encoder), "--train-file", str(jl_train), "--validation-file",
                       str(jl_dev), "--label-column", "y", "--output", str(tmp_path / "bad")], "--text-columns")
