"""Pre-training: packed MLM data, masked-only loss, LAMB against the paper's algorithm, theta_0 reset, the random
ticket, resume, compare, and the benchmark script's smoke run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, BertConfig

import earlybert as eb
from earlybert import mlm_data, train as train_module
from earlybert.pretrain import (MaskedLM, PretrainConfig, context_free_loss, linear_flops, make_lamb, pretrain,
                                unigram_entropy)

from conftest import REAL_DATA, WORDS, write_tiny_encoder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import random

    rng = random.Random(0)
    root = tmp_path_factory.mktemp("text")
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(120)]
    (root / "a.txt").write_text("\n\n".join(docs[:80]) + "\n")
    (root / "b.txt").write_text("\n\n".join(docs[80:]) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    config = BertConfig(vocab_size=23, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64)
    path.write_text(config.to_json_string())
    return path


def run_config(tiny_encoder, tiny_config_file, corpus, output, **overrides):
    settings = dict(config=str(tiny_config_file), tokenizer=str(tiny_encoder), text=(str(corpus),),
                    output=str(output), steps=12, seq_len=(16, 32), batch_size=(8, 4), lr=(1e-3, 1e-3),
                    warmup_ratio=(0.1, 0.1), held_out=0.1, search_steps=4, patience=2, checkpoint_every=2,
                    cache_dir=str(output.parent / "cache"))
    return PretrainConfig(**{**settings, **overrides})


def test_packed_sequences_and_cache(tiny_encoder, corpus, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    files = mlm_data.text_files([str(corpus)])
    path = mlm_data.tokenize_to_cache(files, tokenizer, tmp_path)
    assert mlm_data.tokenize_to_cache(files, tokenizer, tmp_path) == path  # reused, not rebuilt
    train, held = mlm_data.split(path, 16, tokenizer, 0.1)
    item = train[0]["input_ids"]
    assert len(item) == 16 and item[0] == tokenizer.cls_token_id and item[-1] == tokenizer.sep_token_id
    assert (item[1:-1] != tokenizer.pad_token_id).all()  # packed: no padding
    assert len(held) >= 1 and len(train) > 5 * len(held)
    longer, _ = mlm_data.split(path, 32, tokenizer, 0.1)
    assert torch.equal(longer[0]["input_ids"][1:15], item[1:15])  # one cache serves every length


def test_batching_lines_never_changes_the_token_file(tiny_encoder, tmp_path):
    """Document boundaries at a batch's first or last line, an all-blank batch, a file whose length is a multiple
    of the batch: every batch size writes what one batch of the whole file writes, one [SEP] per document."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    text = tmp_path / "docs.txt"
    text.write_text("the cat\nsat\n\nthe dog\n\n\n\nran far\naway\n\nend\n")  # 12 lines, 4 documents
    tokens = {}
    for batch_lines in (1, 2, 3, 4, 6, 12, 1000):
        path = mlm_data.tokenize_to_cache([text], tokenizer, tmp_path / f"b{batch_lines}", batch_lines=batch_lines)
        tokens[batch_lines] = np.fromfile(path, dtype=mlm_data.TOKEN_DTYPE).tolist()
    assert all(t == tokens[1000] for t in tokens.values())
    assert tokens[1000].count(tokenizer.sep_token_id) == 4 and tokens[1000][-1] == tokenizer.sep_token_id


def test_bad_text_inputs(tmp_path, tiny_encoder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    with pytest.raises(ValueError, match="does not exist"):
        mlm_data.text_files([str(tmp_path / "none")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no text files found"):
        mlm_data.text_files([str(tmp_path / "empty")])
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="is empty"):
        mlm_data.tokenize_to_cache([tmp_path / "blank.txt"], tokenizer, tmp_path / "c")
    (tmp_path / "bin.txt").write_bytes(b"abc\x00\x01\x02" * 10)
    with pytest.raises(ValueError, match="looks binary"):
        mlm_data.tokenize_to_cache([tmp_path / "bin.txt"], tokenizer, tmp_path / "c")


def test_masked_only_loss_equals_the_full_projection_loss():
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                        num_attention_heads=4, intermediate_size=37)).eval()
    ids = torch.randint(5, 50, (3, 12))
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    full = model(input_ids=ids, labels=labels).loss
    masked = MaskedLM(model)(input_ids=ids, labels=labels)
    assert torch.allclose(masked.loss, full, atol=1e-6) and masked.count == (labels != -100).sum()


def test_flops_are_counted_on_the_device_the_model_is_on():
    # The trained model ends pre-training on its accelerator, the batch comes from the collator on the host: counting
    # them together crashed every GPU run at its end. 'meta' stands in for the accelerator here.
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    ids = torch.randint(5, 50, (3, 12))
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    batch = {"input_ids": ids, "labels": labels}  # no attention mask: transformers reads its values, meta has none
    # (the bare model: MaskedLM's gather of the masked positions has a data-dependent shape, which meta lacks)
    host = linear_flops(AutoModelForMaskedLM.from_config(config), batch)
    with torch.device("meta"):
        on_meta = AutoModelForMaskedLM.from_config(config)
    assert host > 0 and linear_flops(on_meta, batch) == host


