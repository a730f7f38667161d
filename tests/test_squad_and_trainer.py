"""SQuAD through the pipeline, and the search inside a transformers.Trainer."""

import json

import pytest
import torch
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer

import earlybert as eb
from earlybert.callback import EarlyBirdCallback
from earlybert.finetune import FinetuneConfig, finetune


def write_squad(path, n_articles: int, seed: int):
    import random

    rng = random.Random(seed)
    data = []
    for a in range(n_articles):
        words = [rng.choice(["the", "movie", "film", "plot", "acting", "is", "was"]) for _ in range(30)]
        answer_at = rng.randrange(5, 25)
        words[answer_at] = "good"
        context = " ".join(words)
        start = len(" ".join(words[:answer_at])) + 1
        qas = [{"id": f"{a}-{q}", "question": "what is good", "answers": [{"text": "good", "answer_start": start}]}
               for q in range(3)]
        data.append({"title": f"t{a}", "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


@pytest.mark.parametrize("method", ["earlybert", "full"])
def test_squad_runs_end_to_end(method, tiny_encoder, tmp_path):
    squad = tmp_path / "squad"
    squad.mkdir()
    write_squad(squad / "train-v1.1.json", 8, 0)
    write_squad(squad / "dev-v1.1.json", 3, 1)
    config = FinetuneConfig(model=str(tiny_encoder), task="squad", data=str(squad), output=str(tmp_path / "run"),
                            method=method, batch_size=4, max_length=24, doc_stride=8, epochs=1, search_epoch_fraction=0.5)
    assert (config.max_length, config.earlybert_epochs, config.lr_scale, config.lr) == (24, 1, 1.0, 3e-5)
    results = finetune(config)
    assert set(results["metrics"]) == {"exact_match", "f1"} and results["headline_metric"] == "f1"
    assert 0 <= results["score"] <= 100
    model = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "run" / "model")
    assert model.config.model_type == ("earlybert_bert" if method == "earlybert" else "bert")
    assert results["stages"]["train"]["steps"] > 8  # 24 questions in windows of 24 tokens: several per question


def test_trainer_callback_runs_the_search_and_stops_within_its_budget(tiny_encoder, tmp_path):
    from transformers import Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder, num_labels=2)
    texts = ["the movie is good", "the film was bad", "the plot is great", "the acting was awful"] * 16
    labels = [1, 0, 1, 0] * 16
    enc = tokenizer(texts, padding=True)
    dataset = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": labels[i]}
               for i in range(len(texts))]
    gates = eb.add_gates(model)
    callback = EarlyBirdCallback(gates, search_config=eb.SearchConfig(max_steps=40, patience=3, epsilon=0.1),
                                 gate_config=eb.GateConfig(head_l1=0.5, ffn_l1=0.5))
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=8, num_train_epochs=10,
                             learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no",
                             use_cpu=True, disable_tqdm=True)
    before = [g.detach().clone() for g in gates.parameters()]
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])
    trainer.train()
    tracker = callback.tracker
    assert tracker.stop_reason in ("early-bird", "budget")
    assert trainer.state.global_step == tracker.steps[-1] <= 40
    # the default budget: 0.2 epoch, an epoch being the dataloader's 30 batches over 2 accumulation steps = 15
    default = EarlyBirdCallback(gates)
    args2 = TrainingArguments(output_dir=str(tmp_path / "t2"), num_train_epochs=0.5, gradient_accumulation_steps=2,
                              report_to=[], use_cpu=True)
    default.on_train_begin(args2, None, None, train_dataloader=list(range(30)))
    assert default.tracker.search_config.budget == 3
    # the L1 gradient pulls every gate towards zero, so the total magnitude falls
    assert sum(g.abs().sum() for g in gates.parameters()) < sum(b.abs().sum() for b in before)
    ticket = tracker.ticket
    eb.remove_gates(model)
    eb.prune(model, ticket)
    assert eb.layer_shapes(model) == (ticket.kept_heads, ticket.kept_ffn)
