"""Data loading: the GLUE files' quirks, the hub path (with a local stand-in for the hub), tokenizer checks."""

import os
from pathlib import Path

import pytest

from earlybert import data
from earlybert.data import TASKS, Task, check_tokenizer, load_glue, load_hub, subsample

DATA = Path(os.environ.get("EARLYBERT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.mark.realdata
@pytest.mark.parametrize(
    "task,n_train,n_dev",
    [("cola", 8551, 1043), ("sst2", 67349, 872), ("mrpc", 3668, 408), ("stsb", 5749, 1500), ("rte", 2490, 277)],
)
def test_real_glue_files_parse_with_their_quirks(task, n_train, n_dev):
    loaded = load_glue(TASKS[task], DATA / "glue")
    assert len(loaded.train) == n_train and len(loaded.evals["validation"]) == n_dev
    labels = {e.label for e in loaded.train}
    if task == "stsb":
        assert all(0.0 <= x <= 5.0 for x in labels) and len(labels) > 10
    else:
        assert labels == {0, 1}
    assert all(len(e.texts) == len(TASKS[task].text_columns) and all(e.texts) for e in loaded.train[:100])


@pytest.mark.realdata
def test_real_label_conventions():
    rte = load_glue(TASKS["rte"], DATA / "glue" / "RTE")  # the task folder itself works too
    assert sum(e.label == 0 for e in rte.train) == 1249  # entailment -> 0, as in the data's README
    mrpc = load_glue(TASKS["mrpc"], DATA / "glue")
    assert sum(e.label for e in mrpc.train) == 2474  # the BOM did not hide the Quality column
    cola = load_glue(TASKS["cola"], DATA / "glue")
    assert sum(e.label for e in cola.train) == 6023  # header-less file: no row lost
    with pytest.raises(ValueError, match="QNLI/train.tsv does not exist"):
        load_glue(TASKS["qnli"], DATA / "glue")


def test_mnli_layout_has_matched_and_mismatched(tmp_path):
    root = tmp_path / "MNLI"
    root.mkdir()
    header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t" \
             "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
    row = lambda a, b, g: "\t".join(["0", "1", "2", "fiction", "x", "x", "x", "x", a, b, g, g])  # noqa: E731
    (root / "train.tsv").write_text("\n".join([header, row("a", "b", "neutral"), row("c", "d", "contradiction")]) + "\n")
    (root / "dev_matched.tsv").write_text("\n".join([header, row("a", "b", "entailment")]) + "\n")
    (root / "dev_mismatched.tsv").write_text("\n".join([header, row("e", "f", "neutral")]) + "\n")
    loaded = load_glue(TASKS["mnli"], tmp_path)
    assert [e.label for e in loaded.train] == [1, 2]
    assert set(loaded.evals) == {"matched", "mismatched"} and loaded.evals["mismatched"][0].texts == ("e", "f")


def test_hub_datasets_go_through_the_same_checks(monkeypatch):
    import datasets

    fake = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, 1], "idx": [0, 1]}),
        "validation": datasets.Dataset.from_dict({"sentence1": ["e"], "sentence2": ["f"], "label": [1], "idx": [0]}),
    })
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config: calls.append((name, config)) or fake)
    loaded = load_hub(TASKS["mrpc"], "nyu-mll/glue")
    assert calls == [("nyu-mll/glue", "mrpc")]
    assert [(e.texts, e.label) for e in loaded.train] == [(("a", "c"), 0), (("b", "d"), 1)]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(ValueError, match="cannot load rte from hub dataset 'nyu-mll/glue': offline"):
        load_hub(TASKS["rte"], "nyu-mll/glue")


def test_subsample_is_fixed_and_keeps_order():
    examples = [data.Example(("x",), i) for i in range(100)]
    a, b = subsample(examples, 10), subsample(examples, 10)
    assert [e.label for e in a] == [e.label for e in b] == sorted(e.label for e in a)
    assert subsample(examples, None) is examples and subsample(examples, 1000) is examples


def test_tokenizer_checks(tiny_encoder):
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    config = AutoConfig.from_pretrained(tiny_encoder)
    check_tokenizer(tokenizer, config)
    config.pad_token_id = 3
    with pytest.raises(ValueError, match="pads with id 0 but the model expects 3"):
        check_tokenizer(tokenizer, config)


def test_regression_and_custom_tasks_declare_their_shape():
    assert TASKS["stsb"].is_regression and TASKS["stsb"].num_labels == 1
    assert TASKS["mnli"].num_labels == 3
    custom = Task("custom", ("t",), "y", ("a", "b", "c"), ("accuracy",))
    assert not custom.is_regression and custom.num_labels == 3