def reference_lamb_step(p, g, m, v, step, lr, wd, beta1=0.9, beta2=0.999, eps=1e-6, adapt=True):
    """You et al. 2020, Algorithm 2 (with the trust-ratio clamp at 10 that implementations share); adapt=False:
    no trust ratio, as BERT's recipes treat biases and LayerNorm."""
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
    r = m_hat / (v_hat.sqrt() + eps)
    update = r + wd * p
    ratio = p.norm().clamp(max=10) / update.norm() if adapt else 1.0
    return p - lr * ratio * update, m, v


def test_lamb_matches_the_papers_algorithm():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    optimizer = make_lamb(layer, lr=0.01, weight_decay=0.1)
    p, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    mb, vb = torch.zeros_like(b), torch.zeros_like(b)
    for step in range(1, 6):
        g, gb = torch.randn_like(p), torch.randn_like(b)
        layer.weight.grad, layer.bias.grad = g.clone(), gb.clone()
        optimizer.step()
        p, m, v = reference_lamb_step(p, g, m, v, step, lr=0.01, wd=0.1)
        b, mb, vb = reference_lamb_step(b, gb, mb, vb, step, lr=0.01, wd=0.0, adapt=False)
        assert torch.allclose(layer.weight, p, atol=1e-6, rtol=1e-5), step
        assert torch.allclose(layer.bias, b, atol=1e-6, rtol=1e-5), step  # the bias: a plain Adam step


def test_earlybert_pretraining_resets_to_theta0_prunes_and_trains_80_percent(tiny_encoder, tiny_config_file, corpus,
                                                                             tmp_path, monkeypatch):
    captured = {}
    real_train_stage = train_module.train_stage

    def spy(name, model, *args, **kwargs):
        if name == "phase1":  # the slim model before its first step: slices of theta_0, exactly
            captured["state"] = {k: v.clone() for k, v in model.model.state_dict().items()}
        return real_train_stage(name, model, *args, **kwargs)

    import earlybert.pretrain as pretrain_module

    monkeypatch.setattr(pretrain_module, "train_stage", spy)
    out = tmp_path / "eb"
    results = pretrain(run_config(tiny_encoder, tiny_config_file, corpus, out))
    artefacts = {"config.json", "theta0.safetensors", "search.json", "ticket.json", "mask_history.json", "phase1.json",
                 "phase2.json", "phase1_model", "phase2_model", "model", "results.json", "report.md", "attempts.json",
                 "mask_distance.png", "ticket.png", "loss.png", "tokenizer", "data.json"}
    assert {p.name for p in out.iterdir()} == artefacts  # and no checkpoint left behind
    assert "![Mask distance during the search" in (out / "report.md").read_text()
    ticket = eb.Ticket.load(out / "ticket.json")
    from safetensors.torch import load_file

    theta0 = load_file(str(out / "theta0.safetensors"))
    block = "bert.encoder.layer.0."
    rows = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in ticket.heads[0]])
    assert torch.equal(captured["state"][block + "attention.self.query.weight"], theta0[block + "attention.self.query.weight"][rows])
    assert torch.equal(captured["state"][block + "output.dense.weight"], theta0[block + "output.dense.weight"][:, ticket.ffn[0]])
    assert torch.equal(captured["state"]["bert.embeddings.word_embeddings.weight"], theta0["bert.embeddings.word_embeddings.weight"])
    assert results["stages"]["search"]["steps"] <= 4
    assert results["stages"]["phase1"]["steps"] == round(0.8 * 11) and results["stages"]["phase2"]["steps"] == 1
    assert sum(ticket.kept_ffn) == 74 - round(0.3 * 74) and ticket.kept_heads == [3, 3]
    assert results["held_out"]["length_16"]["mlm_loss"] > 0
    # 1 - (4 full search steps + 9 slim steps) / 12 full steps, with slim FLOPs a fraction of full
    assert 0 < results["theoretical_fraction_saved_flops"] < 1 - 4 / 12
    slim = AutoModelForSequenceClassification.from_pretrained(out / "model", num_labels=2)  # hand-off to finetune
    assert eb.layer_shapes(slim) == (ticket.kept_heads, ticket.kept_ffn)


