"""Padding classification batches to a multiple of N tokens: the shapes it makes, the same function, the run option."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import earlybert as eb
from earlybert.archs import layer_shapes
from earlybert.cli import main
from earlybert.data import padding_collator
from earlybert.finetune import FinetuneConfig, finetune
from earlybert.runs import _differences

SENTENCES = ["good", "the movie was really very good", "a film", "the plot is poor and the acting was awful , sad"]


def features(tokenizer):
    return [dict(tokenizer(s), labels=i % 2) for i, s in enumerate(SENTENCES)]


@pytest.mark.parametrize("multiple", [None, 8, 5])
def test_batches_are_padded_to_their_longest_rounded_up_to_the_multiple(tiny_encoder, multiple):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    rows = features(tokenizer)
    longest = max(len(r["input_ids"]) for r in rows)
    batch = padding_collator(tokenizer, multiple_of=multiple)(rows)
    expected = longest if multiple is None else -(-longest // multiple) * multiple
    assert batch["input_ids"].shape == (len(rows), expected) and batch["attention_mask"].shape == (len(rows), expected)
    assert batch["attention_mask"].sum().item() == sum(len(r["input_ids"]) for r in rows)  # the padding is masked
    # a fixed length (SQuAD's concatenated windows) wins over the rounding
    assert padding_collator(tokenizer, pad_to=24, multiple_of=multiple)(rows)["input_ids"].shape[1] == 24


def test_a_pruned_model_computes_the_same_logits_on_either_padding(tiny_encoder):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder, num_labels=2).eval()
    eb.prune(model, eb.random_scores_ticket(*layer_shapes(model), seed=1))  # uneven FFN widths per layer
    rows = features(tokenizer)
    with torch.no_grad():
        logits = [model(**{k: v for k, v in padding_collator(tokenizer, multiple_of=m)(rows).items() if k != "labels"})
                  .logits for m in (None, 16)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-5)


def test_a_run_pads_every_stage_and_records_the_setting(tiny_encoder, glue_dir, tmp_path, monkeypatch):
    from earlybert import train as train_module

    lengths = []
    original = train_module.make_loader

    def recording(dataset, collate_fn, *args, **kwargs):
        def collate(rows):
            batch = collate_fn(rows)
            lengths.append(batch["input_ids"].shape[1])
            return batch
        return original(dataset, collate, *args, **kwargs)

    monkeypatch.setattr(train_module, "make_loader", recording)
    config = FinetuneConfig(model=str(tiny_encoder), task="sst2", data=str(glue_dir), output=str(tmp_path / "run"),
                            batch_size=8, epochs=1, earlybert_epochs=1, search_epoch_fraction=0.5, checkpoint_every=0,
                            max_length=126, pad_to_multiple_of=7)  # 128 would round up past 128 positions
    results = finetune(config)
    assert lengths and all(n % 7 == 0 for n in lengths), sorted(set(lengths))  # search, training, evaluation
    assert results["stages"]["search"]["steps"] > 0 and results["stages"]["train"]["steps"] > 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pad_to_multiple_of"] == 7


def test_a_run_started_before_the_option_existed_resumes_and_a_changed_padding_is_refused():
    saved = {"model": "m", "max_length": 128}  # config.json of a run that predates the option
    assert _differences(saved, {**saved, "pad_to_multiple_of": None}) == []
    assert _differences(saved, {**saved, "pad_to_multiple_of": 8}) == ["pad_to_multiple_of '(unset)' in the run, 8 now"]
    assert _differences({**saved, "pad_to_multiple_of": 8}, {**saved, "pad_to_multiple_of": None}) == [
        "pad_to_multiple_of 8 in the run, None now"]


def test_bad_multiples_fail_in_one_line_naming_the_flag(tiny_encoder, glue_dir, tmp_path, capsys):
    base = ["finetune", "--model", str(tiny_encoder), "--task", "sst2", "--data", str(glue_dir), "--output",
            str(tmp_path / "out")]
    for extra, fragment in ((["--pad-to-multiple-of", "0"], "--pad-to-multiple-of) must be >= 1, got 0"),
                            (["--max-length", "125", "--pad-to-multiple-of", "100"],
                             "--max-length 125 padded to a multiple of 100 (--pad-to-multiple-of) exceeds the "
                             "model's 128 position embeddings")):
        assert main([*base, *extra]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("earlybert: error:") and fragment in line, line
    assert not (tmp_path / "out").exists()
