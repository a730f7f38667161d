"""The whole method for transformers.Trainer users: search -> draw -> slim Trainer -> save -> AutoModel reload."""

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

import earlybert as eb
from earlybert.archs import layer_shapes
from earlybert.callback import EarlyBirdCallback, slim_training_args


def test_search_draw_slim_trainer_save_reload(tiny_encoder, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    texts = ["the movie is good", "the film was bad", "the plot is great", "the acting was awful"] * 16
    labels = [1, 0, 1, 0] * 16
    enc = tokenizer(texts, padding=True)
    dataset = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": labels[i]}
               for i in range(len(texts))]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder, num_labels=2)
    initial = {k: v.clone() for k, v in model.state_dict().items()}  # pretrained encoder + this head init

    # 1. search: the callback stops the Trainer at the early bird (or at the budget)
    gates = eb.add_gates(model)
    callback = EarlyBirdCallback(gates, search_config=eb.SearchConfig(max_steps=12, patience=3, epsilon=0.1),
                                 gate_config=eb.GateConfig(head_l1=0.5, ffn_l1=0.5))
    args = TrainingArguments(output_dir=str(tmp_path / "search"), per_device_train_batch_size=8, num_train_epochs=5,
                             learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no",
                             use_cpu=True, disable_tqdm=True, seed=0)
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback]).train()
    assert callback.tracker.stop_reason in ("early-bird", "budget")
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in initial.items())  # the search moved weights

    # 2. draw: one call gives the ticket and the slim model, restarted from the weights the search started from
    ticket, slim = callback.slim_model()
    assert slim is model and not hasattr(slim, "earlybert_gates")
    assert ticket == callback.tracker.ticket and layer_shapes(slim) == (ticket.kept_heads, ticket.kept_ffn)
    assert ticket.kept_heads == [3, 3]  # a third of the 4 heads per layer, rounded
    state = slim.state_dict()
    assert torch.equal(state["classifier.weight"], initial["classifier.weight"])  # same head init
    assert torch.equal(state["bert.embeddings.word_embeddings.weight"], initial["bert.embeddings.word_embeddings.weight"])
    keep = torch.tensor(ticket.ffn[0])
    assert torch.equal(state["bert.encoder.layer.0.intermediate.dense.weight"],
                       initial["bert.encoder.layer.0.intermediate.dense.weight"][keep])

    # 3. slim training: a new Trainer (its own optimizer for the slim parameters) at twice the learning rate
    slim_args = slim_training_args(args, output_dir=str(tmp_path / "slim"), num_train_epochs=1)
    assert slim_args.learning_rate == 2e-3 and slim_args.num_train_epochs == 1
    trainer = Trainer(model=slim, args=slim_args, train_dataset=dataset)
    trainer.train()
    assert trainer.state.global_step == 8  # 64 examples / 8, one epoch: not stopped by any search

    # 4. save and reload with the Auto classes
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final").eval()
    assert type(reloaded).__name__ == "SlimBertForSequenceClassification"
    assert layer_shapes(reloaded) == (ticket.kept_heads, ticket.kept_ffn)
    batch = {k: torch.tensor(v[:4]) for k, v in enc.items()}
    slim.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, slim(**batch).logits, atol=1e-6)


def test_slim_model_before_the_search_says_what_to_do(tiny_encoder):
    import pytest

    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder, num_labels=2)
    callback = EarlyBirdCallback(eb.add_gates(model))
    with pytest.raises(ValueError, match="the search has not run: call trainer.train"):
        callback.slim_model()
    with pytest.raises(ValueError, match="lr_scale must be > 0"):
        slim_training_args(TrainingArguments(output_dir="unused", report_to=[]), lr_scale=0)


def test_trainer_search_gives_the_gates_their_own_learning_rate(tiny_encoder, tmp_path, caplog):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    enc = tokenizer(["the movie is good", "the film was bad"] * 8, padding=True)
    dataset = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": i % 2}
               for i in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=3, learning_rate=1e-5,
                             report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True)
    moved = {}
    for own in (True, False):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder, num_labels=2)
        gates = eb.add_gates(model)
        callback = EarlyBirdCallback(gates, search_config=eb.SearchConfig(max_steps=3),
                                     gate_config=eb.GateConfig(lr=0.05))
        optimizers = (eb.search_optimizer(model, args.learning_rate, config=callback.gate_config), None) if own else (None, None)
        caplog.clear()
        Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback], optimizers=optimizers).train()
        moved[own] = max((g.detach() - 1).abs().max().item() for g in gates.parameters())
        warned = any("search_optimizer" in r.getMessage() for r in caplog.records)
        assert warned is not own  # Trainer's own optimizer: the callback says how to give the gates their rate
    assert moved[True] > 0.05 and moved[False] < 1e-4  # Adam: about one learning rate per step