def test_full_pretraining_resumes_to_the_same_loss(tiny_encoder, tiny_config_file, corpus, tmp_path, monkeypatch):
    whole = pretrain(run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "whole", method="full"))
    real_save = train_module.save_checkpoint
    calls = {"n": 0}

    class Killed(Exception):
        pass

    def save_then_die(accelerator, directory, progress):
        real_save(accelerator, directory, progress)
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    config = run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "killed", method="full")
    with pytest.raises(Killed):
        pretrain(config)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    resumed = pretrain(config, resume=True)
    assert resumed["held_out"] == whole["held_out"]
    assert json.loads((tmp_path / "killed" / "phase1.json").read_text())["losses"] == \
        json.loads((tmp_path / "whole" / "phase1.json").read_text())["losses"]


def test_earlybert_run_in_slices_equals_one_uninterrupted_run(tiny_encoder, tiny_config_file, corpus, tmp_path):
    whole = pretrain(run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "whole", patience=10))
    config = run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "sliced", patience=10)
    slices, result = 0, None
    while result is None:  # 3 steps at a time: pauses inside the search, inside phase 1, and at stage ends
        result = pretrain(config, resume=slices > 0, stop_after=3)
        slices += 1
    assert slices == 5  # 4 search + 9 + 1 phase steps = 14 steps
    assert eb.Ticket.load(tmp_path / "sliced" / "ticket.json").to_dict() == \
        eb.Ticket.load(tmp_path / "whole" / "ticket.json").to_dict()
    for stage in ("search", "phase1", "phase2"):
        assert json.loads((tmp_path / "sliced" / f"{stage}.json").read_text())["losses"] == \
            json.loads((tmp_path / "whole" / f"{stage}.json").read_text())["losses"]
    assert result["held_out"] == whole["held_out"]
    with pytest.raises(ValueError, match="budget must be >= 1"):
        pretrain(run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "never"), stop_after=0)
    assert not (tmp_path / "never").exists()


def test_bad_pretraining_settings(tiny_encoder, tiny_config_file, corpus, tmp_path):
    with pytest.raises(ValueError, match="one value per phase"):
        run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "x", lr=(1e-3,))
    with pytest.raises(ValueError, match="ffn_ratio must be in"):
        run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "x", ticket=eb.TicketConfig(ffn_ratio=1.0))
    with pytest.raises(ValueError, match="exceeds the config's 64 position"):
        pretrain(run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "x", seq_len=(16, 128)))
    small = tmp_path / "small.json"
    small.write_text(BertConfig(vocab_size=10, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=8).to_json_string())
    with pytest.raises(ValueError, match="do not match"):
        pretrain(run_config(tiny_encoder, small, corpus, tmp_path / "x"))
    with pytest.raises(ValueError, match="--ticket-like is for the random method only"):
        run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "x", ticket_like=str(tmp_path / "t.json"))
    with pytest.raises(ValueError, match="--optimizer"):
        run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "x", optimizer="sgd")
    eb.full_ticket([4, 4, 4], [37] * 3).save(tmp_path / "three_layers.json")
    with pytest.raises(ValueError, match="ticket was drawn for a model"):
        pretrain(run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "x", method="random",
                            ticket_like=str(tmp_path / "three_layers.json")))
    assert not (tmp_path / "x").exists()


def compare_argv(tiny_encoder, tiny_config_file, corpus, tmp_path, *extra):
    return ["pretrain", "--config", str(tiny_config_file), "--tokenizer", str(tiny_encoder), "--text", str(corpus),
            "--output", str(tmp_path / "cmp"), "--method", "compare", "--steps", "6", "--seq-len", "16,32",
            "--batch-size", "8,4", "--lr", "1e-3", "--held-out", "0.1", "--cache-dir", str(tmp_path / "cache"), *extra]


COMPARISON_KEYS = {"full", "earlybert", "random", "time_saved", "time_saved_random"}


def test_cli_compare_runs_all_three_methods(tiny_encoder, tiny_config_file, corpus, tmp_path, capsys):
    from earlybert.cli import main

    out = tmp_path / "cmp"
    argv = compare_argv(tiny_encoder, tiny_config_file, corpus, tmp_path, "--search-steps", "2")
    assert main(argv) == 0
    summary = json.loads((out / "comparison.json").read_text())
    assert set(summary) == COMPARISON_KEYS
    assert summary["time_saved"] == 1 - summary["earlybert"]["total_step_time_s"] / summary["full"]["total_step_time_s"]
    assert (out / "full" / "model" / "model.safetensors").exists()
    # the random ticket: EarlyBERT's per-layer shape, drawn at random, and no search
    ticket, like = eb.Ticket.load(out / "random" / "ticket.json"), eb.Ticket.load(out / "earlybert" / "ticket.json")
    assert (ticket.kept_heads, ticket.kept_ffn) == (like.kept_heads, like.kept_ffn)
    assert ticket.to_dict() == eb.random_ticket(like, 42).to_dict()
    random_run = json.loads((out / "random" / "results.json").read_text())
    assert set(random_run["stages"]) == {"phase1", "phase2"}
    assert random_run["stages"]["phase1"]["steps"] == json.loads((out / "earlybert" / "results.json").read_text())[
        "stages"]["phase1"]["steps"]
    capsys.readouterr()
    assert main([*argv[:-4], "--seq-len", "16"]) == 2  # output exists
    assert "not empty" in capsys.readouterr().err


