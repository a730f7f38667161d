"""The MLM-objective search (paper App. B): the ticket is searched with the masked-LM loss on the task's own text
through the checkpoint's MLM head, then the slim model fine-tunes on the task as usual."""

import json
import math

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

import earlybert as eb
from earlybert.archs import layer_shapes
from earlybert.cli import main
from earlybert.finetune import FinetuneConfig, finetune
from earlybert.ticket import TicketConfig

from conftest import write_tiny_encoder


@pytest.fixture(scope="module")
def mlm_encoder(tmp_path_factory):
    """write_tiny_encoder's checkpoint saved as a BertForMaskedLM: the same tokenizer, an MLM head with weights."""
    path = write_tiny_encoder(tmp_path_factory.mktemp("mlm") / "bert")
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(AutoModelForMaskedLM.from_pretrained(path).config).save_pretrained(path)
    return path


def config_for(encoder, data, output, **overrides):
    settings = dict(model=str(encoder), task="sst2", data=str(data), output=str(output), batch_size=8, lr=5e-4,
                    epochs=1, earlybert_epochs=1, search_epoch_fraction=0.75, patience=2, checkpoint_every=0, seed=3,
                    search_objective="mlm")
    return FinetuneConfig(**{**settings, **overrides})


def test_mlm_search_runs_end_to_end_with_a_ticket_of_the_default_shape(mlm_encoder, glue_dir, tmp_path):
    out = tmp_path / "run"
    results = finetune(config_for(mlm_encoder, glue_dir, out))
    ticket = eb.Ticket.load(out / "ticket.json")
    heads_pruned = TicketConfig().heads_to_prune(4)
    assert ticket.kept_heads == [4 - heads_pruned] * 2
    assert sum(ticket.kept_ffn) == round(2 * 37 * (1 - TicketConfig().ffn_ratio))
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")  # the task model, pruned
    assert layer_shapes(model) == (ticket.kept_heads, ticket.kept_ffn)
    assert results["stages"]["train"]["steps"] == 8 and 0 <= results["score"] <= 100
    assert json.loads((out / "config.json").read_text())["search_objective"] == "mlm"
    report = (out / "report.md").read_text()
    assert "masked-LM loss" in report and "| layer | heads pruned | FFN neurons pruned |" in report
    assert "Mask distance between the last two records" in report and (out / "mask_distance.png").exists()


def test_the_search_minimised_the_masked_lm_loss(mlm_encoder, glue_dir, tmp_path):
    """A random MLM head starts near log(vocab); the task loss of a random classifier near log(2)."""
    vocab = AutoModelForMaskedLM.from_pretrained(mlm_encoder).config.vocab_size
    searched = finetune(config_for(mlm_encoder, glue_dir, tmp_path / "mlm"))["losses"]["search"]
    assert abs(searched[0] - math.log(vocab)) < 0.5 and searched[0] > math.log(2) + 1.5
    task = finetune(config_for(mlm_encoder, glue_dir, tmp_path / "task", search_objective="task"))["losses"]["search"]
    assert abs(task[0] - math.log(2)) < 0.3


def test_the_task_objective_leaves_config_json_as_before(tmp_path):
    config = FinetuneConfig(model="m", output=str(tmp_path), task="sst2")
    assert "search_objective" not in config.to_dict()
    with pytest.raises(ValueError, match="search objective"):
        FinetuneConfig(model="m", output=str(tmp_path), task="sst2", search_objective="lm")


def test_a_checkpoint_without_mlm_head_fails_in_one_line(tiny_encoder, glue_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["finetune", "--model", str(tiny_encoder), "--task", "sst2", "--data", str(glue_dir),
                 "--output", str(out), "--search-objective", "mlm"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("earlybert: error")]
    assert code == 2 and len(errors) == 1
    assert "--search-objective" in errors[0] and "no masked-LM head" in errors[0]
    assert not out.exists() or not any(out.iterdir())  # refused before the run folder was written
