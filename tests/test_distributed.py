"""Two CPU processes (gloo, launched with torchrun) draw the same ticket as each other and as one process."""

import json
import os
import subprocess
import sys

import numpy as np

import earlybert as eb

from conftest import WORDS, torchrun, write_sst2_like, write_tiny_encoder


def test_two_gloo_processes_draw_the_same_ticket_as_one(tmp_path):
    encoder = write_tiny_encoder(tmp_path / "encoder", dropout=0.0)  # no dropout: 2x4 and 1x8 see the same math
    data = write_sst2_like(tmp_path / "glue")
    common = ["finetune", "--model", str(encoder), "--task", "sst2", "--data", str(data), "--epochs", "1",
              "--earlybert-epochs", "1", "--search-epoch-fraction", "0.75", "--patience", "2", "--lr", "5e-4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    one = subprocess.run([sys.executable, "-m", "earlybert", *common, "--batch-size", "8", "--output",
                          str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun([*common, "--batch-size", "4", "--output", str(tmp_path / "two")], 29533, env)
    search = json.loads((tmp_path / "two" / "search.json").read_text())
    assert search["processes"] == 2 and search["ranks_drew_same_ticket"] is True
    ticket_two = eb.Ticket.load(tmp_path / "two" / "ticket.json")
    ticket_one = eb.Ticket.load(tmp_path / "one" / "ticket.json")
    # The same global batches, averaged by DDP instead of in one process: the same coefficients to float noise.
    for a, b in zip(ticket_two.ffn_scores + ticket_two.head_scores, ticket_one.ffn_scores + ticket_one.head_scores):
        assert np.allclose(a, b, atol=1e-6, rtol=0)
    assert (ticket_two.heads, ticket_two.ffn) == (ticket_one.heads, ticket_one.ffn)
    assert search["stage"]["steps"] == json.loads((tmp_path / "one" / "search.json").read_text())["stage"]["steps"]


def test_two_gloo_processes_pretrain_the_same_ticket_as_one(tmp_path):
    """Pre-training: two processes x 4 sequences draw the ticket that one process draws from the same 8 sequences
    as two accumulated micro-batches of 4 (both average the two halves' mean losses, and see identical masks)."""
    import random

    from transformers import BertConfig

    encoder = write_tiny_encoder(tmp_path / "encoder")  # its tokenizer
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(120)]
    (tmp_path / "text.txt").write_text("\n\n".join(docs) + "\n")
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    (tmp_path / "config.json").write_text(config.to_json_string())
    common = ["pretrain", "--config", str(tmp_path / "config.json"), "--tokenizer", str(encoder), "--text",
              str(tmp_path / "text.txt"), "--method", "earlybert", "--steps", "12", "--seq-len", "16,32",
              "--search-steps", "6", "--patience", "10", "--held-out", "0.1", "--lr", "1e-3", "--batch-size", "4,4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    one = subprocess.run([sys.executable, "-m", "earlybert", *common, "--grad-accum", "2,2", "--output",
                          str(tmp_path / "one"), "--cache-dir", str(tmp_path / "cache1")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun([*common, "--output", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "cache2")], 29534, env)
    search = json.loads((tmp_path / "two" / "search.json").read_text())
    assert search["processes"] == 2 and search["ranks_drew_same_ticket"] is True
    assert search["stage"]["steps"] == 6
    ticket_two = eb.Ticket.load(tmp_path / "two" / "ticket.json")
    ticket_one = eb.Ticket.load(tmp_path / "one" / "ticket.json")
    for a, b in zip(ticket_two.ffn_scores + ticket_two.head_scores, ticket_one.ffn_scores + ticket_one.head_scores):
        assert np.allclose(a, b, atol=1e-6, rtol=0)
    assert (ticket_two.heads, ticket_two.ffn) == (ticket_one.heads, ticket_one.ffn)
    assert np.allclose(search["losses"], json.loads((tmp_path / "one" / "search.json").read_text())["losses"],
                       atol=1e-5, rtol=0)
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two")]
    assert results[0]["stages"]["phase1"]["steps"] == results[1]["stages"]["phase1"]["steps"] == round(0.8 * 11)


def test_two_gloo_processes_compare_the_methods_in_turns(tmp_path):
    encoder = write_tiny_encoder(tmp_path / "encoder")
    data = write_sst2_like(tmp_path / "glue")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    torchrun(["compare", "--model", str(encoder), "--task", "sst2", "--data", str(data), "--epochs", "1",
              "--earlybert-epochs", "1", "--search-epoch-fraction", "0.75", "--patience", "2", "--lr", "5e-4",
              "--batch-size", "4", "--methods", "full,earlybert,random", "--seeds", "1", "--slice", "3",
              "--output", str(tmp_path / "cmp")], 29535, env)
    # one group of two processes, not two lone ones each training its own copy into the same folder
    assert json.loads((tmp_path / "cmp" / "earlybert-seed1" / "search.json").read_text())["processes"] == 2
    runs = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["runs"]
    assert sorted(r["method"] for r in runs) == ["earlybert", "full", "random"]
    random_ticket = eb.Ticket.load(tmp_path / "cmp" / "random-seed1" / "ticket.json")
    earlybert_ticket = eb.Ticket.load(tmp_path / "cmp" / "earlybert-seed1" / "ticket.json")
    assert random_ticket.kept_heads == earlybert_ticket.kept_heads and random_ticket.kept_ffn == earlybert_ticket.kept_ffn