def test_cli_compare_interleaves_slices_and_the_random_run_waits_for_the_ticket(tiny_encoder, tiny_config_file, corpus,
                                                                                 tmp_path, capsys):
    from earlybert.cli import main

    out = tmp_path / "cmp"
    # full: 5 + 1 steps; EarlyBERT: 4 search + 4 + 1; random: 4 + 1, once EarlyBERT's search has drawn the ticket
    argv = compare_argv(tiny_encoder, tiny_config_file, corpus, tmp_path, "--search-steps", "4", "--patience", "10",
                        "--stop-after-steps", "3")
    assert main(argv) == 0
    assert "paused (full, earlybert, random) after 3 steps" in capsys.readouterr().out
    assert (out / "full" / "phase1_checkpoint").exists() and (out / "earlybert" / "search_checkpoint").exists()
    assert not (out / "random").exists() and not (out / "comparison.json").exists()
    assert main([*argv, "--resume"]) == 0  # full ends; EarlyBERT ends its search; random starts
    assert (out / "full" / "results.json").exists() and (out / "random" / "phase1_checkpoint").exists()
    assert main([*argv, "--resume"]) == 0
    summary = json.loads((out / "comparison.json").read_text())
    assert set(summary) == COMPARISON_KEYS
    full = json.loads((out / "full" / "results.json").read_text())
    assert [full["stages"][s]["steps"] for s in ("phase1", "phase2")] == [5, 1]
    random_run = json.loads((out / "random" / "results.json").read_text())
    assert [random_run["stages"][s]["steps"] for s in ("phase1", "phase2")] == [4, 1]
    random_config = json.loads((out / "random" / "config.json").read_text())
    assert random_config["ticket_like"] == str(out / "earlybert" / "ticket.json")


def test_random_pretraining_prunes_theta0_to_the_tickets_shape_and_trains_the_step_fraction(
        tiny_encoder, tiny_config_file, corpus, tmp_path, monkeypatch):
    captured = {}
    real_train_stage = train_module.train_stage

    def spy(name, model, *args, **kwargs):
        if name == "phase1":
            captured["state"] = {k: v.clone() for k, v in model.model.state_dict().items()}
        return real_train_stage(name, model, *args, **kwargs)

    import earlybert.pretrain as pretrain_module

    monkeypatch.setattr(pretrain_module, "train_stage", spy)
    like = eb.Ticket(heads=[[0, 1], [0, 2, 3]], ffn=[list(range(10)), list(range(30))], num_heads=[4, 4],
                     ffn_sizes=[37, 37])  # uneven layers: the shape is copied layer by layer
    like.save(tmp_path / "like.json")
    out = tmp_path / "random"
    results = pretrain(run_config(tiny_encoder, tiny_config_file, corpus, out, method="random",
                                  ticket_like=str(tmp_path / "like.json")))
    ticket = eb.Ticket.load(out / "ticket.json")
    assert ticket.to_dict() == eb.random_ticket(like, 42).to_dict() and ticket.ffn != like.ffn
    assert (ticket.kept_heads, ticket.kept_ffn) == ([2, 3], [10, 30]) == tuple(results["layer_shapes"].values())
    assert not (out / "search.json").exists() and not (out / "mask_history.json").exists()
    from safetensors.torch import load_file

    theta0 = load_file(str(out / "theta0.safetensors"))
    for layer in (0, 1):
        block = f"bert.encoder.layer.{layer}."
        rows = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in ticket.heads[layer]])
        assert torch.equal(captured["state"][block + "attention.self.value.weight"],
                           theta0[block + "attention.self.value.weight"][rows])
        assert torch.equal(captured["state"][block + "intermediate.dense.weight"],
                           theta0[block + "intermediate.dense.weight"][ticket.ffn[layer]])
    # 12 steps: 11 + 1 for full; the ticket trains 80% of each phase and spends no step on a search
    assert {k: v["steps"] for k, v in results["stages"].items()} == {"phase1": round(0.8 * 11), "phase2": 1}
    assert results["total_step_time_s"] == sum(v["step_time_s"] for v in results["stages"].values())
    assert results["ticket"] == {"kept_heads": [2, 3], "kept_ffn": [10, 30]}
    assert 0 < results["theoretical_fraction_saved_flops"] < 1
    assert "Mask distance" not in (out / "report.md").read_text()  # nothing searched, nothing to plot

    # without --ticket-like: the ticket ratios (1/3 of heads per layer, 30% of FFN neurons globally)
    ratios = pretrain(run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "ratios", method="random",
                                 steps=4))
    assert ratios["ticket"]["kept_heads"] == [3, 3] and sum(ratios["ticket"]["kept_ffn"]) == 74 - round(0.3 * 74)


