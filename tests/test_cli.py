import json
import subprocess
import sys

import pytest
from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2Model

import earlybert as eb
from earlybert.archs import layer_shapes
from earlybert.cli import main

from conftest import build


@pytest.fixture
def tiny_model_dir(tmp_path):
    path = tmp_path / "tiny"
    build("bert", AutoModelForSequenceClassification).save_pretrained(path)
    return path


def test_module_help_runs():
    out = subprocess.run([sys.executable, "-m", "earlybert", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "prune" in out.stdout and "inspect" in out.stdout


def test_prune_with_a_random_ticket_then_inspect(tiny_model_dir, tmp_path, capsys):
    out_dir = tmp_path / "slim"
    assert main(["prune", str(tiny_model_dir), "--random-seed", "0", "--output", str(out_dir), "--head-count", "1"]) == 0
    ticket = eb.Ticket.load(out_dir / "ticket.json")
    assert ticket.kept_heads == [3, 3] and ticket.config["random_seed"] == 0
    model = AutoModelForSequenceClassification.from_pretrained(out_dir)
    assert layer_shapes(model) == (ticket.kept_heads, ticket.kept_ffn)
    assert "linear-layer FLOPs per training step" in capsys.readouterr().out
    assert main(["inspect", str(out_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["heads_per_layer"] == [3, 3] and report["class"] == "SlimBertForSequenceClassification"


def test_prune_with_a_ticket_file(tiny_model_dir, tmp_path):
    ticket = eb.Ticket(heads=[[0], [1, 2]], ffn=[[0, 5], [7]], num_heads=[4, 4], ffn_sizes=[37, 37])
    ticket.save(tmp_path / "t.json")
    out_dir = tmp_path / "slim"
    assert main(["prune", str(tiny_model_dir), "--ticket", str(tmp_path / "t.json"), "--output", str(out_dir)]) == 0
    assert layer_shapes(AutoModelForSequenceClassification.from_pretrained(out_dir)) == ([1, 2], [2, 1])


def test_bad_inputs_give_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys):
    def error_of(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("earlybert: error:") and "\n" not in err
        return err

    assert "cannot load a model from" in error_of(["inspect", str(tmp_path / "nope")])
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("precious")
    err = error_of(["prune", str(tiny_model_dir), "--random-seed", "0", "--output", str(occupied)])
    assert "not empty" in err and (occupied / "keep.txt").read_text() == "precious"
    assert "ffn_ratio must be in [0, 1)" in error_of(
        ["prune", str(tiny_model_dir), "--random-seed", "0", "--ffn-ratio", "1.5", "--output", str(tmp_path / "o")]
    )
    wrong = eb.full_ticket([4, 4, 4], [37] * 3)
    wrong.save(tmp_path / "wrong.json")
    assert "ticket was drawn for a model" in error_of(
        ["prune", str(tiny_model_dir), "--ticket", str(tmp_path / "wrong.json"), "--output", str(tmp_path / "o")]
    )
    assert not (tmp_path / "o").exists()
    gpt2 = tmp_path / "gpt2"
    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(gpt2)
    capsys.readouterr()  # the save's own progress bar
    assert "supported: bert, distilbert, electra, roberta" in error_of(["inspect", str(gpt2)])