def test_random_pretraining_in_slices_equals_one_run_and_records_the_held_out_curve(tiny_encoder, tiny_config_file,
                                                                                    corpus, tmp_path):
    eb.full_ticket([4, 4], [37, 37]).save(tmp_path / "like.json")
    settings = dict(method="random", ticket_like=str(tmp_path / "like.json"))
    whole = pretrain(run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "whole", **settings))
    config = run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "sliced", **settings)
    slices, result = 0, None
    while result is None:  # 4 steps at a time, a held-out evaluation at every pause: 9 + 1 steps in all
        result = pretrain(config, resume=slices > 0, stop_after=4, curve_sequences=3)
        slices += 1
    assert slices == 3
    for stage in ("phase1", "phase2"):
        assert json.loads((tmp_path / "sliced" / f"{stage}.json").read_text())["losses"] == \
            json.loads((tmp_path / "whole" / f"{stage}.json").read_text())["losses"]
    assert result["held_out"] == whole["held_out"] and whole["held_out_curve"] == []
    curve = result["held_out_curve"]
    assert [(p["stage"], p["steps"]) for p in curve] == [("start", 0), ("phase1", 4), ("phase1", 8), ("end", 10)]
    times = [p["step_time_s"] for p in curve]
    assert times[0] == 0 and times == sorted(times) and times[-1] == pytest.approx(result["total_step_time_s"])
    assert all(p["sequences"] == 3 and p["mlm_loss"] > 0 for p in curve)
    assert curve[0]["mlm_loss"] == pytest.approx(math.log(23), rel=0.1)  # theta_0: about uniform over the vocabulary


def test_adamw_is_an_option_and_new_settings_leave_old_run_identities_alone(tiny_encoder, tiny_config_file, corpus,
                                                                           tmp_path, monkeypatch):
    import earlybert.pretrain as pretrain_module

    made = []
    real = pretrain_module.make_adamw

    def spy(model, lr, weight_decay, gate_lr=None):
        made.append(lr)
        return real(model, lr, weight_decay, gate_lr)

    monkeypatch.setattr(pretrain_module, "make_adamw", spy)
    results = pretrain(run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "adamw", method="full", steps=4,
                                  lr=(2e-3, 1e-3), optimizer="adamw"))
    assert made == [2e-3, 1e-3] and all(math.isfinite(x) for x in results["losses"]["phase1"])
    assert json.loads((tmp_path / "adamw" / "config.json").read_text())["optimizer"] == "adamw"
    # at their defaults the settings added later are left out, so runs made before them keep their identity
    lamb = run_config(tiny_encoder, tiny_config_file, corpus, tmp_path / "lamb").to_dict()
    assert "optimizer" not in lamb and "ticket_like" not in lamb
    assert PretrainConfig(**lamb).optimizer == "lamb"


def test_unigram_entropy_counts_the_held_out_tokens_special_tokens_aside(tmp_path):
    tokens = np.array([9, 5, 6, 3, 7, 5, 6, 9, 9, 8], dtype=mlm_data.TOKEN_DTYPE)
    tokens.tofile(tmp_path / "tokens.bin")
    # from offset 1, two sequences of 4 tokens: 5 6 [SEP] 7 | 5 6 9 9; the trailing 8 is in no sequence
    held = mlm_data.PackedSequences(tmp_path / "tokens.bin", seq_len=6, cls_id=2, sep_id=3, start=1)
    counts = [2, 2, 1, 2]  # 5, 6, 7, 9 of 7 tokens; [SEP] is never masked, so never a target
    assert unigram_entropy(held, [0, 1, 2, 3, 4]) == pytest.approx(-sum(c / 7 * math.log(c / 7) for c in counts))


@pytest.mark.realdata
def test_the_pretraining_benchmark_smoke_run_ends_to_end_and_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(ROOT / "bench" / "pretrain.py"), "--smoke", "--runs", str(tmp_path), "--data",
               str(REAL_DATA)]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "pretrain_cpu.json").read_text())
    assert set(summary["downstream_mean"]) == {"full", "earlybert", "random"}
    # the saving itself is a benchmark's claim, not a test's (a toy model's slim step need not be faster): here,
    # that it is the calibrated step times times each stage's steps, and the runs' own clocks beside it
    step_s = summary["calibration"]["step_s"]
    assert set(step_s) == {"full@1", "full@2", "search@1", "earlybert@1", "earlybert@2", "random@1", "random@2"}
    for p in (1, 2):  # the two tickets share their shape: the calibration's error is how far apart it times them
        assert summary["calibration"]["same_shape_ratio"][f"phase{p}"] == pytest.approx(
            step_s[f"random@{p}"] / step_s[f"earlybert@{p}"])
    calibrated = {}
    for method, r in summary["results"].items():
        stages = r["stages"]
        calibrated[method] = sum(stages[f"phase{p}"]["steps"] * step_s[f"{method}@{p}"] for p in (1, 2)) + (
            stages["search"]["steps"] * step_s["search@1"] if method == "earlybert" else 0)
        assert r["calibrated_step_time_s"] == pytest.approx(calibrated[method])
        points = [point["calibrated_step_time_s"] for point in r["held_out_curve"]]
        assert points[0] == 0 and points == sorted(points) and points[-1] == pytest.approx(calibrated[method])
    assert summary["time_saved"] == pytest.approx(1 - calibrated["earlybert"] / calibrated["full"])
    assert summary["time_saved_random"] == pytest.approx(1 - calibrated["random"] / calibrated["full"])
    steps = {m: r["total_step_time_s"] for m, r in summary["results"].items()}
    assert summary["runs_clock"]["time_saved"] == pytest.approx(1 - steps["earlybert"] / steps["full"])
    if len(os.sched_getaffinity(0)) > 1:  # the runs trained in processes side by side, one per core
        assert sorted(summary["runs_clock"]["lanes"]) == [["earlybert", "random"], ["full"]]
        assert {p.name for p in (tmp_path / "lanes").iterdir()} == {
            "pretrain-full.log", "pretrain-earlybert-random.log", *(f"finetune-{i}-of-{len(summary['machine']['cores'])}.log"
                                                                  for i in range(len(summary["machine"]["cores"])))}
    assert summary["majority_class"]["sst2"] == pytest.approx(100 * 444 / 872)  # SST-2 dev: 444 of 872 positive
    for method, result in summary["results"].items():
        assert len(result["downstream_sst2_seeds"]) == 1 and result["downstream_sst2"] > 0
        curve = result["held_out_curve"]
        assert curve[0]["stage"] == "start" and curve[-1]["stage"] == "end" and len(curve) >= 3
    assert summary["results"]["random"]["layer_shapes"] == summary["results"]["earlybert"]["layer_shapes"]
    theta0 = summary["no_pretraining"]  # theta_0 fine-tuned like the checkpoints: what pre-training added
    tasks = summary["majority_class"]
    assert len(theta0["downstream_sst2_seeds"]) == 1
    assert theta0["downstream_mean"] == pytest.approx(sum(theta0[f"downstream_{t}"] for t in tasks) / len(tasks))
    assert summary["full_minus_no_pretraining"] == pytest.approx(summary["downstream_mean"]["full"]
                                                                 - theta0["downstream_mean"])
    assert (tmp_path / "pretrain" / "theta0" / "model.safetensors").exists()
    assert "| no pre-training (theta_0) |" in (tmp_path / "pretrain_cpu.md").read_text()
    assert 0 < summary["unigram_plateau"]["entropy_nats"] < math.log(1000)
    assert (tmp_path / "pretrain_loss_cpu.png").exists()
    assert "unigram plateau" in (tmp_path / "pretrain_cpu.md").read_text()
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((tmp_path / "pretrain_cpu.json").read_text())
    assert rerun["results"] == summary["results"]  # every run was finished: read back, nothing retrained
    assert summary["unigram_plateau"]["context_free_nats"] < summary["unigram_plateau"]["entropy_nats"]


@pytest.mark.realdata
def test_a_regime_probe_records_the_full_models_curve_against_the_floors(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(ROOT / "bench" / "pretrain_regime.py"), "--name", "probe", "--every", "15", "--",
               "--smoke", "--runs", str(tmp_path), "--data", str(REAL_DATA)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "floors at length 32: unigram" in done.stdout and "context_free" in done.stdout
    curve = json.loads((tmp_path / "regimes" / "probe" / "held_out_curve.json").read_text())
    assert [point["steps"] for point in curve] == [0, 15, 30] and curve[-1]["mlm_loss"] < curve[0]["mlm_loss"]


def test_a_wordpiece_vocabulary_trained_on_the_corpus_is_cached_and_reused(corpus, tmp_path, monkeypatch, capsys):
    from transformers import AutoTokenizer

    from earlybert.cli import main

    config = tmp_path / "config.json"
    config.write_text(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=37, max_position_embeddings=64).to_json_string())
    argv = ["pretrain", "--config", str(config), "--tokenizer", "wordpiece:200", "--text", str(corpus), "--method",
            "full", "--steps", "4", "--seq-len", "16,32", "--batch-size", "8,4", "--lr", "1e-3", "--held-out", "0.1",
            "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--output", str(tmp_path / "a")]) == 0
    [trained] = (tmp_path / "cache").glob("wordpiece200-*")
    saved = AutoTokenizer.from_pretrained(tmp_path / "a" / "model")  # the model's own folder carries it
    assert saved.get_vocab() == AutoTokenizer.from_pretrained(trained).get_vocab()
    assert len(saved) <= 200 and saved.mask_token == "[MASK]"
    word = WORDS[0]
    assert saved.tokenize(f"{word} {word.upper()}") == [word, word]  # corpus words are whole tokens, lowercased
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert all(v["mlm_loss"] > 0 for v in results["held_out"].values())

    def no_training(*args):
        raise AssertionError("the cached vocabulary should have been reused")

    monkeypatch.setattr(mlm_data, "_train_wordpiece", no_training)
    assert main([*argv, "--output", str(tmp_path / "b")]) == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "b" / "model").get_vocab() == saved.get_vocab()
    capsys.readouterr()
    assert main([*argv[:4], "wordpiece:lots", *argv[5:], "--output", str(tmp_path / "c")]) == 2
    assert "wordpiece:N" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_a_resumed_run_keeps_its_own_vocabulary_after_the_text_is_copied_anew(corpus, tmp_path, monkeypatch):
    """A vocabulary trained on the corpus is not reproducible: a run resumed where the cache no longer holds it (a
    fresh checkout, a cleared cache) must go on with the token ids it was trained with, not train new ones."""
    import shutil
    from dataclasses import replace

    from transformers import AutoTokenizer

    text = tmp_path / "text"
    shutil.copytree(corpus, text)
    shape = tmp_path / "config.json"
    shape.write_text(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=37, max_position_embeddings=64).to_json_string())
    config = PretrainConfig(config=str(shape), tokenizer="wordpiece:200", text=(str(text),), output=str(tmp_path / "a"),
                            method="full", steps=6, seq_len=(16, 32), batch_size=(8, 4), lr=(1e-3, 1e-3),
                            warmup_ratio=(0.1, 0.1), held_out=0.1, checkpoint_every=2, cache_dir=str(tmp_path / "cache"))
    whole = pretrain(config)
    sliced = replace(config, output=str(tmp_path / "b"))
    assert pretrain(sliced, stop_after=3) is None
    own = AutoTokenizer.from_pretrained(tmp_path / "b" / "tokenizer")
    assert own.get_vocab() == AutoTokenizer.from_pretrained(tmp_path / "a" / "model").get_vocab()
    shutil.rmtree(tmp_path / "cache")  # the vocabulary the run started with is no longer cached

    def retrain(*args):
        raise AssertionError("a resumed run must not train a new vocabulary: its ids could differ")

    monkeypatch.setattr(mlm_data, "_train_wordpiece", retrain)
    resumed = pretrain(sliced, resume=True)
    assert resumed["held_out"] == whole["held_out"]
    assert json.loads((tmp_path / "b" / "phase1.json").read_text())["losses"] == \
        json.loads((tmp_path / "a" / "phase1.json").read_text())["losses"]
    assert AutoTokenizer.from_pretrained(tmp_path / "b" / "model").get_vocab() == own.get_vocab()
    with pytest.raises(AssertionError, match="new vocabulary"):  # a new run does resolve wordpiece:N again
        pretrain(replace(config, output=str(tmp_path / "c")))


def test_a_resumed_run_refuses_text_that_changed_since_it_started(corpus, tmp_path):
    import shutil
    from dataclasses import replace

    text = tmp_path / "text"
    shutil.copytree(corpus, text)
    config = PretrainConfig(config="bert-tiny", tokenizer="wordpiece:200", text=(str(text),), output=str(tmp_path / "run"),
                            method="full", steps=6, seq_len=(16, 32), batch_size=(8, 4), lr=(1e-3, 1e-3),
                            warmup_ratio=(0.1, 0.1), held_out=0.1, checkpoint_every=2, cache_dir=str(tmp_path / "cache"))
    assert pretrain(config, stop_after=2) is None
    shutil.rmtree(tmp_path / "cache")  # a fresh checkout: the same text tokenizes again to the same stream
    assert pretrain(config, resume=True, stop_after=2) is None
    (text / "b.txt").write_text((text / "b.txt").read_text().replace(WORDS[0], WORDS[1]))
    with pytest.raises(ValueError, match=r"was started on other data: the examples --text .* gives now differ"):
        pretrain(config, resume=True)
    assert pretrain(replace(config, output=str(tmp_path / "new")), stop_after=1) is None  # a new run takes it


def test_a_fresh_copy_of_the_same_text_reuses_the_cached_vocabulary_and_tokens(corpus, tmp_path, monkeypatch):
    """The caches are keyed by the text's content: a copy elsewhere, with new modification times (the data a
    new checkout brings), is the same corpus; a changed byte is not."""
    import shutil

    cache = tmp_path / "cache"
    files = mlm_data.text_files([str(corpus)])
    tokenizer = mlm_data.load_or_train_tokenizer("wordpiece:200", files, cache)
    tokens = mlm_data.tokenize_to_cache(files, tokenizer, cache)
    copy = tmp_path / "copy"
    shutil.copytree(corpus, copy)
    for f in copy.iterdir():
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    copied = mlm_data.text_files([str(copy)])

    def no_work(*args, **kwargs):
        raise AssertionError("the same text must be served from the cache")

    monkeypatch.setattr(mlm_data, "_train_wordpiece", no_work)
    assert mlm_data.load_or_train_tokenizer("wordpiece:200", copied, cache).get_vocab() == tokenizer.get_vocab()
    monkeypatch.setattr(mlm_data, "atomic_writer", no_work)
    assert mlm_data.tokenize_to_cache(copied, tokenizer, cache) == tokens
    # one changed word, same size and time: another corpus, so another key
    changed = copied[0]
    stat = changed.stat()
    text = changed.read_text()
    changed.write_text(text.replace(text.split()[0], text.split()[0][::-1], 1))
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert changed.stat().st_size == stat.st_size
    with pytest.raises(AssertionError, match="from the cache"):
        mlm_data.tokenize_to_cache(copied, tokenizer, cache)
    # the order of the files is part of the corpus (the held-out text is the end of the last one)
    with pytest.raises(AssertionError, match="from the cache"):
        mlm_data.tokenize_to_cache([copy / "b.txt", copy / "a.txt"], tokenizer, cache)


def test_a_vocabulary_trained_by_two_processes_at_once_keeps_the_first_one(corpus, tmp_path):
    """Two processes that find no cached vocabulary both train one; WordPiece training does not reproduce its ids,
    so the second to finish must keep the first one's folder (and not fail on it): every process that reads the
    cache then tokenizes alike."""
    cache = tmp_path / "cache"
    files = mlm_data.text_files([str(corpus)])
    first = mlm_data.load_or_train_tokenizer("wordpiece:200", files, cache)
    target = next(cache.glob("wordpiece200-*"))
    vocab = (target / "tokenizer.json").read_text()
    mlm_data._train_wordpiece(files, 200, target)  # the slower process finishing its own training
    assert (target / "tokenizer.json").read_text() == vocab
    assert mlm_data.load_or_train_tokenizer("wordpiece:200", files, cache).get_vocab() == first.get_vocab()
    assert [p.name for p in cache.iterdir() if p.name.startswith("wordpiece200")] == [target.name]  # no staging left


def test_the_context_free_floor_equals_the_best_context_free_predictor_by_enumeration(tmp_path):
    # held-out tokens 5 6 [SEP] 7 | 5 6 9 9 (see the test above): u = 2/7, 2/7, 1/7, 2/7 over 5, 6, 7, 9; V = 10
    tokens = np.array([9, 5, 6, 3, 7, 5, 6, 9, 9, 8], dtype=mlm_data.TOKEN_DTYPE)
    tokens.tofile(tmp_path / "tokens.bin")
    held = mlm_data.PackedSequences(tmp_path / "tokens.bin", seq_len=6, cls_id=2, sep_id=3, start=1)
    V, mask, rand = 10, 0.8, 0.1
    keep = 1 - mask - rand
    u = np.zeros(V)
    u[[5, 6, 7, 9]] = np.array([2, 2, 1, 2]) / 7
    # every (true token y, input x) a target can show: [MASK] (id 4), or x with the collator's probabilities
    joint = np.zeros((V, V))  # joint[x, y] = P(input x, true y) at a target
    joint[4] += mask * u
    joint[np.arange(V), np.arange(V)] += keep * u
    joint += rand * u[None, :] / V
    posterior = joint / joint.sum(axis=1, keepdims=True).clip(1e-300)  # the best context-free prediction given x
    brute = -(joint[joint > 0] * np.log(posterior[joint > 0])).sum()
    assert context_free_loss(held, [0, 1, 2, 3, 4], V) == pytest.approx(brute, rel=1e-12)
    assert brute < unigram_entropy(held, [0, 1, 2, 3, 4])  # copying visible targets beats the unigram plateau


def test_a_config_without_vocab_size_takes_the_tokenizers(tmp_path):
    from earlybert.pretrain import build_config

    shape = dict(model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    (tmp_path / "shape.json").write_text(json.dumps(shape))
    assert build_config(str(tmp_path / "shape.json"), 123).vocab_size == 123  # not BERT's 30,522
    (tmp_path / "sized.json").write_text(json.dumps({**shape, "vocab_size": 200}))
    assert build_config(str(tmp_path / "sized.json"), 123).vocab_size == 200  # an explicit size is kept
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text(json.dumps(shape))
    config = build_config(str(tmp_path / "folder"), 123)
    assert (config.vocab_size, config.intermediate_size) == (123, 37)
    (tmp_path / "sized_folder").mkdir()
    (tmp_path / "sized_folder" / "config.json").write_text(json.dumps({**shape, "vocab_size": 200}))
    assert build_config(str(tmp_path / "sized_folder"), 123).vocab_size == 200
